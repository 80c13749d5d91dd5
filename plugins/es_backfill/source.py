"""Reading from Elasticsearch gently: counted requests, backoff, points in time, search_after.

Every request goes through :class:`EsReader`, which counts it (so load is a figure we
can report) and retries transient failures — 429 rejections, 502/503/504, timeouts and
dropped connections — with bounded exponential backoff and jitter. :class:`PointInTime`
pages through an index with ``search_after`` (never from/size), reopens a point in time
that expired or vanished and resumes from sort values valid in any point in time, and
always closes it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from elasticsearch import ApiError, NotFoundError
from elasticsearch import ConnectionError as EsConnectionError
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

log = logging.getLogger(__name__)

T = TypeVar("T")
TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})
MAX_PIT_REOPENS = 5


class SourceError(RuntimeError):
    """Elasticsearch could not be read, even after retries."""


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: overload (429), gateway errors, timeouts and dropped connections."""
    if isinstance(exc, EsConnectionError):  # includes ConnectionTimeout
        return True
    return isinstance(exc, ApiError) and exc.meta.status in TRANSIENT_STATUSES


def is_lost_pit(exc: BaseException) -> bool:
    """The point in time expired or was closed: a 404 naming the search context or PIT."""
    if not isinstance(exc, NotFoundError):
        return False
    text = str(exc).lower()
    return "search_context_missing" in text or "no search context" in text or "point in time" in text


class EsReader:
    """An Elasticsearch client wrapper that counts and retries every request."""

    def __init__(self, client: Any, *, max_retries: int = 6, backoff_s: float = 0.5, max_backoff_s: float = 30.0):
        self.client = client
        self.requests: Counter[str] = Counter()
        self._max_attempts = max_retries + 1
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s

    def __enter__(self) -> EsReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.client.close()

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    def call(self, name: str, fn: Callable[..., T], **kwargs: Any) -> T:
        """``fn(**kwargs)``, counted as ``name``, retried while it fails transiently."""
        retrying = Retrying(
            stop=stop_after_attempt(self._max_attempts),
            wait=wait_random_exponential(multiplier=self._backoff_s, max=self._max_backoff_s),
            retry=retry_if_exception(is_transient),
            reraise=True,
            before_sleep=lambda state: log.warning(
                "Elasticsearch %s failed (%s), attempt %s of %s; backing off",
                name,
                state.outcome.exception() if state.outcome else "?",
                state.attempt_number,
                self._max_attempts,
            ),
        )
        try:
            for attempt in retrying:
                with attempt:
                    self.requests[name] += 1
                    return fn(**kwargs)
        except Exception as exc:
            if is_transient(exc):
                raise SourceError(
                    f"Elasticsearch {name} still failing after {self._max_attempts} attempts: {exc}"
                ) from exc
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    def cluster_uuid(self) -> str:
        """The cluster's identity (``GET /``), which outlives node restarts and renames."""
        return str(self.call("info", self.client.info)["cluster_uuid"])

    def count(self, index: str, query: dict[str, Any]) -> int:
        response = self.call("count", self.client.count, index=index, query=query)
        _require_all_shards("count", response)
        return int(response["count"])

    def search(self, **body: Any) -> dict[str, Any]:
        # Partial results would silently drop documents: ask for an error instead, and check.
        response = self.call("search", self.client.search, allow_partial_search_results=False, **body).body
        _require_all_shards("search", response)
        return response


def _require_all_shards(name: str, response: Any) -> None:
    shards = response.get("_shards") or {}
    if shards.get("failed") or response.get("timed_out"):
        raise SourceError(f"Elasticsearch {name} answered from only part of the shards: {shards}")


class PointInTime:
    """A point in time over ``index``, used as a context manager that always closes it."""

    def __init__(self, reader: EsReader, index: str, keep_alive: str) -> None:
        self.reader = reader
        self.index = index
        self.keep_alive = keep_alive
        self.pit_id: str | None = None
        self.reopened = 0  # points in time reopened after a loss, in all
        self._losses = 0  # losses since hits were last returned

    def __enter__(self) -> PointInTime:
        self._open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _open(self) -> None:
        response = self.reader.call(
            "open_point_in_time", self.reader.client.open_point_in_time, index=self.index, keep_alive=self.keep_alive
        )
        self.pit_id = response["id"]

    def close(self) -> None:
        if self.pit_id is None:
            return
        pit_id, self.pit_id = self.pit_id, None
        try:
            self.reader.call("close_point_in_time", self.reader.client.close_point_in_time, id=pit_id)
        except (ApiError, EsConnectionError, SourceError) as err:
            # It expires on its own after keep_alive; failing the window over it would be worse.
            log.warning(
                "Could not close point in time on %s (it expires after %s): %s", self.index, self.keep_alive, err
            )

    def pages(
        self, query: dict[str, Any], sort: list[Any], size: int, source: Any = True, **extra: Any
    ) -> Iterator[list[dict[str, Any]]]:
        """Pages of hits in ``sort`` order, until the last short page; ``extra`` goes into every request.

        ``sort`` must end in ``_shard_doc``, a tiebreaker whose values belong to one point in time: a new
        point in time numbers documents differently (merges, relocations). So after a lost point in time,
        reading resumes at the first hit whose other sort values equal the last returned hit's, and skips as
        many of those as were already returned: nothing repeats and nothing is skipped when those values are
        unique (the messages' (timestamp, id) is), and a tie group is read in full again otherwise.
        """
        search_after: list[Any] | None = None
        last_key: list[Any] | None = None  # sort values of the last returned hit, tiebreaker aside
        tied = 0  # returned hits with exactly those values
        skip = 0  # hits with those values still to skip after a reopen
        while True:
            generation = self.reopened
            body = {"query": query, "sort": sort, "size": size, "_source": source, **extra}
            if search_after is not None:
                body["search_after"] = search_after
            raw = self._search(body)
            if self.reopened != generation:
                if last_key is not None:
                    search_after, skip = [*last_key, -1], tied  # before every _shard_doc of the tie group
                continue
            hits = raw
            while skip and hits and hits[0]["sort"][:-1] == last_key:
                hits, skip = hits[1:], skip - 1
            if hits:
                skip = 0  # the tie group ended in this page
                self._losses = 0  # progress: only losses with none in between count against the limit
                for hit in hits:
                    key = hit["sort"][:-1]
                    tied = tied + 1 if key == last_key else 1
                    last_key = key
                yield hits
            if raw:
                search_after = raw[-1]["sort"]
            if len(raw) < size:
                return

    def _search(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """One page in the point in time; after a loss, it is reopened (``reopened`` counts it) and nothing
        is returned, so the caller asks again from a key valid in the new one."""
        pit = {"id": self.pit_id, "keep_alive": self.keep_alive}
        try:
            response = self.reader.search(**body, pit=pit, track_total_hits=False)
        except NotFoundError as err:
            # Only losses without progress in between count: a long window may outlive many keep-alives.
            if not is_lost_pit(err) or self._losses >= MAX_PIT_REOPENS:
                raise
            self._losses += 1
            self.reopened += 1
            log.warning("Point in time on %s was lost (%s); reopening and resuming", self.index, err)
            self.pit_id = None
            self._open()
            return []
        self.pit_id = response.get("pit_id", self.pit_id)
        return response["hits"]["hits"]
