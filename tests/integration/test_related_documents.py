"""How related documents join messages: several message ids in one join field, and the current `one`."""

from __future__ import annotations

import json

import orjson

from es_backfill.cli import main as cli
from tests.integration.support import decode_records, read_objects, source_override, utc


def _message(mid: str, ts: str) -> tuple[str, str, dict]:
    return "messages", mid, {"message_id": mid, "@timestamp": ts, "channel": "chat", "body": mid}


def _history(doc_id: str, message_ids, ts: str) -> tuple[str, str, dict]:
    return "history", doc_id, {"message_id": message_ids, "event_id": doc_id, "@timestamp": ts, "event": "forwarded"}


def _status(doc_id: str, status: str) -> tuple[str, str, dict]:
    return "status", doc_id, {"message_id": "joint-a", "status": status, "updated_at": "2024-03-01T12:00:00.000Z"}


EXTRA = [
    _message("joint-a", "2024-03-01T10:00:00.000Z"),
    _message("joint-b", "2024-03-01T11:00:00.000Z"),
    _message("joint-c", "2024-03-02T10:00:00.000Z"),  # another window
    _history("shared", ["joint-a", "joint-b", "joint-c", "not-a-message"], "2024-03-02T12:00:00.000Z"),
    _history("own", "joint-a", "2024-03-01T12:00:00.000Z"),
    # Two statuses equal in every sort field: the tie goes to the larger (index, _id) as strings, "s9" > "s11".
    _status("s11", "read"),
    _status("s9", "failed"),
]


def test_a_related_document_naming_several_messages_joins_each_and_verify_agrees(
    seeded, run_backfill, s3_bucket, es_cluster, s3_server, monkeypatch
):
    names, _ = seeded({"messages": 120, "start": utc(2024, 3, 1), "end": utc(2024, 3, 3)}, EXTRA)
    conf = {"start": "2024-03-01", "end": "2024-03-03", "s3_bucket": s3_bucket, "s3_prefix": "rel",
            "page_size": 100, "source": source_override(names)}  # fmt: skip
    assert run_backfill(conf).state == "success"
    records = {r["message_id"]: r for r in decode_records(read_objects(s3_bucket, "rel/"))}
    shared = EXTRA[3][2]
    assert records["joint-a"]["history"] == [EXTRA[4][2], shared]  # in @timestamp order
    assert records["joint-b"]["history"] == [shared]
    assert records["joint-c"]["history"] == [shared]
    assert records["joint-a"]["status"]["status"] == "failed"  # s9's

    manifests = [orjson.loads(v) for k, v in read_objects(s3_bucket, "rel/").items() if k.endswith("/_manifest.json")]
    assert sum(m["related"]["history"] for m in manifests) == sum(len(r["history"]) for r in records.values())
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    verify = ["verify", "--conf", json.dumps(conf), "--es-url", es_cluster.url, "--s3-endpoint-url",
              s3_server.endpoint_url]  # fmt: skip
    assert cli(verify) == 0  # it counts a document once per message it joins, as the output does
