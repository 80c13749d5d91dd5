"""The servers the suite runs against are real: a real Elasticsearch and S3 over HTTP."""

import urllib.request
from datetime import UTC, datetime

import pytest

from include.dev.datagen import DatasetSpec, IndexExists, IndexNames, load
from include.dev.servers.elasticsearch import ES_VERSION, fetch_archive


def test_info_answers_from_a_real_elasticsearch(es_client, es_cluster):
    # The client raises UnsupportedProductError unless the server sends Elasticsearch's product header.
    info = es_client.info()
    assert info["version"]["number"] == ES_VERSION
    assert info["tagline"] == "You Know, for Search"
    assert es_client.ping()
    assert es_cluster.version == ES_VERSION


def test_bulk_loaded_counts_match_what_the_generator_reports(es_client):
    names = IndexNames(messages="srv_messages", history="srv_history", status="srv_status", audit="srv_audit")
    spec = DatasetSpec(
        messages=1500, start=datetime(2024, 1, 1, tzinfo=UTC), end=datetime(2024, 1, 3, tzinfo=UTC), indices=names
    )
    counts = load(es_client, spec, chunk_size=500)
    assert counts.messages == 1500
    assert counts.history > 0 and counts.audit > 0 and counts.status > 0
    for role, expected in counts.as_dict().items():
        assert es_client.count(index=names.of(role))["count"] == expected
    # Loading again never deletes or writes an index that exists: it may be somebody's data.
    with pytest.raises(IndexExists, match="srv_messages, srv_history, srv_status, srv_audit exists"):
        load(es_client, spec)
    for role, expected in counts.as_dict().items():
        assert es_client.count(index=names.of(role))["count"] == expected


def test_object_round_trips_through_s3hook_over_http(s3_bucket, s3_server):
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    hook = S3Hook(aws_conn_id="aws_default")
    assert hook.conn.meta.endpoint_url == s3_server.endpoint_url
    assert s3_server.endpoint_url.startswith("http://127.0.0.1:")
    hook.load_bytes("héllo wörld".encode(), key="dir/obj.txt", bucket_name=s3_bucket)
    assert hook.read_key("dir/obj.txt", bucket_name=s3_bucket) == "héllo wörld"
    # The object is visible to a plain HTTP client too: it lives in the server, not in this process.
    url = hook.generate_presigned_url("get_object", params={"Bucket": s3_bucket, "Key": "dir/obj.txt"})
    assert url.startswith(f"{s3_server.endpoint_url}/")
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - a local http URL
        assert resp.read() == "héllo wörld".encode()


def test_archive_is_reused_from_the_cache(caplog):
    caplog.set_level("INFO", logger="include.dev.servers.elasticsearch")
    first = fetch_archive()
    mtime = first.stat().st_mtime_ns
    second = fetch_archive()
    assert first == second and second.stat().st_mtime_ns == mtime
    assert "Reusing cached Elasticsearch archive" in caplog.text
