"""Faults between the backfill and its servers: retried inside the task, or failing it cleanly.

A fault-injecting proxy sits between the code and the real Elasticsearch / S3 servers.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from es_backfill.config import from_params, load_defaults
from es_backfill.extract import run_window
from es_backfill.sink import ObjectStore
from es_backfill.source import SourceError
from es_backfill.windows import Window
from include.dev.servers.faultproxy import FaultProxy, drop, es_429, es_503, es_pit_lost, gateway, s3_error, status
from tests.integration.support import (
    decode_records,
    expected_records,
    open_uploads,
    read_objects,
    reader_at,
    s3_client,
    source_override,
    utc,
)

DEFAULTS = load_defaults(Path(__file__).resolve().parents[2] / "include" / "backfill_defaults.json")
WINDOW = Window(utc(2024, 3, 1), utc(2024, 3, 2))


def _config(names, bucket, **source):
    params = {"start": "2024-03-01", "end": "2024-03-02", "s3_bucket": bucket, "s3_prefix": "f", "page_size": 100}
    return from_params(params | {"source": source_override(names) | source}, DEFAULTS)


SEARCH = r"^POST /([^/]+/)?_search"  # searches in a point in time, and one-shot related lookups


def _messages_page_after_first(request) -> bool:
    return request.path == "/_search" and b'"range"' in request.body and b'"search_after"' in request.body


def test_bursts_of_429_and_503_a_dropped_connection_and_a_lost_pit_still_give_complete_output(
    seeded, es_cluster, s3_server, s3_bucket
):
    names, docs = seeded({"messages": 650, "start": utc(2024, 3, 1), "end": utc(2024, 3, 2)})
    with FaultProxy(es_cluster.url) as proxy, reader_at(proxy.url, max_retries=4, backoff_s=0.05) as reader:
        faults = [
            proxy.add_fault(SEARCH, es_429(), nth=2, times=3),
            proxy.add_fault(SEARCH, es_503(), nth=9, times=2),
            proxy.add_fault(SEARCH, gateway(504), nth=14),
            proxy.add_fault(SEARCH, drop(), nth=18),
            proxy.add_fault(_messages_page_after_first, es_pit_lost(), nth=3),
            proxy.add_fault(r"^POST /[^/]+/_count", es_429()),
        ]
        result = run_window(
            _config(names, s3_bucket), WINDOW, reader, ObjectStore(s3_client(s3_server.endpoint_url), s3_bucket)
        )
        assert [f.fired for f in faults] == [3, 2, 1, 1, 1, 1]
    assert result.messages == result.es_count == 650
    assert reader.requests["open_point_in_time"] == 2  # the messages' point in time, and once more when lost
    records = decode_records(read_objects(s3_bucket, "f/"))
    assert len(records) == 650 == len({r["message_id"] for r in records})
    expected = expected_records(docs)
    assert {r["message_id"]: {k: r[k] for k in expected[r["message_id"]]} for r in records} == expected


def test_fault_that_outlasts_the_retries_fails_with_a_clear_error_and_no_manifest(
    seeded, es_cluster, s3_server, s3_bucket
):
    names, _ = seeded({"messages": 250, "start": utc(2024, 3, 1), "end": utc(2024, 3, 2)})
    with FaultProxy(es_cluster.url) as proxy, reader_at(proxy.url, max_retries=2, backoff_s=0.05) as reader:
        proxy.add_fault(_messages_page_after_first, es_503(), times=None)
        with pytest.raises(SourceError, match=r"search still failing after 3 attempts"):
            run_window(
                _config(names, s3_bucket), WINDOW, reader, ObjectStore(s3_client(s3_server.endpoint_url), s3_bucket)
            )
        assert proxy.count(r"^DELETE /_pit") == 1  # the point in time was closed on the way out
    assert not any(k.endswith("_manifest.json") for k in read_objects(s3_bucket, "f/"))
    assert open_uploads(s3_bucket) == []


def test_s3_slowdown_and_server_errors_are_retried(seeded, es_client, es_cluster, s3_server, s3_bucket):
    names, docs = seeded({"messages": 300, "start": utc(2024, 3, 1), "end": utc(2024, 3, 2)})
    with FaultProxy(s3_server.endpoint_url) as proxy, reader_at(es_cluster.url) as reader:
        faults = [
            proxy.add_fault(r"^PUT /.*part-00000", s3_error(503, "SlowDown"), times=2),
            proxy.add_fault(r"^PUT /.*part-00002", status(500, b"<Error><Code>InternalError</Code></Error>")),
            proxy.add_fault(r"^PUT /.*_manifest.json", s3_error(503, "SlowDown")),
        ]
        store = ObjectStore(s3_client(proxy.url), s3_bucket)
        result = run_window(_config(names, s3_bucket, part_max_records=100), WINDOW, reader, store)
        assert [f.fired for f in faults] == [2, 1, 1]
    assert result.messages == 300 and result.objects == 3
    records = decode_records(read_objects(s3_bucket, "f/"))
    assert sorted(r["message_id"] for r in records) == sorted(expected_records(docs))


def test_a_page_answered_from_only_some_shards_fails_the_window_instead_of_dropping_documents(
    seeded, es_cluster, s3_server, s3_bucket
):
    names, _ = seeded({"messages": 250, "start": utc(2024, 3, 1), "end": utc(2024, 3, 2)})
    partial = {"took": 1, "timed_out": False, "_shards": {"total": 2, "successful": 1, "skipped": 0, "failed": 1},
               "hits": {"hits": []}}  # fmt: skip
    with FaultProxy(es_cluster.url) as proxy, reader_at(proxy.url) as reader:
        proxy.add_fault(
            _messages_page_after_first, status(200, partial, headers={"X-Elastic-Product": "Elasticsearch"})
        )
        store = ObjectStore(s3_client(s3_server.endpoint_url), s3_bucket)
        with pytest.raises(SourceError, match="answered from only part of the shards"):
            run_window(_config(names, s3_bucket), WINDOW, reader, store)
    assert not any(k.endswith("_manifest.json") for k in read_objects(s3_bucket, "f/"))
