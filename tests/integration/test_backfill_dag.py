"""The backfill DAG run for real (``dag.test`` with a conf) against Elasticsearch and S3."""

from __future__ import annotations

import gzip
import logging
import re
from collections import Counter
from datetime import datetime

import orjson
import pytest

from tests.integration.support import decode_records, expected_records, read_objects, source_override, utc


def _ts(message) -> datetime:
    return datetime.fromisoformat(message["@timestamp"])


def _message(mid: str, ts: str, body: str = "boundary") -> tuple[str, str, dict]:
    return "messages", mid, {"message_id": mid, "@timestamp": ts, "channel": "email", "body": body}


def _conf(names, bucket, **overrides):
    return {
        "start": "2024-03-01",
        "end": "2024-03-04",
        "window": "1d",
        "s3_bucket": bucket,
        "s3_prefix": "out",
        "page_size": 100,
        "source": source_override(names),
        **overrides,
    }


def _assert_records_match(records, expected):
    ids = Counter(r["message_id"] for r in records)
    assert ids and max(ids.values()) == 1, "a message was written twice"
    assert set(ids) == set(expected)
    for record in records:
        want = expected[record["message_id"]]
        assert record["message"] == want["message"]
        assert record["history"] == want["history"]
        assert record["status"] == want["status"]
        assert record["audit"] == want["audit"]


def test_several_windows_hold_every_message_in_range_exactly_once_and_log_no_error(
    seeded, run_backfill, s3_bucket, capfd, caplog
):
    boundary = [_message("on-boundary", "2024-03-02T00:00:00.000Z"), _message("at-end", "2024-03-04T00:00:00.000Z")]
    names, docs = seeded({"messages": 400, "start": utc(2024, 3, 1), "end": utc(2024, 3, 5), "seed": 11}, boundary)
    capfd.readouterr()
    run = run_backfill(_conf(names, s3_bucket, start="2024-03-01T12:00:00Z", window="12h"))
    assert run.state == "success"
    # A successful run logs no error-level line (summarise once read past the last mapped result: a 404 logged
    # as "[error] XCom not found"), which a newcomer reads as a failure.
    out, err = capfd.readouterr()
    assert "end task task_id=summarise" in caplog.text  # the capture did see the run's log
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors + [line for line in (out + err).splitlines() if "[error" in line] == []
    objects = read_objects(s3_bucket, "out/")
    records = decode_records(objects)
    expected = {
        mid: rec
        for mid, rec in expected_records(docs).items()
        if utc(2024, 3, 1, 12) <= _ts(rec["message"]) < utc(2024, 3, 4)
    }
    assert "on-boundary" in expected and "at-end" not in expected
    _assert_records_match(records, expected)
    manifests = sorted(k for k in objects if k.endswith("/_manifest.json"))
    assert len(manifests) == 5  # 12:00 on the 1st to 00:00 on the 4th in 12h windows
    # The boundary message is in the window that starts at the boundary, and only there.
    boundary_window = [r["window"] for r in records if r["message_id"] == "on-boundary"]
    assert boundary_window == ["20240302T000000Z_20240302T120000Z"]
    run_manifest = orjson.loads(objects["out/backfill-20240301T120000Z-20240304T000000Z-12h/_run_manifest.json"])
    assert run_manifest["messages"] == run_manifest["es_count"] == len(expected)


def test_window_larger_than_a_page_and_a_related_batch_is_complete(seeded, run_backfill, s3_bucket):
    names, docs = seeded({"messages": 700, "start": utc(2024, 3, 1), "end": utc(2024, 3, 2), "max_history": 8})
    source = source_override(names) | {"related_page_size": 50}
    run = run_backfill(_conf(names, s3_bucket, end="2024-03-02", page_size=100, source=source))
    assert run.state == "success"
    objects = read_objects(s3_bucket, "out/")
    _assert_records_match(decode_records(objects), expected_records(docs))
    (manifest_key,) = [k for k in objects if k.endswith("/_manifest.json")]
    manifest = orjson.loads(objects[manifest_key])
    assert manifest["messages"] == 700 > 100
    assert manifest["related"]["history"] > 50 * 7  # many batches of 50 per page of 100 messages


def test_empty_windows_missing_related_unicode_and_large_documents_come_out_right(seeded, run_backfill, s3_bucket):
    large = "🚀 Zürich 日本語 " * 70_000  # ~1.3 MB of text
    extra = [_message("large-1", "2024-03-03T10:00:00.000Z", large), _message("naked", "2024-03-03T11:00:00.000Z")]
    names, docs = seeded(
        {"messages": 120, "start": utc(2024, 3, 1), "end": utc(2024, 3, 2), "no_related_ratio": 0.5}, extra
    )
    run = run_backfill(_conf(names, s3_bucket, end="2024-03-05", output_format="jsonl"))
    assert run.state == "success"
    objects = read_objects(s3_bucket, "out/")
    records = decode_records(objects)
    _assert_records_match(records, expected_records(docs))
    by_id = {r["message_id"]: r for r in records}
    assert by_id["large-1"]["message"]["body"] == large
    assert by_id["naked"]["history"] == [] and by_id["naked"]["status"] is None and by_id["naked"]["audit"] == []
    assert any(
        not r["history"] and r["status"] is None and not r["audit"] for r in records if r["message_id"] != "naked"
    )
    manifests = {k: orjson.loads(v) for k, v in objects.items() if k.endswith("/_manifest.json")}
    counts = sorted(m["messages"] for m in manifests.values())
    assert counts == [0, 0, 2, 120]  # the 2nd and 4th are empty windows, complete with a manifest


def test_json_output_writes_one_object_per_message_under_safe_keys(seeded, run_backfill, s3_bucket):
    odd_ids = ["a/b/c", "../../etc/passwd", "with space", "ünïcödé-日本", "..", "plain-id_1"]
    extra = [_message(mid, f"2024-03-01T0{i}:00:00.000Z") for i, mid in enumerate(odd_ids)]
    names, docs = seeded({"messages": 20, "start": utc(2024, 3, 1), "end": utc(2024, 3, 2)}, extra)
    run = run_backfill(_conf(names, s3_bucket, end="2024-03-02", output_format="json"))
    assert run.state == "success"
    objects = read_objects(s3_bucket, "out/")
    data_keys = [k for k in objects if "/messages/" in k]
    assert len(data_keys) == 26
    for key in data_keys:
        name = key.rsplit("/messages/", 1)[1]
        assert ".." not in key and " " not in key and key.isascii()
        assert name.endswith(".json") and "/" not in name
    assert any(k.endswith("/messages/plain-id_1.json") for k in data_keys)
    _assert_records_match(decode_records(objects), expected_records(docs))


def test_dry_run_counts_and_estimates_but_writes_nothing(seeded, run_backfill, s3_bucket, caplog):
    names, _ = seeded({"messages": 90, "start": utc(2024, 3, 1), "end": utc(2024, 3, 4)})
    caplog.set_level("INFO")
    run = run_backfill(_conf(names, s3_bucket, dry_run=True, pool_slots=2, target_duration="1h"))
    assert run.state == "success"
    assert read_objects(s3_bucket, "") == {}
    assert "Dry run total: 3 windows, 90 messages" in caplog.text
    # The time estimate from one sample page (100 messages: the page size, more than the range holds).
    # Each window costs ~10 s whatever its size (its task's start, ...): 3 windows on 2 slots take two turns.
    assert re.search(r"Estimated run time with 2 pool slots: 2\ds ", caplog.text), caplog.text[-2000:]
    assert "(at most 6 searches at once on the cluster), from one sample page of 90 messages" in caplog.text
    assert "To finish within 1h 00m: a pool of 1 slot(s)" in caplog.text


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"start": "2024-03-04", "end": "2024-03-01"}, "must be after start"),
        ({"start": "2024-03-01", "end": "2024-03-01"}, "must be after start"),
        ({"start": "2024-02-30"}, "is not a date or date-time"),
        ({"source": {"messages": {"index": "nope", "id_field": "message_id", "timestamp_field": "@timestamp"}}},
         "index 'nope' does not exist"),
        ({"start": "2024-01-01", "end": "2024-03-01", "window": "1m"},
         "more than the mapping limit of 1024 ([core] max_map_length); use a window of at least 2h"),
        ({"query": {"range": {"@timestamp": {"gte": "not-a-date"}}}}, "the cluster rejected the query"),
        ({"query": {"no_such_query": {}}}, "the cluster rejected the query"),
        ({"source": {"messages": {"index": "PLACEHOLDER", "id_field": "message_id", "timestamp_field": "created"}}},
         "field 'created' is not mapped in index"),
    ],
)  # fmt: skip
def test_bad_conf_fails_in_plan_with_a_clear_error_and_writes_nothing(
    seeded_small, run_backfill, s3_bucket, capfd, overrides, reason
):
    conf = _conf(seeded_small, s3_bucket) | overrides
    if "source" in overrides:
        messages = overrides["source"]["messages"]
        if messages["index"] == "PLACEHOLDER":  # the seeded index, with a field it does not have
            messages = messages | {"index": seeded_small.messages}
        conf["source"] = source_override(seeded_small) | {"messages": messages}
    run = run_backfill(conf)
    assert run.state == "failed"
    out, err = capfd.readouterr()  # the task's log, where the plan task's exception is reported
    assert reason in out + err
    assert read_objects(s3_bucket, "") == {}


@pytest.mark.parametrize(
    "overrides",
    [{"start": "03/01/2024"}, {"page_size": 99}, {"page_size": 10_001}, {"output_format": "xml"}, {"window": "1w"}],
)
def test_invalid_conf_is_refused_at_trigger_time(seeded_small, run_backfill, s3_bucket, overrides):
    from airflow.sdk.definitions.param import ParamValidationError

    with pytest.raises(ParamValidationError):
        run_backfill(_conf(seeded_small, s3_bucket) | overrides)
    assert read_objects(s3_bucket, "") == {}


def test_jsonl_gz_parts_are_gzip_without_timestamp_and_plan_names_the_pool(seeded, run_backfill, s3_bucket, caplog):
    names, _ = seeded({"messages": 30, "start": utc(2024, 3, 1), "end": utc(2024, 3, 2)})
    assert run_backfill(_conf(names, s3_bucket, end="2024-03-02")).state == "success"
    assert "Extract tasks run in pool 'es_backfill', which this task cannot check" in caplog.text
    (part,) = [v for k, v in read_objects(s3_bucket, "out/").items() if k.endswith(".jsonl.gz")]
    assert part[:2] == b"\x1f\x8b" and part[4:8] == b"\0\0\0\0"  # gzip magic, mtime 0
    assert len(gzip.decompress(part).splitlines()) == 30
