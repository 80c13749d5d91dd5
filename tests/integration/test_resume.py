"""Re-triggering a backfill after some windows failed: completed windows are left alone."""

from __future__ import annotations

import re

import orjson

from include.dev.servers.elasticsearch import elasticsearch_connection_uri
from include.dev.servers.faultproxy import FaultProxy, es_error
from include.dev.servers.s3 import aws_connection_uri
from tests.integration.support import decode_records, expected_records, read_objects, source_override, utc

FAILING_DAYS = ("2024-03-02", "2024-03-03")


def _count_of_failing_window(request) -> bool:
    return request.path.endswith("/_count") and any(
        f'"gte":"{d}T00:00:00Z"'.encode() in request.body for d in FAILING_DAYS
    )


def test_resume_after_failed_windows_rereads_and_rewrites_only_those(
    seeded, run_backfill, es_cluster, s3_server, s3_bucket, monkeypatch
):
    names, docs = seeded({"messages": 400, "start": utc(2024, 3, 1), "end": utc(2024, 3, 5)})
    conf = {"start": "2024-03-01", "end": "2024-03-05", "s3_bucket": s3_bucket, "s3_prefix": "r", "page_size": 100,
            "source": source_override(names) | {"max_retries": 0}}  # fmt: skip
    with FaultProxy(es_cluster.url) as es_proxy, FaultProxy(s3_server.endpoint_url) as s3_proxy:
        monkeypatch.setenv("AIRFLOW_CONN_ELASTICSEARCH_DEFAULT", elasticsearch_connection_uri(es_proxy.url))
        monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", aws_connection_uri(s3_proxy.url))

        # First run: two windows hit a persistent error, through all their task retries.
        es_proxy.add_fault(
            _count_of_failing_window, es_error(400, "illegal_argument_exception", "injected"), times=None
        )
        first = run_backfill(conf)
        assert first.state == "failed"
        objects = read_objects(s3_bucket, "r/")
        manifests = sorted(k.split("/")[2] for k in objects if k.endswith("/_manifest.json"))
        assert manifests == ["dt=2024-03-01", "dt=2024-03-04"]
        summary = orjson.loads(objects[next(k for k in objects if k.endswith("_run_manifest.json"))])
        assert (summary["written"], summary["failed"]) == (2, 2)
        assert summary["failed_windows"] == [
            "2024-03-02 00:00 → 2024-03-03 00:00",
            "2024-03-03 00:00 → 2024-03-04 00:00",
        ]

        # Second run of the same backfill, with the cluster healthy again.
        es_proxy.clear_faults()
        es_proxy.reset_log()
        s3_proxy.reset_log()
        second = run_backfill(conf)
        assert second.state == "success"

        # Only the two failed windows were read (one point in time over the messages each, beside the plan's probe
        # of each of the 4 indices) ...
        assert es_proxy.count(r"^POST /[^/]+/_pit") == 2 + 4
        counted = [r for r in es_proxy.requests if r.path.endswith("/_count")]
        assert len(counted) == 3  # the plan's query check and one per failed window
        # ... and written: no PUT or DELETE under the completed windows' folders.
        writes = [r.path for r in s3_proxy.requests if r.method in {"PUT", "POST", "DELETE"}]
        for done in ("20240301T000000Z_20240302T000000Z", "20240304T000000Z_20240305T000000Z"):
            assert not [p for p in writes if done in p]
        assert any(re.search("20240302T000000Z_20240303T000000Z/part-00000", p) for p in writes)

        objects = read_objects(s3_bucket, "r/")
    summary = orjson.loads(objects[next(k for k in objects if k.endswith("_run_manifest.json"))])
    assert (summary["written"], summary["skipped"], summary["failed"]) == (2, 2, 0)
    records = decode_records(objects)
    assert sorted(r["message_id"] for r in records) == sorted(expected_records(docs))
