"""The verify command finds what is wrong with a backfill's output, and passes a clean one."""

from __future__ import annotations

import gzip
import hashlib
import json

import orjson
import pytest

from es_backfill.cli import main as cli
from tests.integration.support import read_objects, source_override, utc


@pytest.fixture
def backfill(seeded, run_backfill, s3_bucket, es_cluster, s3_server):
    """A finished 3-window backfill and the CLI arguments that verify it."""
    names, _ = seeded({"messages": 300, "start": utc(2024, 3, 1), "end": utc(2024, 3, 4)})
    conf = {"start": "2024-03-01", "end": "2024-03-04", "s3_bucket": s3_bucket, "s3_prefix": "v",
            "page_size": 100, "source": source_override(names) | {"part_max_records": 40}}  # fmt: skip
    assert run_backfill(conf).state == "success"
    args = [
        "verify",
        "--conf",
        json.dumps(conf),
        "--es-url",
        es_cluster.url,
        "--s3-endpoint-url",
        s3_server.endpoint_url,
    ]
    return names, args


def _client():
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id="aws_default").get_conn()


def _a_part(bucket: str, day: str = "dt=2024-03-02") -> tuple[str, bytes]:
    return next((k, v) for k, v in sorted(read_objects(bucket, "v/").items()) if day in k and "part-00001" in k)


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def test_verify_passes_a_clean_backfill(backfill, capsys):
    _, args = backfill
    assert cli(args) == 0
    assert "verified 3 windows: 3 ok, 0 with problems" in capsys.readouterr().out


def test_verify_detects_a_deleted_part(backfill, s3_bucket, capsys):
    key, _ = _a_part(s3_bucket)
    _client().delete_object(Bucket=s3_bucket, Key=key)
    assert cli(backfill[1]) == 1
    out = capsys.readouterr().out
    assert f"missing object: {key}" in out and "1 with problems" in out


def test_verify_detects_a_truncated_part(backfill, s3_bucket, capsys):
    key, data = _a_part(s3_bucket)
    _client().put_object(Bucket=s3_bucket, Key=key, Body=data[: len(data) // 2])
    assert cli(backfill[1]) == 1
    out = capsys.readouterr().out
    assert "size mismatch" in out and "(truncated?)" in out and "undecodable" in out


def test_verify_detects_a_checksum_mismatch(backfill, s3_bucket, capsys):
    key, data = _a_part(s3_bucket)
    flipped = data[:20] + bytes([data[20] ^ 0xFF]) + data[21:]
    _client().put_object(Bucket=s3_bucket, Key=key, Body=flipped)
    assert cli(backfill[1]) == 1
    assert f"checksum mismatch: {key}" in capsys.readouterr().out


def test_verify_detects_a_count_mismatch_with_elasticsearch(backfill, es_client, capsys):
    names, args = backfill
    es_client.index(index=names.messages, id="late", refresh=True,
                    document={"message_id": "late", "@timestamp": "2024-03-03T05:00:00.000Z"})  # fmt: skip
    assert cli(args) == 1
    out = capsys.readouterr().out
    assert "2024-03-03 00:00 → 2024-03-04 00:00: count mismatch" in out and "1 with problems" in out


def test_verify_detects_a_missing_window_and_related_documents_changed(backfill, s3_bucket, es_client, capsys):
    names, args = backfill
    manifest = next(k for k in read_objects(s3_bucket, "v/") if "dt=2024-03-01" in k and k.endswith("_manifest.json"))
    _client().delete_object(Bucket=s3_bucket, Key=manifest)
    some = es_client.search(index=names.history, size=1, query={"range": {"@timestamp": {"gte": "2024-03-02T06:00:00Z",
                            "lt": "2024-03-03T00:00:00Z"}}})["hits"]["hits"][0]  # fmt: skip
    es_client.delete(index=names.history, id=some["_id"], refresh=True)
    assert cli(args) == 1
    out = capsys.readouterr().out
    assert "2024-03-01 00:00 → 2024-03-02 00:00: missing window" in out
    assert "related mismatch: history" in out


def _bare(record) -> bool:
    """A record without related documents: copying it changes no related count."""
    return record["history"] == [] and record["audit"] == [] and record["status"] is None


def _rewrite_window(bucket: str, day: str, change) -> None:
    """Rewrite one part of a window with ``change(records, others)`` and fix up its manifest to match,
    as a faulty writer that believed its own output would: sizes, checksums, the ids' digest."""
    objects = read_objects(bucket, "v/")
    key = next(k for k in sorted(objects) if f"dt={day}" in k and k.endswith(".jsonl.gz"))
    others = [orjson.loads(line) for k, v in objects.items() if k.endswith(".jsonl.gz") and f"dt={day}" not in k
              for line in gzip.decompress(v).splitlines()]  # fmt: skip
    manifest_key = key.rsplit("/", 1)[0] + "/_manifest.json"
    manifest = orjson.loads(objects[manifest_key])
    records = [orjson.loads(line) for line in gzip.decompress(objects[key]).splitlines()]
    change(records, others)
    data = gzip.compress(b"".join(orjson.dumps(r) + b"\n" for r in records), mtime=0)
    _client().put_object(Bucket=bucket, Key=key, Body=data)
    ids = []
    for obj in manifest["objects"]:
        part = data if key.endswith(obj["key"]) else objects[key.rsplit("/", 1)[0] + "/" + obj["key"]]
        ids += [orjson.loads(line)["message_id"] for line in gzip.decompress(part).splitlines()]
        if key.endswith(obj["key"]):
            obj.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    manifest["bytes"] = sum(o["bytes"] for o in manifest["objects"])
    manifest["message_ids"]["sha256"] = hashlib.sha256("".join(f"{i}\n" for i in ids).encode()).hexdigest()
    _client().put_object(Bucket=bucket, Key=manifest_key, Body=orjson.dumps(manifest))


def test_verify_detects_a_message_written_twice_in_place_of_another_even_when_counts_agree(backfill, s3_bucket, capsys):
    copied = []

    def duplicate(records, _):
        first, second = [i for i, r in enumerate(records) if _bare(r)][:2]
        records[second] = records[first]
        copied.append(records[first]["message_id"])

    _rewrite_window(s3_bucket, "2024-03-02", duplicate)
    assert cli(backfill[1]) == 1
    out = capsys.readouterr().out
    assert f"backfill: message ids: 1 messages repeat an earlier id (e.g. {copied[0]})" in out
    assert "record count" not in out and "count mismatch" not in out and "related" not in out  # counts agree


def test_verify_detects_a_record_whose_timestamp_lies_outside_its_window(backfill, s3_bucket, capsys):
    moved = []

    def take_from_another_window(records, others):
        stranger = next(r for r in others if _bare(r))
        index = next(i for i, r in enumerate(records) if _bare(r))
        records[index] = stranger | {"window": records[index]["window"]}
        moved.append(stranger["message_id"])

    _rewrite_window(s3_bucket, "2024-03-02", take_from_another_window)
    assert cli(backfill[1]) == 1
    out = capsys.readouterr().out
    assert "2024-03-02 00:00 → 2024-03-03 00:00: outside window: 1 records are not of this window" in out
    assert moved[0] in out
