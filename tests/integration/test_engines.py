"""Every engine our users run, for real: Elasticsearch 7.10, 7.17, 8.19 and OpenSearch 2.19, 3.3 from Maven
Central's runnable zips, against the reference Elasticsearch 9.5 of the rest of the suite.

Each engine gets the same seeded data and a full DAG run (``dag.test``); its output objects must equal the
reference's byte for byte. Related batches are larger than a request (``related_page_size`` 2), so every
engine pages through snapshots, including a group of audit documents with equal sort values. Then each
engine loses its snapshot for real (the fault proxy releases it on the cluster just before a page is asked
for): a point in time is reopened and the window completes; a scroll cannot be resumed, so the window fails
and its retry gives the same output. The conf masks a field of the status documents, so redaction runs on
every engine too. And on every engine, the reference included, a full run, a resume, a
dry run and ``verify`` send the cluster nothing but the reads of ``READ_ONLY_REQUESTS``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import requests

from es_backfill.config import from_params, load_defaults
from es_backfill.extract import run_window
from es_backfill.sink import ObjectStore
from es_backfill.source import SCROLL, SnapshotLost
from es_backfill.windows import Window
from include.dev.datagen import DatasetSpec, IndexNames, generate, load
from include.dev.servers.elasticsearch import ENGINES, ES_VERSION, elasticsearch_connection_uri
from include.dev.servers.faultproxy import FaultProxy, es_pit_lost
from tests.integration.support import (
    expected_records,
    not_read_only,
    read_objects,
    reader_at,
    s3_client,
    source_override,
    utc,
)

DEFAULTS = load_defaults(Path(__file__).resolve().parents[2] / "include" / "backfill_defaults.json")
NAMES = IndexNames(messages="eng_messages", history="eng_history", status="eng_status", audit="eng_audit")
SPEC = DatasetSpec(messages=240, start=utc(2024, 3, 1), end=utc(2024, 3, 3), seed=8, indices=NAMES)
# Three audit documents of one message with equal sort values (@timestamp, audit_id): a tie group longer
# than a related page, which engines without _shard_doc must still read whole.
TIED = [
    ("audit", f"tied-{i}", {"message_id": None, "audit_id": "a-tied", "@timestamp": "2024-03-01T10:00:00.000Z",
                            "action": "view", "user": f"u{i}", "ip": "10.0.0.1"})
    for i in range(3)
]  # fmt: skip
OTHER_ENGINES = [pytest.param(e, id=f"{e[0]}-{e[1]}") for e in ENGINES if e != ("elasticsearch", ES_VERSION)]
WINDOW = Window(utc(2024, 3, 1), utc(2024, 3, 2))


def _documents() -> list[tuple[str, str, dict[str, Any]]]:
    docs = list(generate(SPEC))
    first = next(source["message_id"] for role, _, source in docs if role == "messages")
    return docs + [(role, doc_id, {**source, "message_id": first}) for role, doc_id, source in TIED]


def _seed(client: Any) -> None:
    # The reference fixture is made again for each engine's group of tests: these are the test's own indices.
    client.indices.delete(index=",".join(NAMES.of(role) for role in ("messages", "history", "status", "audit")),
                          ignore_unavailable=True)  # fmt: skip
    load(client, SPEC)
    for role, doc_id, source in _documents()[-len(TIED) :]:
        client.index(index=NAMES.of(role), id=doc_id, body=source, refresh=True)


def _conf(bucket: str, conn_id: str) -> dict[str, Any]:
    source = {**source_override(NAMES), "es_conn_id": conn_id, "related_page_size": 2}
    # Redaction on every engine: applied to what the engine returns, so the bytes still match. (A _source
    # selection is applied by the engine, and Elasticsearch 7 and OpenSearch rewrite the filtered documents
    # differently from Elasticsearch 8 and 9: the same bytes on one engine, not across engines.)
    source["redact"] = [{"field": "status.status", "action": "mask", "keep_start": 1}]
    return {"start": "2024-03-01", "end": "2024-03-03", "window": "1d", "s3_bucket": bucket, "s3_prefix": "out",
            "backfill_name": "engines", "page_size": 100, "source": source}  # fmt: skip


def _parts(bucket: str) -> dict[str, bytes]:
    """The data objects (manifests and plan aside, as they name the cluster they came from)."""
    return {k: v for k, v in read_objects(bucket, "out/").items() if not k.rsplit("/", 1)[-1].startswith("_")}


@pytest.fixture(scope="module")
def reference(es_client, run_backfill, s3_server) -> dict[str, bytes]:
    """The output of the same data and conf on the suite's Elasticsearch 9.5, checked against the oracle."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from tests.integration.support import decode_records

    _seed(es_client)
    bucket = "engines-reference"
    S3Hook(aws_conn_id="aws_default").create_bucket(bucket_name=bucket)
    assert run_backfill(_conf(bucket, "elasticsearch_default")).state == "success"
    parts = _parts(bucket)
    records = decode_records(parts)
    expected = expected_records(_documents())
    assert sorted(r["message_id"] for r in records) == sorted(expected)
    for record in records:
        want = expected[record["message_id"]]
        assert record["message"] == want["message"] and record["history"] == want["history"]
        assert sorted(map(json.dumps, record["audit"])) == sorted(map(json.dumps, want["audit"]))
    assert any(len(r["audit"]) >= 3 for r in records)  # the tie group is in
    statuses = [r["status"] for r in records if r["status"] is not None]
    assert statuses and all(s["status"][1:] == "*" * (len(s["status"]) - 1) for s in statuses)  # masked
    return parts


@pytest.fixture(scope="module")
def seeded_engine(engine):
    from opensearchpy import OpenSearch

    with OpenSearch(engine.url, timeout=60) as client:
        _seed(client)
    os.environ["AIRFLOW_CONN_ENGINE_UNDER_TEST"] = elasticsearch_connection_uri(engine.url)
    yield engine
    os.environ.pop("AIRFLOW_CONN_ENGINE_UNDER_TEST", None)


@pytest.mark.parametrize("engine", OTHER_ENGINES, indirect=True)
def test_a_full_dag_run_writes_the_same_bytes_as_on_elasticsearch_9(seeded_engine, reference, run_backfill, s3_bucket):
    run = run_backfill(_conf(s3_bucket, "engine_under_test"))
    assert run.state == "success"
    assert _parts(s3_bucket) == reference
    plan = json.loads(read_objects(s3_bucket, "out/engines/_plan.json")["out/engines/_plan.json"])
    with reader_at(seeded_engine.url) as reader:
        assert plan["source"] == reader.cluster.to_dict()
    assert plan["source"]["product"] == seeded_engine.engine and plan["source"]["version"] == seeded_engine.version


def test_the_least_privilege_reader_over_https_writes_the_same_bytes_resumes_dry_runs_and_verifies(
    secured_cluster, reference, run_backfill, s3_bucket, monkeypatch
):
    """OpenSearch 2.19.4 with its security plugin, read over HTTPS (this run's CA verified) by ``backfill_reader``,
    whose only role is the one README documents: the same bytes as Elasticsearch 9.5, and every operation works."""
    from es_backfill.cli import main as cli

    with secured_cluster.admin_client() as admin:
        _seed(admin)
    monkeypatch.setenv("AIRFLOW_CONN_SECURED_READER", secured_cluster.connection_json())
    conf = _conf(s3_bucket, "secured_reader")
    assert run_backfill(conf).state == "success"
    assert _parts(s3_bucket) == reference
    windows = {k: v for k, v in read_objects(s3_bucket, "out/").items() if "/dt=" in k}
    assert run_backfill(conf).state == "success"  # a resume: every window skipped, nothing rewritten
    assert {k: v for k, v in read_objects(s3_bucket, "out/").items() if "/dt=" in k} == windows
    assert run_backfill(conf | {"dry_run": True}).state == "success"
    assert cli(["plan", "--conf", json.dumps(conf)]) == 0
    assert cli(["verify", "--conf", json.dumps(conf)]) == 0


def _release(engine: Any, body: bytes) -> bool:
    """Release, on the cluster itself, the point in time or scroll a request names, and let the request
    through: the engine answers with its own error for a lost context."""
    request = json.loads(body)
    if "scroll_id" in request:
        path, payload = "/_search/scroll", {"scroll_id": [request["scroll_id"]]}
    elif engine.engine == "opensearch":
        path, payload = "/_search/point_in_time", {"pit_id": [request["pit"]["id"]]}
    else:
        path, payload = "/_pit", {"id": request["pit"]["id"]}
    requests.delete(engine.url + path, json=payload, timeout=10).raise_for_status()
    return False


def _run_window(url: str, bucket: str, s3_server) -> tuple[Any, dict[str, int], str]:
    # Related batches fit in one request here, so the messages are the only snapshot read.
    conf = _conf(bucket, "unused")
    conf["source"]["related_page_size"] = 1000
    with reader_at(url, max_retries=1, backoff_s=0.05) as reader:
        store = ObjectStore(s3_client(s3_server.endpoint_url), bucket)
        result = run_window(from_params(conf, DEFAULTS), WINDOW, reader, store)
        return result, dict(reader.requests), reader.cluster.strategy


@pytest.mark.parametrize("engine", OTHER_ENGINES, indirect=True)
def test_a_snapshot_lost_mid_window_is_reopened_or_the_window_is_read_again(
    seeded_engine, reference, s3_server, s3_bucket
):
    later_pages = []

    def release_before_second_page(request) -> bool:
        body = request.body or b"{}"
        if b'"search_after"' in body or b'"scroll_id"' in body:
            later_pages.append(request)
            if len(later_pages) == 1:
                return _release(seeded_engine, body)
        return False

    with FaultProxy(seeded_engine.url) as proxy:
        proxy.add_fault(release_before_second_page, es_pit_lost())
        try:
            result, requests, strategy = _run_window(proxy.url, s3_bucket, s3_server)
        except SnapshotLost as lost:
            assert "read again from its start" in str(lost)
            # The task's retry reads the window again, from a new scroll.
            result, requests, strategy = _run_window(seeded_engine.url, s3_bucket, s3_server)
            assert strategy == SCROLL
        else:
            assert strategy != SCROLL and requests["open_point_in_time"] == 2  # reopened once
        assert [r.status for r in proxy.requests if r.status == 404] == [404]  # the engine's own answer
    assert result.messages == result.es_count > 100  # more than one page
    window_parts = {k: v for k, v in reference.items() if "/dt=2024-03-01/" in k}
    assert window_parts and _parts(s3_bucket) == window_parts


def _only_reads(url: str, bucket: str, run_backfill, s3_server, monkeypatch) -> None:
    """A full run, a resume, a dry run and ``verify`` through a recording proxy: every request is a read."""
    from es_backfill.cli import main as cli

    with FaultProxy(url) as proxy:
        monkeypatch.setenv("AIRFLOW_CONN_ENGINE_UNDER_TEST", elasticsearch_connection_uri(proxy.url))
        conf = _conf(bucket, "engine_under_test")
        assert run_backfill(conf).state == "success"
        assert run_backfill(conf).state == "success"  # a resume: every window skipped
        assert run_backfill(conf | {"dry_run": True}).state == "success"
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        verify = [
            "verify",
            "--conf",
            json.dumps(conf),
            "--es-url",
            proxy.url,
            "--s3-endpoint-url",
            s3_server.endpoint_url,
        ]
        assert cli(verify) == 0
        sent = list(proxy.requests)
    assert not_read_only(sent) == []
    assert {r.path.rsplit("/", 1)[-1] for r in sent} >= {"_search", "_count"}  # the proxy did see the reads


@pytest.mark.parametrize("engine", OTHER_ENGINES, indirect=True)
def test_only_reads_reach_the_cluster(seeded_engine, reference, run_backfill, s3_server, s3_bucket, monkeypatch):
    _only_reads(seeded_engine.url, s3_bucket, run_backfill, s3_server, monkeypatch)


def test_only_reads_reach_the_reference_elasticsearch(es_cluster, reference, run_backfill, s3_server, s3_bucket,
                                                      monkeypatch):  # fmt: skip
    _only_reads(es_cluster.url, s3_bucket, run_backfill, s3_server, monkeypatch)


def test_the_read_only_allowlist_refuses_writes_and_admin_calls():
    from types import SimpleNamespace as Request

    writes = [("PUT", "/m/_doc/1"), ("POST", "/_bulk"), ("DELETE", "/m"), ("POST", "/m/_update_by_query"),
              ("POST", "/m/_delete_by_query"), ("PUT", "/m/_settings"), ("POST", "/_cluster/reroute"),
              ("POST", "/m/_search/template"), ("DELETE", "/m/_doc/1"), ("POST", "/m/_refresh")]  # fmt: skip
    reads = [("GET", "/"), ("POST", "/m/_search"), ("POST", "/_search"), ("POST", "/m/_count"), ("POST", "/m/_pit"),
             ("DELETE", "/_pit"), ("POST", "/m/_search/point_in_time"), ("DELETE", "/_search/point_in_time"),
             ("POST", "/_search/scroll"), ("DELETE", "/_search/scroll"), ("GET", "/m/_mapping/field/a,b"),
             ("GET", "/m/_mapping")]  # fmt: skip
    requests = [Request(method=m, path=p) for m, p in writes + reads]
    assert not_read_only(requests) == [f"{m} {p}" for m, p in writes]
