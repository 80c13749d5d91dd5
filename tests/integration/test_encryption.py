"""Server-side encryption: every object a run writes (parts, multipart uploads, one-object-per-message
output, window manifests, the plan, the run manifest) carries the encryption the conf asks for, read back
from the S3 server's headers, and the manifests record it."""

from __future__ import annotations

import orjson
import pytest

from tests.integration.support import read_objects, s3_client, source_override, utc

KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/0b4f2a7c-1d5e-4c1f-9a57-3f1e8c2d9b10"


def _headers(endpoint_url: str, bucket: str, prefix: str) -> dict[str, dict]:
    client = s3_client(endpoint_url)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
    return {key: client.head_object(Bucket=bucket, Key=key) for key in keys}


@pytest.mark.parametrize(
    ("sse", "output_format", "expected"),
    [
        ("aws:kms", "jsonl", {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": KEY_ARN}),
        ("AES256", "json", {"ServerSideEncryption": "AES256"}),
    ],
)
def test_every_object_written_is_encrypted_as_asked_and_the_manifests_say_so(
    seeded, run_backfill, s3_server, s3_bucket, sse, output_format, expected
):
    big = "x" * 1_500_000  # jsonl parts of such messages go up as multipart uploads (8 MiB pieces)
    extra = [("messages", f"big-{i}", {"message_id": f"big-{i}", "@timestamp": f"2024-03-01T0{i}:00:00.000Z",
                                         "body": big + str(i)}) for i in range(7)]  # fmt: skip
    names, _ = seeded({"messages": 40, "start": utc(2024, 3, 1), "end": utc(2024, 3, 3)}, extra)
    conf = {"start": "2024-03-01", "end": "2024-03-03", "s3_bucket": s3_bucket, "s3_prefix": "sse",
            "output_format": output_format, "page_size": 100, "sse": sse, "source": source_override(names)}  # fmt: skip
    if sse == "aws:kms":
        conf["kms_key_id"] = KEY_ARN
    assert run_backfill(conf).state == "success"

    headers = _headers(s3_server.endpoint_url, s3_bucket, "sse/")
    kinds = {key.rsplit("/", 1)[-1] if "/_" in key else key.rsplit(".", 1)[-1] for key in headers}
    assert kinds >= {"_plan.json", "_run_manifest.json", "_manifest.json", "_athena.sql", output_format}
    wrong = {k: {h: v.get(h) for h in ("ServerSideEncryption", "SSEKMSKeyId")} for k, v in headers.items()
             if {h: v.get(h) for h in ("ServerSideEncryption", "SSEKMSKeyId") if v.get(h)} != expected}  # fmt: skip
    assert wrong == {}
    if output_format == "jsonl":  # the big first day's part was a multipart upload (its ETag counts pieces)
        assert any("-" in h["ETag"] for k, h in headers.items() if k.endswith(".jsonl"))

    recorded = {"sse": sse, "kms_key_id": expected.get("SSEKMSKeyId")}
    manifests = {
        k: orjson.loads(v) for k, v in read_objects(s3_bucket, "sse/").items() if "/_" in k and k.endswith(".json")
    }
    assert {k: m["encryption"] for k, m in manifests.items()} == {k: recorded for k in manifests}


def test_without_sse_objects_follow_the_buckets_default_and_manifests_record_none(
    seeded, run_backfill, s3_server, s3_bucket
):
    names, _ = seeded({"messages": 20, "start": utc(2024, 3, 1), "end": utc(2024, 3, 2)})
    conf = {"start": "2024-03-01", "end": "2024-03-02", "s3_bucket": s3_bucket, "s3_prefix": "plain",
            "source": source_override(names)}  # fmt: skip
    assert run_backfill(conf).state == "success"
    headers = _headers(s3_server.endpoint_url, s3_bucket, "plain/")
    assert headers and all(h.get("SSEKMSKeyId") is None for h in headers.values())
    manifests = [
        orjson.loads(v) for k, v in read_objects(s3_bucket, "plain/").items() if "/_" in k and k.endswith(".json")
    ]
    assert len(manifests) == 3 and all(m["encryption"] is None for m in manifests)
