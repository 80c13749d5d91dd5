"""OpenSearch 1.x-3.x and Elasticsearch 7.10-7.16 (the OSS line Amazon runs) through opensearch-py.

opensearch-py (MWAA's pin) speaks plain JSON and checks no product header, so it reads both
OpenSearch and the Elasticsearch versions elasticsearch-py 9 refuses; it also signs requests
with AWS SigV4 for Amazon OpenSearch Service. Points in time:
``POST /<index>/_search/point_in_time`` and ``DELETE /_search/point_in_time`` (OpenSearch ≥ 2.4).
"""

from __future__ import annotations

from typing import Any

from opensearchpy import OpenSearch, TransportError, Urllib3AWSV4SignerAuth
from opensearchpy.serializer import JSONSerializer

from es_backfill import exactjson
from es_backfill.engines import ConnectionSettings
from es_backfill.source import Reader, error_reason


class ExactSerializer(JSONSerializer):
    """Bodies through :mod:`es_backfill.exactjson`: documents come back with every digit and code point."""

    def loads(self, s: str | bytes) -> Any:
        return exactjson.loads(s)

    def dumps(self, data: Any) -> str:
        if isinstance(data, str | bytes):  # already serialised, as the base class lets through
            return data  # type: ignore[return-value]
        return exactjson.dumps(data).decode()


def opensearch_client(settings: ConnectionSettings, pool_size: int = 1) -> OpenSearch:
    kwargs: dict[str, Any] = {
        **settings.client_options(),
        "serializer": ExactSerializer(),
        # One connection per request a task may have in flight, each kept for reuse (urllib3's default of 1
        # discarded a connection on most pages).
        "pool_maxsize": pool_size,
        "timeout": settings.request_timeout_s,
        "ssl_show_warn": settings.verify_certs,
    }
    if settings.aws is not None:
        # The credentials object refreshes itself: each request is signed with the current keys.
        kwargs["http_auth"] = Urllib3AWSV4SignerAuth(
            settings.aws.credentials, settings.aws.region, settings.aws.service
        )
    elif settings.api_key:
        kwargs["headers"] = {"authorization": f"ApiKey {settings.api_key}"}
    elif settings.bearer_token:
        kwargs["headers"] = {"authorization": f"Bearer {settings.bearer_token}"}
    elif settings.basic_auth:
        kwargs["http_auth"] = settings.basic_auth
    return OpenSearch(**kwargs)


class OpenSearchReader(Reader):
    def __init__(self, settings: ConnectionSettings, **limits: Any) -> None:
        super().__init__(**limits)
        self.client = opensearch_client(settings, self.max_in_flight)

    def close(self) -> None:
        self.client.close()

    def _error_status(self, exc: BaseException) -> tuple[int | None, str] | None:
        if not isinstance(exc, TransportError):
            return None
        status = exc.status_code
        return (status if isinstance(status, int) else None), error_reason(exc.info, str(exc.error))

    def _root(self) -> dict[str, Any]:
        return self.client.info()

    def _count(self, index: str, query: dict[str, Any]) -> dict[str, Any]:
        return self.client.count(index=index, body={"query": query})

    def _search(self, index: str | None, body: dict[str, Any], scroll: str | None) -> dict[str, Any]:
        params = {"allow_partial_search_results": "false"}
        if scroll:
            params["scroll"] = scroll
        return self.client.search(index=index, body=body, params=params)

    def _field_mapping(self, index: str, fields: list[str]) -> dict[str, Any]:
        return self.client.indices.get_field_mapping(
            index=index, fields=",".join(fields), params={"allow_no_indices": "false"}
        )

    def _mappings(self, index: str) -> dict[str, Any]:
        return self.client.indices.get_mapping(index=index, params={"allow_no_indices": "false"})

    def _open_pit(self, index: str, keep_alive: str) -> str:
        return self.client.create_pit(index=index, params={"keep_alive": keep_alive})["pit_id"]

    def _close_pit(self, pit_id: str) -> None:
        self.client.delete_pit(body={"pit_id": [pit_id]})

    def _scroll(self, scroll_id: str, keep_alive: str) -> dict[str, Any]:
        return self.client.scroll(body={"scroll_id": scroll_id, "scroll": keep_alive})

    def _clear_scroll(self, scroll_id: str) -> None:
        self.client.clear_scroll(body={"scroll_id": [scroll_id]})
