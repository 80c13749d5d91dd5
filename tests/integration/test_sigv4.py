"""AWS SigV4 proven, not assumed: a real OpenSearch node behind a proxy that checks every request's signature
as Amazon OpenSearch Service would (recomputed with botocore for known keys; 403 for a missing, wrong or
stale signature or an expired key), read through an ``elasticsearch`` connection whose extra says
``"auth": "aws_sigv4"`` and names an Airflow AWS connection."""

from __future__ import annotations

import json

import pytest

from es_backfill.cli import main as cli
from es_backfill.config import defaults_path, from_params, load_defaults
from es_backfill.extract import run_window
from es_backfill.hooks import SearchReaderHook
from es_backfill.sink import ObjectStore
from es_backfill.windows import Window
from include.dev.datagen import DatasetSpec, load
from include.dev.servers.faultproxy import FaultProxy
from include.dev.servers.sigv4 import (
    KeyRing,
    SigV4Verifier,
    airflow_connection_json,
    credential_process_command,
    write_aws_config,
)
from tests.integration.support import decode_records, read_objects, s3_client, source_override, unique_indices, utc

OPENSEARCH = pytest.param(("opensearch", "2.19.6"), id="opensearch-2.19.6")
REGION = "eu-west-1"
STATIC_KEY, STATIC_SECRET = "AKIAEXAMPLESTATIC01", "static-secret-do-not-log"
pytestmark = pytest.mark.parametrize("engine", [OPENSEARCH], indirect=True)


@pytest.fixture(scope="module")
def names(engine):
    from opensearchpy import OpenSearch

    indices = unique_indices()
    with OpenSearch(engine.url, timeout=60) as client:
        load(client, DatasetSpec(messages=300, start=utc(2024, 3, 1), end=utc(2024, 3, 3), indices=indices))
    return indices


@pytest.fixture
def signing_proxy(engine, tmp_path):
    ring = KeyRing(tmp_path / "ring.json")
    ring.add(STATIC_KEY, STATIC_SECRET)
    verifier = SigV4Verifier(ring, region=REGION, service="es")
    with FaultProxy(engine.url, gate=verifier) as proxy:
        yield proxy, verifier, ring


def _connect(monkeypatch, conn_id: str, proxy_url: str, aws_conn_id: str | None) -> None:
    host, port = proxy_url.removeprefix("http://").split(":")
    extra = {"auth": "aws_sigv4", "aws_conn_id": aws_conn_id, "region": REGION} if aws_conn_id else {}
    conn = {"conn_type": "elasticsearch", "host": host, "port": int(port), "schema": "http", "extra": extra}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


def _static_aws(monkeypatch, conn_id: str, secret: str) -> None:
    conn = {"conn_type": "aws", "login": STATIC_KEY, "password": secret, "extra": {"region_name": REGION}}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


def _conf(names, bucket: str, conn_id: str) -> dict:
    return {"start": "2024-03-01", "end": "2024-03-03", "window": "1d", "s3_bucket": bucket, "s3_prefix": "sig",
            "page_size": 100, "source": {**source_override(names), "es_conn_id": conn_id}}  # fmt: skip


def test_a_signed_dag_run_passes_the_verifying_proxy_on_every_request(
    names, signing_proxy, run_backfill, s3_bucket, monkeypatch
):
    proxy, verifier, _ = signing_proxy
    _static_aws(monkeypatch, "signer_aws", STATIC_SECRET)
    _connect(monkeypatch, "opensearch_signed", proxy.url, "signer_aws")
    run = run_backfill(_conf(names, s3_bucket, "opensearch_signed"))
    assert run.state == "success"
    assert len(decode_records(read_objects(s3_bucket, "sig/"))) == 300
    assert [r for r in proxy.requests if r.refused] == []
    assert len(verifier.accepted_keys) == len(proxy.requests) > 10 and set(verifier.accepted_keys) == {STATIC_KEY}


@pytest.mark.parametrize(
    ("aws_conn", "reason"),
    [("wrong_secret", "signature mismatch for access key AKIAEXAMPLESTATIC01"), (None, "missing Authorization")],
)
def test_wrong_or_missing_credentials_fail_in_plan_naming_the_refusal_and_no_secret(
    names, signing_proxy, s3_server, s3_bucket, monkeypatch, capsys, aws_conn, reason
):
    proxy, _, _ = signing_proxy
    _static_aws(monkeypatch, "wrong_secret", "not-the-secret-either")
    _connect(monkeypatch, "opensearch_denied", proxy.url, aws_conn)
    conf = json.dumps(_conf(names, s3_bucket, "opensearch_denied"))
    assert cli(["plan", "--conf", conf, "--s3-endpoint-url", s3_server.endpoint_url]) == 2
    err = capsys.readouterr().err
    assert "connection opensearch_denied" in err and "refused GET /" in err and reason in err
    assert ("es:ESHttpGet" in err) == (aws_conn is not None)
    assert "not-the-secret-either" not in err and STATIC_SECRET not in err
    assert [r.path for r in proxy.requests] == ["/"]  # refused at the first request: nothing else was tried
    assert read_objects(s3_bucket, "sig/") == {}


def test_credentials_rotated_mid_window_keep_the_window_going(
    names, signing_proxy, s3_server, s3_bucket, monkeypatch, tmp_path
):
    proxy, verifier, ring = signing_proxy
    # A role session of 4 seconds: botocore refreshes it (a new key from the process) before every request.
    config = write_aws_config(
        tmp_path / "aws-config", profile="rotating", credential_process=credential_process_command(ring.path, 4)
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AIRFLOW_CONN_ROTATING_AWS", airflow_connection_json("rotating", REGION))
    _connect(monkeypatch, "opensearch_rotating", proxy.url, "rotating_aws")
    window_conf = {**_conf(names, s3_bucket, "opensearch_rotating"), "end": "2024-03-02"}
    config = from_params(window_conf, load_defaults(defaults_path()))
    with SearchReaderHook("opensearch_rotating").get_conn() as reader:
        result = run_window(
            config,
            Window(utc(2024, 3, 1), utc(2024, 3, 2)),
            reader,
            ObjectStore(s3_client(s3_server.endpoint_url), s3_bucket),
        )
    assert result.messages == result.es_count > 100
    assert [r for r in proxy.requests if r.refused] == []
    used = verifier.accepted_keys
    assert len(used) == len(proxy.requests) and len(set(used)) > 5 and STATIC_KEY not in used
