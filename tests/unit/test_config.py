import json
from pathlib import Path

import pytest

from es_backfill.config import ConfigError, from_params, load_defaults
from tests.integration.support import utc

DEFAULTS = load_defaults(Path(__file__).resolve().parents[2] / "include" / "backfill_defaults.json")
GOOD = {"start": "2024-03-01", "end": "2024-03-08", "window": "1d", "s3_bucket": "my-bucket", "s3_prefix": "exports/"}


def test_defaults_file_matches_the_generator():
    from include.datagen import IndexNames

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
    assert fingerprint(GOOD | {"source": {"part_max_records": 10}}) != base
    assert fingerprint(GOOD | {"source": {"messages": DEFAULTS["messages"] | {"source_fields": ["body"]}}}) != base


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
        "output_format 'xml'",
        "page_size 50 is out of bounds; use 100..10000",
        "s3_prefix '../up'",
    ]
    for problem in expected:
        assert problem in text
    assert len(err.value.problems) == 6


def test_source_overrides_replace_defaults_and_are_checked():
    override = {"related": [{"name": "history", "index": "h2", "join_field": "mid", "cardinality": "several"}]}
    with pytest.raises(ConfigError, match="cardinality must be 'one' or 'many'"):
        from_params(GOOD | {"source": override}, DEFAULTS)
    override["related"][0]["cardinality"] = "many"
    config = from_params(GOOD | {"source": override}, DEFAULTS)
    assert [r.index for r in config.source.related] == ["h2"]
    assert config.source.messages_index == "messages"


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
