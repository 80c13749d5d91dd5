"""The reader for whatever engine a connection points at: settings, ``GET /``, the choice.

:func:`connect` asks ``GET /`` once (through the OpenSearch client, which sends plain JSON and
checks no product header, so every engine answers), names the engine, version and read
strategy, and returns the :class:`~es_backfill.source.Reader` for it:

==========================  =====================  ===============================
engine (``GET /``)          client                 read strategy
==========================  =====================  ===============================
Elasticsearch 7.17-9.x      elasticsearch-py       ``point_in_time+_shard_doc``
Elasticsearch 7.10-7.16     opensearch-py          ``scroll``
OpenSearch ≥ 3.3            opensearch-py          ``point_in_time+_shard_doc``
OpenSearch 2.4-3.2          opensearch-py          ``point_in_time+unique_sort``
OpenSearch 1.0-2.3          opensearch-py          ``scroll``
==========================  =====================  ===============================

Anything else is refused with :class:`UnsupportedEngine`, which says what to do.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from es_backfill.source import SCROLL, SHARD_DOC, UNIQUE_SORT, Cluster, Reader, SourceError

log = logging.getLogger(__name__)

ELASTICSEARCH_CLIENT_FROM = (7, 17)  # elasticsearch-py 9 needs the product header (7.14+) and REST compatibility


class UnsupportedEngine(SourceError):
    """``GET /`` names an engine or version this reader cannot read safely."""


@dataclass(frozen=True)
class AwsAuth:
    """AWS SigV4 signing: ``credentials`` is botocore's refreshing credentials object."""

    credentials: Any
    region: str
    service: str = "es"


@dataclass(frozen=True)
class ConnectionSettings:
    """How to reach a cluster; secrets stay out of ``repr`` (and so out of logs and errors)."""

    url: str
    request_timeout_s: float = 60.0
    basic_auth: tuple[str, str] | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)
    bearer_token: str | None = field(default=None, repr=False)
    aws: AwsAuth | None = field(default=None, repr=False)
    verify_certs: bool = True
    ca_certs: str | None = None
    client_cert: str | None = None
    client_key: str | None = None

    def client_options(self) -> dict[str, Any]:
        """What both clients take alike: the host, the timeout, no retries of their own, TLS."""
        return {
            "hosts": [self.url],
            # The reader retries with backoff; the client's own immediate retries would double the load.
            "max_retries": 0,
            "retry_on_timeout": False,
            "verify_certs": self.verify_certs,
            **{name: value for name in ("ca_certs", "client_cert", "client_key") if (value := getattr(self, name))},
        }

    @property
    def auth_kind(self) -> str:
        if self.aws is not None:
            return f"aws_sigv4 ({self.aws.service}, {self.aws.region})"
        if self.api_key:
            return "api_key"
        if self.bearer_token:
            return "bearer"
        return "basic" if self.basic_auth else "none"


def describe_cluster(root: dict[str, Any]) -> Cluster:
    """The cluster ``GET /`` answered ``root`` for, with its read strategy; UnsupportedEngine otherwise."""
    version = root.get("version") or {}
    number = str(version.get("number", ""))
    match = re.match(r"(\d+)\.(\d+)", number)
    if match is None:
        raise UnsupportedEngine(f"GET / names no version the reader understands: {version!r}")
    major_minor = (int(match[1]), int(match[2]))
    uuid = str(root.get("cluster_uuid", ""))
    if version.get("distribution") == "opensearch":
        if major_minor >= (4, 0):
            raise UnsupportedEngine(f"OpenSearch {number} is newer than the versions tested (1.x to 3.x)")
        strategy = SHARD_DOC if major_minor >= (3, 3) else UNIQUE_SORT if major_minor >= (2, 4) else SCROLL
        return Cluster("opensearch", number, uuid, strategy)
    if version.get("distribution") or root.get("tagline") != "You Know, for Search":
        raise UnsupportedEngine(
            f"GET / does not describe Elasticsearch or OpenSearch (version {version!r}); "
            "point the connection at the cluster's HTTP endpoint"
        )
    if major_minor < (7, 10):
        raise UnsupportedEngine(
            f"Elasticsearch {number} is older than 7.10, the oldest version supported; upgrade the cluster "
            "or export with a tool made for it"
        )
    if major_minor >= (10, 0):
        raise UnsupportedEngine(f"Elasticsearch {number} is newer than the versions tested (7.10 to 9.x)")
    return Cluster("elasticsearch", number, uuid, SHARD_DOC if major_minor >= ELASTICSEARCH_CLIENT_FROM else SCROLL)


def connect(settings: ConnectionSettings, **limits: Any) -> Reader:
    """The reader for the cluster at ``settings.url``, after one ``GET /``; the caller closes it. ``limits``
    are the :class:`~es_backfill.source.Reader`'s (``max_retries``, ``backoff_s``, ``max_in_flight``)."""
    from es_backfill.engines.opensearch import OpenSearchReader

    reader: Reader = OpenSearchReader(settings, **limits)
    try:
        cluster = describe_cluster(reader.root())
        if cluster.product == "elasticsearch" and cluster.strategy == SHARD_DOC:
            if settings.aws is not None:
                raise UnsupportedEngine(
                    f"AWS SigV4 signing is for Amazon OpenSearch Service domains, but {settings.url} runs "
                    f"Elasticsearch {cluster.version}: use basic auth, an API key or a bearer token"
                )
            from es_backfill.engines.elasticsearch import ElasticsearchReader

            probe, reader = reader, ElasticsearchReader(settings, cluster.version, **limits)
            reader.requests.update(probe.requests)
            probe.close()
    except BaseException:
        reader.close()
        raise
    reader.cluster = cluster
    log.info(
        "Cluster at %s: %s (uuid %s), auth %s, read strategy %s",
        settings.url, cluster.label, cluster.cluster_uuid, settings.auth_kind, cluster.strategy,
    )  # fmt: skip
    return reader
