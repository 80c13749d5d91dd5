"""A point in time lost mid-window: reading resumes on sort values that hold in the new one.

The messages' point in time is closed for real on the cluster (through a hook in the proxy) while a
window is read; before the window asks again, late documents arrive and the index is force-merged, so
the new point in time numbers the documents (their ``_shard_doc``) differently from the lost one.
"""

from __future__ import annotations

from pathlib import Path

import orjson
from elasticsearch import helpers

from es_backfill.config import from_params, load_defaults
from es_backfill.extract import run_window
from es_backfill.sink import ObjectStore
from es_backfill.source import MAX_PIT_REOPENS
from es_backfill.windows import Window
from include.dev.servers.faultproxy import FaultProxy, es_pit_lost
from tests.integration.support import (
    decode_records,
    expected_records,
    read_objects,
    reader_at,
    s3_client,
    source_override,
    utc,
)

DEFAULTS = load_defaults(Path(__file__).resolve().parents[2] / "include" / "backfill_defaults.json")
WINDOW = Window(utc(2024, 3, 1), utc(2024, 3, 2))
PAGE = 100


def _config(names, bucket, prefix):
    params = {"start": "2024-03-01", "end": "2024-03-02", "s3_bucket": bucket, "s3_prefix": prefix, "page_size": PAGE}
    return from_params(params | {"source": source_override(names)}, DEFAULTS)


def _store(s3_server, bucket):
    return ObjectStore(s3_client(s3_server.endpoint_url), bucket)


def _is_messages_page(request) -> bool:
    return request.path == "/_search" and b'"range"' in request.body  # in a point in time, over the window


def test_after_a_lost_point_in_time_and_a_merge_no_message_is_written_twice(
    seeded, es_client, es_cluster, s3_server, s3_bucket
):
    names, docs = seeded({"messages": 250, "start": utc(2024, 3, 1), "end": utc(2024, 3, 2), "no_related_ratio": 1.0})
    messages = sorted((d for d in docs if d[0] == "messages"), key=lambda d: (d[2]["@timestamp"], d[2]["message_id"]))
    boundary = messages[2 * PAGE - 1][2]["message_id"]  # the last message of the second page
    tiebreaker = []  # the boundary's _shard_doc in the lost point in time, then in the new one
    pages_seen = []

    def shard_doc(pit_id: str) -> int:
        sort = [{"@timestamp": "asc"}, {"message_id": "asc"}, "_shard_doc"]
        response = es_client.search(pit={"id": pit_id}, query={"term": {"message_id": boundary}}, sort=sort, size=1)
        return response["hits"]["hits"][0]["sort"][-1]

    def lose_pit_and_merge(request) -> bool:
        if not _is_messages_page(request):
            return False
        pages_seen.append(request)
        if len(pages_seen) == 3:  # the third page: the point in time goes, and the shard changes under it
            lost = orjson.loads(request.body)["pit"]["id"]
            tiebreaker.append(shard_doc(lost))
            es_client.close_point_in_time(id=lost)
            late = (
                {"_index": names.messages, "_id": f"late-{i}",
                 "_source": {"message_id": f"late-{i}", "@timestamp": "2024-03-05T00:00:00Z"}}
                for i in range(400)
            )  # fmt: skip
            helpers.bulk(es_client, late, refresh=True)  # outside the window, so not part of the output
            es_client.indices.forcemerge(index=names.messages, max_num_segments=1)
            fresh = es_client.open_point_in_time(index=names.messages, keep_alive="30s")["id"]
            tiebreaker.append(shard_doc(fresh))
            es_client.close_point_in_time(id=fresh)
        return False  # forwarded: the cluster itself answers 404 for the closed point in time

    with FaultProxy(es_cluster.url) as proxy, reader_at(proxy.url, max_retries=2, backoff_s=0.05) as reader:
        proxy.add_fault(lose_pit_and_merge, es_pit_lost())
        result = run_window(_config(names, s3_bucket, "pit"), WINDOW, reader, _store(s3_server, s3_bucket))
        lost = [r for r in proxy.requests if r.status == 404]
    assert len(lost) == 1 and reader.requests["open_point_in_time"] == 2  # lost once, for real, and reopened
    # The merge numbered the boundary message after where the lost point in time had it, so resuming after
    # the old (timestamp, id, _shard_doc) would have read it again.
    assert tiebreaker[1] > tiebreaker[0]

    assert result.messages == result.es_count == 250
    records = decode_records(read_objects(s3_bucket, "pit/"))
    ids = [r["message_id"] for r in records]
    assert ids == [m[2]["message_id"] for m in messages]  # each once, in (timestamp, id) order
    expected = expected_records(docs)
    assert all(r["message"] == expected[r["message_id"]]["message"] for r in records)


def test_a_long_window_survives_more_lost_points_in_time_than_the_limit_when_none_are_consecutive(
    seeded, es_cluster, s3_server, s3_bucket
):
    names, docs = seeded({"messages": 800, "start": utc(2024, 3, 1), "end": utc(2024, 3, 2), "no_related_ratio": 1.0})
    matched = []

    def every_page_once(request) -> bool:
        # The first attempt at each page after the first loses the point in time; the retry is answered.
        if not (_is_messages_page(request) and b'"search_after"' in request.body):
            return False
        matched.append(request)
        return len(matched) % 2 == 1

    with FaultProxy(es_cluster.url) as proxy, reader_at(proxy.url, max_retries=2, backoff_s=0.05) as reader:
        fault = proxy.add_fault(every_page_once, es_pit_lost(), times=None)
        result = run_window(_config(names, s3_bucket, "long"), WINDOW, reader, _store(s3_server, s3_bucket))
    assert fault.fired == 8 > MAX_PIT_REOPENS  # every page after the first
    assert result.messages == 800
    records = decode_records(read_objects(s3_bucket, "long/"))
    assert sorted(r["message_id"] for r in records) == sorted(expected_records(docs))
