import json
from pathlib import Path

import pytest

from es_backfill.config import ConfigError, from_params, load_defaults
from tests.integration.support import utc
from tests.unit.echo_server import running_echo_server

DEFAULTS = load_defaults(Path(__file__).resolve().parents[2] / "include" / "backfill_defaults.json")
GOOD = {"start": "2024-03-01", "end": "2024-03-08", "window": "1d", "s3_bucket": "my-bucket", "s3_prefix": "exports/"}


def test_defaults_file_matches_the_generator():
    from include.dev.datagen import IndexNames

    config = from_params(GOOD, DEFAULTS)
    names = IndexNames()
    assert config.source.messages_index == names.messages
    assert [(r.name, r.index) for r in config.source.related] == [
        ("history", names.history),
        ("status", names.status),
        ("audit", names.audit),
    ]


def test_a_good_conf_gives_a_frozen_config_with_a_derived_name():
    config = from_params(GOOD, DEFAULTS)
    assert (config.start, config.end) == (utc(2024, 3, 1), utc(2024, 3, 8))
    assert config.backfill_name == "backfill-20240301T000000Z-20240308T000000Z-1d"
    assert config.root_prefix == "exports/backfill-20240301T000000Z-20240308T000000Z-1d"
    assert config.output_format == "jsonl.gz" and config.page_size == 1000
    with pytest.raises(AttributeError):
        config.page_size = 5  # type: ignore[misc]


def test_fingerprint_changes_with_what_shapes_the_output_and_where_it_came_from_only():
    config = from_params(GOOD, DEFAULTS).with_cluster("prod-uuid")
    base = config.fingerprint()

    def fingerprint(conf, cluster="prod-uuid"):
        return from_params(conf, DEFAULTS).with_cluster(cluster).fingerprint()

    not_shaping = {"max_retries": 1, "request_timeout_s": 5, "pit_keep_alive": "30s", "related_page_size": 50,
                   "es_conn_id": "other_conn", "aws_conn_id": "other_aws"}  # fmt: skip
    assert fingerprint(GOOD | {"page_size": 500, "dry_run": True, "force": True}) == base
    assert fingerprint(GOOD | {"source": not_shaping}) == base
    assert fingerprint(GOOD, cluster="staging-uuid") != base
    assert fingerprint(GOOD | {"balance_windows": True}) != base
    assert fingerprint(GOOD | {"query": {"term": {"channel": "sms"}}}) != base
    assert fingerprint(GOOD | {"output_format": "jsonl"}) != base
    assert fingerprint(GOOD | {"json_fields": []}) == base
    assert fingerprint(GOOD | {"json_fields": ["message.tags"]}) != base
    assert fingerprint(GOOD | {"source": {"part_max_records": 10}}) != base
    assert fingerprint(GOOD | {"source": {"messages": DEFAULTS["messages"] | {"source_fields": ["body"]}}}) != base


def test_json_fields_are_paths_of_table_fields_a_name_with_dots_in_backquotes():
    config = from_params(GOOD | {"json_fields": ["message.tags", "message.`a.b`.c", "history.`x``y`", "message.tags"]},
                         DEFAULTS)  # fmt: skip
    assert config.json_fields == (("message", "tags"), ("message", "a.b", "c"), ("history", "x`y"))
    assert config.shaping_settings()["json_fields"] == ["history.`x``y`", "message.`a.b`.c", "message.tags"]
    reordered = from_params(GOOD | {"json_fields": ["history.`x``y`", "message.`a.b`.c", "message.tags"]}, DEFAULTS)
    assert reordered.fingerprint() == config.fingerprint()  # a set of fields: the order does not re-plan


def test_the_fingerprint_covers_the_transforms_code_not_only_its_name(tmp_path, monkeypatch):
    module = tmp_path / "fingerprinted_transform.py"
    module.write_text("def shape(record):\n    return record\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    conf = GOOD | {"source": {"transform": "fingerprinted_transform.shape"}}
    before = from_params(conf, DEFAULTS).fingerprint()
    module.write_text("def shape(record):\n    return {**record, 'extra': 1}\n")
    assert from_params(conf, DEFAULTS).fingerprint() != before


def test_a_one_to_one_related_index_needs_sort_fields_to_tell_which_document_is_current():
    unsorted = {"name": "status", "index": "status", "join_field": "message_id", "cardinality": "one"}
    with pytest.raises(ConfigError, match=r"source.related\[0\] \(status\) has cardinality 'one' but no sort"):
        from_params(GOOD | {"source": {"related": [unsorted]}}, DEFAULTS)
    config = from_params(GOOD | {"source": {"related": [unsorted | {"sort": ["updated_at"]}]}}, DEFAULTS)
    assert config.source.related[0].sort == ("updated_at",)


def test_every_problem_is_reported_at_once_with_its_fix():
    bad = {"start": "yesterday", "end": "2024-03-01", "window": "1w", "s3_bucket": "Bad_Bucket",
           "output_format": "xml", "page_size": 50, "s3_prefix": "../up"}  # fmt: skip
    with pytest.raises(ConfigError) as err:
        from_params(bad, DEFAULTS)
    text = str(err.value)
    expected = [
        "start: 'yesterday' is not a date",
        "window '1w'",
        "s3_bucket 'Bad_Bucket'",
        'output_format must be one of "jsonl.gz", "jsonl", "json", "parquet", not "xml"',
        "page_size must be within 100..10000, not 50",
        "s3_prefix '../up'",
    ]
    for problem in expected:
        assert problem in text
    assert len(err.value.problems) == 6


def test_source_overrides_replace_defaults_and_are_checked():
    override = {"related": [{"name": "history", "index": "h2", "join_field": "mid", "cardinality": "several"}]}
    with pytest.raises(ConfigError, match='cardinality must be one of "one", "many", not "several"'):
        from_params(GOOD | {"source": override}, DEFAULTS)
    override["related"][0]["cardinality"] = "many"
    config = from_params(GOOD | {"source": override}, DEFAULTS)
    assert [r.index for r in config.source.related] == ["h2"]
    assert config.source.messages_index == "messages"


def test_a_partial_messages_override_merges_with_the_defaults_files():
    config = from_params(GOOD | {"source": {"messages": {"index": "messages-2024"}}}, DEFAULTS)
    assert config.source.messages_index == "messages-2024"
    assert (config.source.id_field, config.source.timestamp_field) == ("message_id", "@timestamp")
    with pytest.raises(ConfigError) as err:
        from_params(GOOD | {"source": {"messages": {"index": 5}}}, DEFAULTS)
    assert err.value.problems == ["source.messages.index must be a string, not 5"]  # once


def test_emptied_form_fields_are_not_set():
    config = from_params(GOOD | {"backfill_name": "", "query": ""}, DEFAULTS)
    assert config.query is None
    assert config.backfill_name == "backfill-20240301T000000Z-20240308T000000Z-1d"


def test_query_must_be_an_object():
    with pytest.raises(ConfigError, match="query must be an Elasticsearch query DSL object"):
        from_params(GOOD | {"query": "channel:email"}, DEFAULTS)


def test_unreadable_defaults_file_is_a_config_error(tmp_path):
    bad = tmp_path / "defaults.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read the defaults file"):
        load_defaults(bad)
    assert json.loads(json.dumps(DEFAULTS)) == DEFAULTS


MESSAGES = DEFAULTS["messages"]
RELATED = DEFAULTS["related"]
# Each malformed conf (merged over GOOD) and what its error must say. Covers the trigger form's fields, the
# command line's strict booleans, and source overrides at every depth.
BAD_CONFS = [
    ({"start": 20240301}, "start must be a string, not 20240301"),
    ({"start": None}, "start must be a string, not null"),
    ({"end": ["2024-03-08"]}, 'end must be a string, not ["2024-03-08"]'),
    ({"start": "2024-03-01", "end": "2024-03-01"}, "must be after start"),
    ({"window": 1}, "window must be a string, not 1"),
    ({"window": "0d"}, "window '0d' is not a positive duration"),
    ({"query": "channel:email"}, "query must be an Elasticsearch query DSL object"),
    ({"query": {}}, "query must be an Elasticsearch query DSL object"),
    ({"query": ["term"]}, "query must be an object or null or a string, not"),
    ({"backfill_name": 7}, "backfill_name must be a string or null, not 7"),
    ({"backfill_name": "../x"}, "backfill_name '../x' may only hold"),
    ({"s3_bucket": None}, "s3_bucket must be a string, not null"),
    ({"s3_bucket": "192.168.5.4"}, "looks like an IP address"),
    ({"s3_bucket": "xn--bucket"}, "starts with 'xn--', a prefix S3 reserves"),
    ({"s3_bucket": "my-bucket-s3alias"}, "ends with '-s3alias', a suffix S3 reserves"),
    ({"s3_bucket": "my..bucket"}, "has '..', '.-' or '-.'"),
    ({"s3_bucket": "ab"}, "s3_bucket 'ab' is not a valid bucket name"),
    ({"s3_prefix": 5}, "s3_prefix must be a string, not 5"),
    ({"output_format": "avro"}, 'output_format must be one of "jsonl.gz", "jsonl", "json", "parquet", not "avro"'),
    ({"json_fields": "message.tags"}, 'json_fields must be a list, not "message.tags"'),
    ({"json_fields": ["message.`a.b"]}, "json_fields[0]: 'message.`a.b' has a backquote that is not closed"),
    ({"json_fields": ["message..tags"]}, "json_fields[0]: 'message..tags' has an empty name"),
    ({"json_fields": ["window"]}, "json_fields[0]: window is the record's window, a string; name another field"),
    ({"json_fields": ["DT"]}, "json_fields[0]: dt is the table's partition column, which no record field can be"),
    ({"json_fields": ["Window"]}, "json_fields[0]: Window is the record's Window, a string; name another field"),
    ({"json_fields": ["message.tags", "mesage.tags"]}, "json_fields[1]: 'mesage.tags' is a field of no column: the "
     "record's columns are message, history, status, audit"),
    ({"json_fields": ["Status"]}, "json_fields[0]: 'Status' differs only in case from the column 'status'"),
    ({"json_fields": ["Message.raw"]}, "json_fields[0]: 'Message' differs only in case from the column 'message'"),
    ({"page_size": "1000"}, 'page_size must be an integer, not "1000"'),
    ({"page_size": True}, "page_size must be an integer, not true"),
    ({"page_size": 10_001}, "page_size must be within 100..10000, not 10001"),
    ({"dry_run": "false"}, 'dry_run must be true or false, not "false" (JSON true or false, not a string)'),
    ({"force": "false"}, 'force must be true or false, not "false"'),
    ({"force": 1}, "force must be true or false, not 1"),
    ({"balance_windows": "yes"}, 'balance_windows must be true or false, not "yes"'),
    ({"dryrun": True}, "unknown key 'dryrun' in the conf; the known keys are start, end, window"),
    ({"sse": "aes256"}, 'sse must be one of null, "AES256", "aws:kms", not "aes256"'),
    ({"kms_key_id": "alias/backfill"}, 'kms_key_id needs sse "aws:kms"'),
    ({"sse": "AES256", "kms_key_id": "alias/backfill"}, 'kms_key_id needs sse "aws:kms"'),
    ({"pool_slots": 0}, "pool_slots must be within 1..1024, not 0"),
    ({"target_duration": "soon"}, "target_duration 'soon' is not a positive duration"),
    ({"source": "x"}, 'source must be an object, not "x"'),
    ({"source": {"related": "x"}}, 'source.related must be a list, not "x"'),
    ({"source": {"related": [1]}}, "source.related[0] must be an object, not 1"),
    ({"source": {"related": [{"name": "history"}]}}, "source.related[0].index is required"),
    ({"source": {"related": [RELATED[0] | {"index": 5}]}}, "source.related[0].index must be a string, not 5"),
    ({"source": {"related": [RELATED[0] | {"sort": "@timestamp"}]}}, "source.related[0].sort must be a list"),
    ({"source": {"related": [RELATED[0] | {"sort": [1]}]}}, "source.related[0].sort[0] must be a string, not 1"),
    ({"source": {"related": [RELATED[0] | {"joinfield": "x"}]}}, "unknown key 'joinfield' in source.related[0]"),
    ({"source": {"related": [RELATED[0], RELATED[0]]}}, "source.related[1].name 'history' is used twice"),
    ({"source": {"related": [RELATED[0] | {"name": "dt"}]}}, "related[0].name 'dt' is used twice or is reserved"),
    ({"source": {"related": [RELATED[0] | {"name": "Message"}]}}, "source.related[0].name 'Message' is a key of every"),
    ({"source": {"related": [RELATED[0] | {"name": "status-history"}]}}, "use lower-case letters, digits and _"),
    ({"source": {"related": [RELATED[0], RELATED[2] | {"index": "history"}]}},
     "source.related[1].index 'history' is already source.related[0].index: each index may be named once"),
    ({"source": {"related": [RELATED[0] | {"index": "messages"}]}},
     "source.related[0].index 'messages' is already source.messages.index"),
    ({"source": {"related": [RELATED[0] | {"name": ""}]}}, "source.related[0].name must not be empty"),
    ({"source": {"messages": "x"}}, 'source.messages must be an object, not "x"'),
    ({"source": {"messages": {"index": "m", "id_field": ""}}}, "source.messages.id_field must not be empty"),
    ({"source": {"messages": MESSAGES | {"source_fields": "body"}}}, "source.messages.source_fields must be a list"),
    ({"source": {"messages": MESSAGES | {"idfield": "x"}}}, "unknown key 'idfield' in source.messages"),
    ({"source": {"max_in_flight": 0}}, "source.max_in_flight must be within 1..16, not 0"),
    ({"source": {"max_in_flight": "3"}}, 'source.max_in_flight must be an integer, not "3"'),
    ({"source": {"max_messages_per_second": 0}},
     "source.max_messages_per_second must be greater than 0 and at most 1000000000, not 0"),
    ({"source": {"request_timeout_s": 10**400}}, "source.request_timeout_s must be greater than 0 and at most 3600"),
    ({"start": "0001-01-01T00:00:00+01:00"}, "'0001-01-01T00:00:00+01:00' is not a date or date-time"),
    ({"window": "99999999999d"}, "window '99999999999d' is not a positive duration"),
    ({"target_duration": "99999999999d"}, "target_duration '99999999999d' is not a positive duration"),
    ({"backfill_name": "abc\n"}, "backfill_name 'abc\\n' may only hold"),
    ({"source": {"max_retries": -1}}, "source.max_retries must be at least 0, not -1"),
    ({"source": {"pit_keep_alive": "2 minutes"}}, "source.pit_keep_alive must look like 30s, 2m or 1h"),
    ({"source": {"part_max_bytes": 10}}, "source.part_max_bytes must be at least 1024, not 10"),
    ({"source": {"es_conn": "x"}}, "unknown key 'es_conn' in source; the known keys are es_conn_id, aws_conn_id"),
    # A pattern redacts nothing: each rule names one field (or the object holding them).
    ({"source": {"redact": [{"field": "message.sender.*", "action": "drop"}]}},
     "source.redact[0].field 'message.sender.*' is a pattern, but a rule names one field"),
    ({"source": {"redact": [{"field": "message.send*", "action": "mask"}]}}, "'message.send*' is a pattern"),
    ({"source": {"redact": [{"field": "message.sender.", "action": "drop"}]}},
     "source.redact[0].field 'message.sender.' must be a section and a field path"),
    ({"source": {"redact": [{"field": "message.a", "action": "drop"}, {"field": "message.a.b", "action": "mask"}]}},
     "source.redact[1].field 'message.a.b' lies in or holds 'message.a', which has a rule already"),
    # The id and timestamp address the record and its window.
    ({"source": {"redact": [{"field": "message.message_id", "action": "hash"}], "redaction_key_conn_id": "k"}},
     "would redact the messages' id field 'message_id'"),
    ({"source": {"redact": [{"field": "message.@timestamp", "action": "drop"}]}},
     "would redact the messages' timestamp field '@timestamp'"),
]  # fmt: skip


@pytest.mark.parametrize(("overrides", "message"), BAD_CONFS, ids=[str(i) for i in range(len(BAD_CONFS))])
def test_every_malformed_conf_is_a_config_error_naming_the_field_and_the_cli_reads_and_writes_nothing(
    overrides, message, capsys
):
    from es_backfill.cli import main as cli

    with pytest.raises(ConfigError) as err:
        from_params(GOOD | overrides, DEFAULTS)
    assert message in str(err.value)
    # The command line refuses it too, before any client exists: the echo server (standing in for the
    # cluster and for S3) receives nothing.
    with running_echo_server() as echo:
        args = ["plan", "--conf", json.dumps(GOOD | overrides), "--es-url", echo.url, "--s3-endpoint-url", echo.url]
        assert cli(args) == 2
        assert echo.received == []
    assert message in capsys.readouterr().err
