"""Elasticsearch 7.17-9.x through elasticsearch-py (the 9.x client MWAA ships).

The 9.x client sends ``compatible-with=9`` media types on every request, which older servers
refuse; :class:`CompatibleClient` asks for the server's own major version instead, found by
``GET /``. Points in time: ``_pit``, with the ``_shard_doc`` tiebreaker.
"""

from __future__ import annotations

import re
from typing import Any

from elasticsearch import ApiError, Elasticsearch, JsonSerializer
from elasticsearch import ConnectionError as EsConnectionError

from es_backfill import exactjson
from es_backfill.engines import ConnectionSettings
from es_backfill.source import Reader, error_reason


class ExactSerializer(JsonSerializer):
    """Bodies through :mod:`es_backfill.exactjson`: documents come back with every digit and code point."""

    def json_loads(self, data: bytes) -> Any:
        return exactjson.loads(data)

    def json_dumps(self, data: Any) -> bytes:
        return exactjson.dumps(data)


class CompatibleClient(Elasticsearch):
    """A 9.x client whose requests ask for the REST API of Elasticsearch ``compatible_with``.

    The 9.x client rewrites ``application/json`` to ``...; compatible-with=9`` on every request and
    lets no client-wide header override it; media types already in the vendor form are left alone."""

    compatible_with = 9  # a class attribute: client.options() builds new clients of the same class

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


def client_class(major: int) -> type[Elasticsearch]:
    """The client for an Elasticsearch server of version ``major``."""
    if major >= 9:
        return Elasticsearch
    return type(f"Elasticsearch{major}Client", (CompatibleClient,), {"compatible_with": major})


def elasticsearch_client(settings: ConnectionSettings, version: str, pool_size: int = 1) -> Elasticsearch:
    kwargs: dict[str, Any] = {
        **settings.client_options(),
        "request_timeout": settings.request_timeout_s,
        "serializer": ExactSerializer(),
        "connections_per_node": pool_size,  # one per request in flight, kept for reuse
    }
    if settings.api_key:
        kwargs["api_key"] = settings.api_key
    elif settings.bearer_token:
        kwargs["bearer_auth"] = settings.bearer_token
    elif settings.basic_auth:
        kwargs["basic_auth"] = settings.basic_auth
    return client_class(int(version.split(".")[0]))(**kwargs)


class ElasticsearchReader(Reader):
    def __init__(self, settings: ConnectionSettings, version: str, **limits: Any) -> None:
        super().__init__(**limits)
        self.client = elasticsearch_client(settings, version, self.max_in_flight)

    def close(self) -> None:
        self.client.close()

    def _error_status(self, exc: BaseException) -> tuple[int | None, str] | None:
        if isinstance(exc, EsConnectionError):  # includes ConnectionTimeout
            return None, str(exc)
        if isinstance(exc, ApiError):
            return exc.meta.status, error_reason(exc.info, exc.message)
        return None

    def _root(self) -> dict[str, Any]:
        return self.client.info().body

    def _count(self, index: str, query: dict[str, Any]) -> dict[str, Any]:
        return self.client.count(index=index, query=query).body

    def _search(self, index: str | None, body: dict[str, Any], scroll: str | None) -> dict[str, Any]:
        return self.client.search(index=index, body=body, scroll=scroll, allow_partial_search_results=False).body

    def _field_mapping(self, index: str, fields: list[str]) -> dict[str, Any]:
        return self.client.indices.get_field_mapping(index=index, fields=fields, allow_no_indices=False).body

    def _mappings(self, index: str) -> dict[str, Any]:
        return self.client.indices.get_mapping(index=index, allow_no_indices=False).body

    def _open_pit(self, index: str, keep_alive: str) -> str:
        return self.client.open_point_in_time(index=index, keep_alive=keep_alive)["id"]

    def _close_pit(self, pit_id: str) -> None:
        self.client.close_point_in_time(id=pit_id)

    def _scroll(self, scroll_id: str, keep_alive: str) -> dict[str, Any]:
        return self.client.scroll(scroll_id=scroll_id, scroll=keep_alive).body

    def _clear_scroll(self, scroll_id: str) -> None:
        self.client.clear_scroll(scroll_id=scroll_id)
