"""Airflow connections to clients: the only module that needs Airflow's hook classes.

Elasticsearch comes from a connection (default ``elasticsearch_default``): host, port,
schema (``http``/``https``), login/password, and in the extra ``api_key``,
``verify_certs``, ``ca_certs`` and ``compatible_with`` (set ``8`` for an
Elasticsearch 8 server: the 9.x client otherwise sends ``compatible-with=9``).
S3 comes from the Amazon provider's ``S3Hook`` with explicit timeouts and
standard-mode retries (5xx and SlowDown back off with jitter).
"""

from __future__ import annotations

import logging
from typing import Any

from botocore.config import Config
from elasticsearch import Elasticsearch

from es_backfill.config import SourceConfig
from es_backfill.sink import ObjectStore
from es_backfill.source import EsReader

log = logging.getLogger(__name__)

S3_CLIENT_CONFIG = Config(
    connect_timeout=10,
    read_timeout=120,
    retries={"max_attempts": 8, "mode": "standard"},
    max_pool_connections=16,
)


def elasticsearch_client(conn_id: str, request_timeout_s: float) -> Elasticsearch:
    """A client for the cluster of Airflow connection ``conn_id``; credentials never reach the logs."""
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    extra = conn.extra_dejson
    scheme = conn.schema or extra.get("scheme") or "http"
    port = conn.port or 9200
    kwargs: dict[str, Any] = {
        "hosts": [f"{scheme}://{conn.host}:{port}"],
        "request_timeout": request_timeout_s,
        # EsReader retries with backoff; the client's own immediate retries would double the load.
        "max_retries": 0,
        "retry_on_timeout": False,
    }
    if extra.get("api_key"):
        kwargs["api_key"] = extra["api_key"]
    elif conn.login:
        kwargs["basic_auth"] = (conn.login, conn.password or "")
    if "verify_certs" in extra:
        kwargs["verify_certs"] = bool(extra["verify_certs"])
    if extra.get("ca_certs"):
        kwargs["ca_certs"] = extra["ca_certs"]
    if extra.get("compatible_with"):
        media = f"application/vnd.elasticsearch+json; compatible-with={int(extra['compatible_with'])}"
        kwargs["headers"] = {"accept": media, "content-type": media}
    log.info("Elasticsearch connection %s: %s://%s:%s", conn_id, scheme, conn.host, port)
    return Elasticsearch(**kwargs)


def es_reader(source: SourceConfig) -> EsReader:
    return EsReader(elasticsearch_client(source.es_conn_id, source.request_timeout_s), max_retries=source.max_retries)


def object_store(aws_conn_id: str, bucket: str) -> ObjectStore:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return ObjectStore(S3Hook(aws_conn_id=aws_conn_id, config=S3_CLIENT_CONFIG).get_conn(), bucket)
