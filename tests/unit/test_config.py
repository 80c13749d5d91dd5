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


def test_fingerprint_changes_with_what_shapes_the_output_only():
    base = from_params(GOOD, DEFAULTS).fingerprint()
    assert from_params(GOOD | {"page_size": 500}, DEFAULTS).fingerprint() == base
    assert from_params(GOOD | {"query": {"term": {"channel": "sms"}}}, DEFAULTS).fingerprint() != base
    assert from_params(GOOD | {"output_format": "jsonl"}, DEFAULTS).fingerprint() != base


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


def test_query_must_be_an_object():
    with pytest.raises(ConfigError, match="query must be an Elasticsearch query DSL object"):
        from_params(GOOD | {"query": "channel:email"}, DEFAULTS)


def test_unreadable_defaults_file_is_a_config_error(tmp_path):
    bad = tmp_path / "defaults.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read the defaults file"):
        load_defaults(bad)
    assert json.loads(json.dumps(DEFAULTS)) == DEFAULTS
