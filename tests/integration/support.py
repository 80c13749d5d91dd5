"""Plain helpers for the integration tests: index names, expected records, reading S3 back."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

from es_backfill.engines import ConnectionSettings, connect
from es_backfill.source import Reader
from include.dev.datagen import IndexNames

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"  # UI screenshots and their DOM
RELATED_SORT = {"history": ("@timestamp", "event_id"), "audit": ("@timestamp", "audit_id")}


def unique_indices() -> IndexNames:
    tag = uuid.uuid4().hex[:8]
    return IndexNames(messages=f"m_{tag}", history=f"h_{tag}", status=f"s_{tag}", audit=f"a_{tag}")


def source_override(names: IndexNames) -> dict[str, Any]:
    """The ``source`` param that points a run at ``names`` (other settings from the defaults file)."""
    return {
        "messages": {"index": names.messages, "id_field": "message_id", "timestamp_field": "@timestamp"},
        "related": [
            {"name": "history", "index": names.history, "join_field": "message_id",
             "sort": ["@timestamp", "event_id"], "cardinality": "many"},
            {"name": "status", "index": names.status, "join_field": "message_id",
             "sort": ["updated_at"], "cardinality": "one"},
            {"name": "audit", "index": names.audit, "join_field": "message_id",
             "sort": ["@timestamp", "audit_id"], "cardinality": "many"},
        ],
    }  # fmt: skip


def expected_records(docs: list[tuple[str, str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """What the backfill must write for these documents, built independently of the pipeline."""
    records: dict[str, dict[str, Any]] = {}
    related: dict[str, dict[str, list[dict[str, Any]]]] = {"history": {}, "status": {}, "audit": {}}
    for role, _, source in docs:
        if role == "messages":
            records[source["message_id"]] = {"message": source}
        else:
            related[role].setdefault(source["message_id"], []).append(source)
    for mid, record in records.items():
        for role, fields in RELATED_SORT.items():
            record[role] = sorted(related[role].get(mid, []), key=lambda d, f=fields: tuple(d[x] for x in f))
        record["status"] = (related["status"].get(mid) or [None])[0]
    return records


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def s3_client(endpoint_url: str):
    """A boto3 S3 client for the test server (or a proxy in front of it), configured as the DAG's is."""
    import boto3

    from es_backfill.sink import S3_CLIENT_CONFIG

    return boto3.client(
        "s3", endpoint_url=endpoint_url, aws_access_key_id="testing", aws_secret_access_key="testing",
        region_name="us-east-1", config=S3_CLIENT_CONFIG,
    )  # fmt: skip


def read_objects(bucket: str, prefix: str) -> dict[str, bytes]:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    client = S3Hook(aws_conn_id="aws_default").get_conn()
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


def decode_records(objects: dict[str, bytes]) -> list[dict[str, Any]]:
    """Every record in the data objects (manifests and plan excluded), in key order."""
    records = []
    for key in sorted(objects):
        data = objects[key]
        if key.rsplit("/", 1)[-1].startswith("_"):  # manifests and the saved plan
            continue
        if key.endswith(".jsonl.gz"):
            records += [orjson.loads(line) for line in gzip.decompress(data).splitlines()]
        elif key.endswith(".jsonl"):
            records += [orjson.loads(line) for line in data.splitlines()]
        else:
            records.append(orjson.loads(data))
    return records


def window_objects(bucket: str, prefix: str) -> dict[str, bytes]:
    """Objects under ``prefix`` keyed by their path relative to it, for comparing two runs: the table's location
    (in ``_athena.sql`` and the run manifest) is the one thing that names where a backfill lives, so it reads
    ``s3://BUCKET/PREFIX/`` here."""
    here = f"s3://{bucket}/{prefix}".encode()
    return {
        key[len(prefix) :]: data.replace(here, b"s3://BUCKET/PREFIX/") if key.endswith(TABLE_OBJECTS) else data
        for key, data in read_objects(bucket, prefix).items()
    }


TABLE_OBJECTS = ("/_athena.sql", "/_run_manifest.json")


def open_uploads(bucket: str) -> list[dict[str, Any]]:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id="aws_default").get_conn().list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def reader_at(url: str, **retry: Any) -> Reader:
    """The reader for the cluster at ``url``, chosen by ``GET /`` as the DAG's hook chooses it."""
    return connect(ConnectionSettings(url, request_timeout_s=60), **retry)


def asset_events(uri: str) -> list[dict[str, Any]]:
    """The asset events the metadata database holds for ``uri``, oldest first: the run that emitted each, its
    extra and the aliases it came through."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select
    from sqlalchemy.orm import selectinload

    with create_session() as session:
        query = (
            select(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.uri == uri)
            .options(selectinload(AssetEvent.source_aliases))
            .order_by(AssetEvent.id)
        )
        return [
            {"run_id": e.source_run_id, "extra": e.extra, "aliases": [a.name for a in e.source_aliases]}
            for e in session.scalars(query)
        ]


# Every request the DAG, a resume, a dry run and `verify` may send to the cluster: reads only, on any engine.
# (method, path) as the cluster sees them; an index name never starts with "_".
READ_ONLY_REQUESTS = (
    ("GET", r"/"),
    ("GET|POST", r"/[^/_][^/]*/_(search|count)"),  # searches (a scroll opens with ?scroll=), counts
    ("GET|POST", r"/_search"),  # a search in an Elasticsearch point in time names no index
    ("GET|POST|DELETE", r"/_search/scroll"),  # scroll pages, clear_scroll
    ("POST", r"/[^/_][^/]*/_pit"),  # Elasticsearch: open a point in time
    ("DELETE", r"/_pit"),
    ("POST", r"/[^/_][^/]*/_search/point_in_time"),  # OpenSearch: create a point in time
    ("DELETE", r"/_search/point_in_time"),
    ("GET", r"/[^/_][^/]*/_mapping/field/[^/]+"),  # field mappings
    ("GET", r"/[^/_][^/]*/_mapping"),  # an index's mappings, where a shaped field is in no field mapping
)


def not_read_only(requests: list[Any]) -> list[str]:
    """The requests (``method path``) that ``READ_ONLY_REQUESTS`` does not allow."""
    allowed = [(re.compile(rf"^(?:{method})$"), re.compile(rf"^{path}$")) for method, path in READ_ONLY_REQUESTS]
    return [
        f"{r.method} {r.path}"
        for r in requests
        if not any(method.match(r.method) and path.match(r.path) for method, path in allowed)
    ]


def ready_for_runs(airflow: Any, slots: int) -> None:
    """A real Airflow ready to run the DAG: the pool set the documented way (``python -m include.ops.airflow_admin
    pool --slots N --api-url URL``), the DAG parsed and unpaused."""
    with urllib.request.urlopen(f"{airflow.url}/auth/token", timeout=10) as response:  # noqa: S310 - local http
        token = json.load(response)["access_token"]
    subprocess.run(
        [sys.executable, "-m", "include.ops.airflow_admin", "pool", "--slots", str(slots), "--api-url", airflow.url],
        env={**os.environ, "AIRFLOW_API_TOKEN": token}, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    airflow.wait_for("the DAG to be parsed", lambda: airflow.has_dag("es_backfill"))
    airflow.api("PATCH", "/dags/es_backfill", {"is_paused": False})


def render_ui_page(airflow: Any, page: str, name: str) -> str:
    """Headless Chromium renders ``page`` of the UI: its DOM and a screenshot go to ``artifacts/{name}.*``."""
    ARTIFACTS.mkdir(exist_ok=True)
    url = f"{airflow.url}/auth/token/login?next={quote(page)}"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--window-size=1600,1000", "--virtual-time-budget=15000"]  # fmt: skip
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(
            ["chromium", *flags, f"--user-data-dir={profile}", "--dump-dom", url],
            capture_output=True, text=True, timeout=120, check=True,
        ).stdout  # fmt: skip
        subprocess.run(
            ["chromium", *flags, f"--user-data-dir={profile}", f"--screenshot={ARTIFACTS / f'{name}.png'}", url],
            capture_output=True, timeout=120, check=True,
        )  # fmt: skip
    (ARTIFACTS / f"{name}.html").write_text(dom)
    return dom
