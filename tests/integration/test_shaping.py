"""Shaping records on the way out, on a real cluster and S3 server: ``_source`` selection per index reaches the
engine, the three redaction kinds, a custom transform that drops records with reconciliation still holding,
and the errors a user can make, each stopped where it belongs."""

from __future__ import annotations

import hashlib
import hmac
import json

import orjson
import pytest

from include.dev.servers.elasticsearch import elasticsearch_connection_uri
from include.dev.servers.faultproxy import FaultProxy, status
from tests.integration.support import decode_records, expected_records, read_objects, source_override, utc

KEY = "a-secret-hmac-key"


def _conf(names, bucket: str, prefix: str, **source) -> dict:
    return {"start": "2024-03-01", "end": "2024-03-03", "s3_bucket": bucket, "s3_prefix": prefix, "page_size": 100,
            "source": source_override(names) | source}  # fmt: skip


def _related(names, **per_index) -> list[dict]:
    return [spec | per_index.get(spec["name"], {}) for spec in source_override(names)["related"]]


@pytest.fixture
def hmac_connection(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_BACKFILL_HMAC", json.dumps({"conn_type": "generic", "password": KEY}))
    return "backfill_hmac"


def test_source_selection_of_a_related_index_reaches_the_engine_and_shapes_the_output(
    seeded, run_backfill, es_cluster, s3_bucket, monkeypatch
):
    names, docs = seeded({"messages": 60, "start": utc(2024, 3, 1), "end": utc(2024, 3, 3)})
    related = _related(
        names, audit={"source_fields": ["action", "@timestamp"]}, history={"source_excludes": ["details"]}
    )
    messages = source_override(names)["messages"] | {"source_excludes": ["body", "subject"]}
    bodies: list[tuple[str, dict]] = []

    def record(request) -> bool:
        if request.path.endswith("/_search") and request.body:
            bodies.append((request.path, json.loads(request.body)))
        return False

    with FaultProxy(es_cluster.url) as proxy:
        proxy.add_fault(record, status(500, {}), times=None)  # never fires: it only reads the bodies
        monkeypatch.setenv("AIRFLOW_CONN_ELASTICSEARCH_DEFAULT", elasticsearch_connection_uri(proxy.url))
        conf = _conf(names, s3_bucket, "sel", related=related, messages=messages)
        assert run_backfill(conf).state == "success"

    audit_bodies = [body for path, body in bodies if path == f"/{names.audit}/_search"]
    assert audit_bodies and all(body["_source"] == ["action", "@timestamp"] for body in audit_bodies)
    history_bodies = [body for path, body in bodies if path == f"/{names.history}/_search"]
    assert history_bodies and all(body["_source"] == {"excludes": ["details"]} for body in history_bodies)
    records = decode_records(read_objects(s3_bucket, "sel/"))
    expected = expected_records(docs)
    assert sorted(r["message_id"] for r in records) == sorted(expected)
    for r in records:
        want = expected[r["message_id"]]
        assert r["message"] == {k: v for k, v in want["message"].items() if k not in {"body", "subject"}}
        assert r["audit"] == [{"action": a["action"], "@timestamp": a["@timestamp"]} for a in want["audit"]]
        assert r["history"] == [{k: v for k, v in h.items() if k != "details"} for h in want["history"]]


def test_drop_hash_and_mask_redact_every_record_and_hashes_join_across_records(
    seeded, run_backfill, s3_bucket, hmac_connection
):
    names, docs = seeded({"messages": 60, "start": utc(2024, 3, 1), "end": utc(2024, 3, 3)})
    redact = [{"field": "message.body", "action": "drop"},
              {"field": "message.sender", "action": "hash"},
              {"field": "message.recipients", "action": "mask", "keep_start": 2, "keep_end": 12},
              {"field": "audit.ip", "action": "mask", "keep_start": 3}]  # fmt: skip
    conf = _conf(names, s3_bucket, "red", redact=redact, redaction_key_conn_id=hmac_connection)
    assert run_backfill(conf).state == "success"
    objects = read_objects(s3_bucket, "red/")
    records = decode_records(objects)
    expected = expected_records(docs)
    assert len(records) == len(expected) == 60

    def digest(value: str) -> str:
        return hmac.new(KEY.encode(), value.encode(), hashlib.sha256).hexdigest()

    def mask(value: str, start: int, end: int) -> str:
        return value[:start] + "*" * (len(value) - start - end) + (value[len(value) - end :] if end else "")

    for r in records:
        want = expected[r["message_id"]]["message"]
        assert "body" not in r["message"]
        assert r["message"]["sender"] == digest(want["sender"])  # same sender, same hash: joins still work
        assert r["message"]["recipients"] == [mask(x, 2, 12) for x in want["recipients"]]
        assert r["message"]["channel"] == want["channel"]  # untouched fields stay as they were
        for got, audit in zip(r["audit"], expected[r["message_id"]]["audit"], strict=True):
            assert got["ip"] == mask(audit["ip"], 3, 0) and got["user"] == audit["user"]
    plan = orjson.loads(next(v for k, v in objects.items() if k.endswith("_plan.json")))
    assert plan["settings"]["redact"][1] == {"field": "message.sender", "action": "hash", "keep_start": 0,
                                             "keep_end": 0}  # fmt: skip
    assert KEY not in json.dumps(plan)


@pytest.mark.parametrize("output_format", ["jsonl.gz", "json"])
def test_a_transform_that_drops_records_keeps_reconciliation_and_reruns_write_the_same_bytes(
    seeded, run_backfill, s3_bucket, output_format
):
    names, docs = seeded({"messages": 80, "start": utc(2024, 3, 1), "end": utc(2024, 3, 3)})
    conf = _conf(names, s3_bucket, "tr", transform="tests.integration.transforms.drop_sms_and_count_recipients")
    conf |= {"output_format": output_format}
    assert run_backfill(conf).state == "success"
    objects = read_objects(s3_bucket, "tr/")
    records = decode_records(objects)
    expected = expected_records(docs)
    sms = {mid for mid, rec in expected.items() if rec["message"]["channel"] == "sms"}
    assert sms and sorted(r["message_id"] for r in records) == sorted(set(expected) - sms)
    assert all(r["recipient_count"] == len(expected[r["message_id"]]["message"]["recipients"]) for r in records)
    run = orjson.loads(next(v for k, v in objects.items() if k.endswith("_run_manifest.json")))
    assert (run["messages"], run["dropped"], run["es_count"]) == (len(records), len(sms), 80)
    windows = [orjson.loads(v) for k, v in objects.items() if k.endswith("/_manifest.json")]
    assert sum(w.get("dropped", 0) for w in windows) == len(sms)
    assert all(w["message_ids"]["distinct"] == w["messages"] for w in windows)
    # A re-trigger trusts those manifests: every window is skipped; a forced rerun writes the same bytes.
    run_key = next(k for k in objects if k.endswith("_run_manifest.json"))
    assert run_backfill(conf).state == "success"
    assert orjson.loads(read_objects(s3_bucket, "tr/")[run_key])["skipped"] == len(windows)
    assert run_backfill(conf | {"force": True}).state == "success"
    rerun = read_objects(s3_bucket, "tr/")
    assert {k: v for k, v in rerun.items() if k != run_key} == {k: v for k, v in objects.items() if k != run_key}


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ({"transform": "tests.integration.no_such_module.fn"}, "cannot be imported"),
        ({"transform": "tests.integration.transforms.takes_two"}, "must take one argument, the record"),
        ({"messages": "TYPO"}, "field 'bodyy' (in _source selection or a redaction rule) is not mapped"),
        ({"redact": [{"field": "audit.ipp", "action": "drop"}]}, "field 'ipp' (in _source selection or a redaction"),
        ({"redact": [{"field": "message.sender", "action": "hash"}], "redaction_key_conn_id": "no_such_conn"},
         "no connection 'no_such_conn' holds the HMAC key"),
    ],
)  # fmt: skip
def test_shaping_mistakes_fail_the_plan_and_write_nothing(seeded_small, run_backfill, s3_bucket, capfd, source, reason):
    if source.get("messages") == "TYPO":
        source = {"messages": source_override(seeded_small)["messages"] | {"source_fields": ["message_id", "bodyy"]}}
    conf = _conf(seeded_small, s3_bucket, "bad", **source)
    assert run_backfill(conf).state == "failed"
    out, err = capfd.readouterr()
    assert reason in out + err
    assert read_objects(s3_bucket, "") == {}


def test_a_transform_that_raises_fails_its_window_naming_the_message(seeded, run_backfill, s3_bucket, capfd):
    names, _ = seeded({"messages": 40, "start": utc(2024, 3, 1), "end": utc(2024, 3, 3), "seed": 3})
    conf = _conf(names, s3_bucket, "raise", transform="tests.integration.transforms.fail_on_one_message")
    assert run_backfill(conf).state == "failed"
    out, err = capfd.readouterr()
    assert "transform tests.integration.transforms.fail_on_one_message failed on message 'msg-000000007'" in out + err
    assert "cannot shape this one" in out + err
