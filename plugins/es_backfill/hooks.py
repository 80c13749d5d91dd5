"""Airflow connections to clients: the only module that needs Airflow's hook classes.

Elasticsearch comes from a connection (default ``elasticsearch_default``): host, port,
schema (``http``/``https``), login/password, and in the extra ``api_key``,
``verify_certs``, ``ca_certs`` and ``compatible_with`` (set ``8`` for an
Elasticsearch 8 server, which rejects the ``compatible-with=9`` media type that the
9.x client sends on every request).
S3 comes from the Amazon provider's ``S3Hook`` with explicit timeouts and
standard-mode retries (5xx and SlowDown back off with jitter).
"""

from __future__ import annotations

import logging
import re
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


class Elasticsearch8Client(Elasticsearch):
    """A 9.x client whose requests ask for the Elasticsearch 8 REST API (``compatible_with: 8``).

    The 9.x client rewrites ``application/json`` to ``...; compatible-with=9`` on every request and
    lets no client-wide header override it; media types already in the vendor form are left alone."""

    compatible_with = 8  # a class attribute: client.options() builds new clients of this class

    def perform_request(self, method: str, path: str, *, headers: Any = None, **kwargs: Any) -> Any:
        if headers:
            headers = {key: self._compat(key, value) for key, value in headers.items()}
        return super().perform_request(method, path, headers=headers, **kwargs)

    def _compat(self, key: str, value: str) -> str:
        if key.lower() not in {"accept", "content-type"}:
            return value
        return re.sub(
            r"application/(json|x-ndjson)",
            rf"application/vnd.elasticsearch+\1; compatible-with={self.compatible_with}",
            value,
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
    log.info("Elasticsearch connection %s: %s://%s:%s", conn_id, scheme, conn.host, port)
    compatible_with = extra.get("compatible_with")
    if compatible_with in (None, "", 9, "9"):
        return Elasticsearch(**kwargs)
    if str(compatible_with) != "8":
        raise ValueError(f"connection {conn_id}: compatible_with must be 8 (or absent for Elasticsearch 9)")
    return Elasticsearch8Client(**kwargs)


def es_reader(source: SourceConfig) -> EsReader:
    return EsReader(elasticsearch_client(source.es_conn_id, source.request_timeout_s), max_retries=source.max_retries)


def object_store(aws_conn_id: str, bucket: str) -> ObjectStore:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return ObjectStore(S3Hook(aws_conn_id=aws_conn_id, config=S3_CLIENT_CONFIG).get_conn(), bucket)
