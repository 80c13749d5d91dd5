"""Reading from a search engine gently, behind one small interface.

Everything above this module asks a :class:`Reader` — never an engine's name — for the few
operations a backfill needs: the cluster's identity, counts, single searches, field mappings
and a consistent :class:`Snapshot` of an index to page through. One implementation per engine
family lives in :mod:`es_backfill.engines`; they only translate these operations into their
client's calls and their client's errors into the exceptions below.

Every request goes through :meth:`Reader.call`, which counts it (so load is a figure we can
report), keeps at most ``max_in_flight`` requests of the reader in flight at once, whatever
threads ask, and retries transient failures — 429 rejections, 502/503/504, timeouts and dropped
connections — with bounded exponential backoff and jitter. Snapshots come in three read
strategies, chosen from the engine and version ``GET /`` reports:

* ``point_in_time+_shard_doc`` (Elasticsearch ≥ 7.17, OpenSearch ≥ 3.3): ``search_after`` in a
  point in time whose sort ends in the ``_shard_doc`` tiebreaker;
* ``point_in_time+unique_sort`` (OpenSearch 2.4-3.2, which have points in time but no
  ``_shard_doc``): ``search_after`` on the caller's sort alone; each request asks for one hit
  more than the page, so a page never ends inside a group of hits with equal sort values (the
  group moves to the next page whole), which proves that nothing is skipped;
* ``scroll`` (Elasticsearch 7.10-7.16, OpenSearch 1.0-2.3, which have no usable point in time):
  a sorted scroll, always cleared. A lost scroll cannot be resumed: reading fails with
  :class:`SnapshotLost` and the window is read again from its start (its task's retry).

A lost point in time is reopened and reading resumes from sort values valid in any point in
time, so nothing repeats and nothing is skipped; points in time are always closed.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, TypeVar

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

log = logging.getLogger(__name__)

T = TypeVar("T")
TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})
MAX_PIT_REOPENS = 5
# A request may return at most this many hits (index.max_result_window's default); a group of hits with
# equal sort values must fit in one page when there is no tiebreaker.
MAX_PAGE = 10_000

SHARD_DOC = "point_in_time+_shard_doc"
UNIQUE_SORT = "point_in_time+unique_sort"
SCROLL = "scroll"
Hit = dict[str, Any]


class SourceError(RuntimeError):
    """The search engine could not be read, even after retries."""


class RequestRejected(SourceError):
    """The search engine answered a request with an error that retrying cannot fix."""

    def __init__(self, name: str, status: int, reason: str) -> None:
        super().__init__(f"{name} was refused with HTTP {status}: {reason}")
        self.status = status
        self.reason = reason


class BadRequest(RequestRejected):
    """HTTP 400: the engine rejected the request (a query, a setting, an API it does not have)."""


class AccessDenied(RequestRejected):
    """HTTP 401/403: the credentials are wrong, or lack a privilege the request needs."""


class NotFound(RequestRejected):
    """HTTP 404: an index (or another resource) does not exist."""


class TlsRefused(SourceError):
    """TLS with the cluster failed in a way no retry changes: a certificate the client does not trust (another
    CA, an expired or self-signed one, another host name) or HTTPS to a port that speaks plain HTTP."""


# What the TLS libraries say when the failure is the certificate or the protocol, not the network.
_TLS_REFUSALS = ("certificate verify failed", "wrong version number", "hostname mismatch", "doesn't match")


def tls_refusal(reason: str) -> bool:
    """Whether ``reason`` (of a request that got no answer) is a TLS failure no retry changes."""
    text = reason.lower()
    return any(marker in text for marker in _TLS_REFUSALS)


class SnapshotLost(RequestRejected):
    """The point in time or scroll expired or was released (a 404 naming the search context)."""


@dataclass(frozen=True)
class Cluster:
    """What ``GET /`` says about the cluster, and the read strategy chosen for it."""

    product: str  # "elasticsearch" or "opensearch"
    version: str
    cluster_uuid: str
    strategy: str

    @property
    def label(self) -> str:
        return f"{'OpenSearch' if self.product == 'opensearch' else 'Elasticsearch'} {self.version}"

    def to_dict(self) -> dict[str, str]:
        return {"product": self.product, "version": self.version, "strategy": self.strategy}


def rejection(name: str, status: int, reason: str) -> RequestRejected:
    """The exception for an error answer with ``status``, ``reason`` being the engine's error text."""
    if status == 400:
        return BadRequest(name, status, reason)
    if status in (401, 403):
        return AccessDenied(name, status, reason)
    if status == 404:
        text = reason.lower()
        if "search_context_missing" in text or "no search context" in text or "point in time" in text:
            return SnapshotLost(name, status, reason)
        return NotFound(name, status, reason)
    return RequestRejected(name, status, reason)


def error_reason(body: Any, fallback: str) -> str:
    """The root causes an engine's error ``body`` names, and the deepest ``caused_by`` where it says more (an AWS
    gateway's ``message``), else ``fallback``."""
    info = body if isinstance(body, dict) else {}
    error = info.get("error")
    if isinstance(error, dict):
        causes = error.get("root_cause") or [error]
        text = "; ".join(f"{c.get('type')}: {c.get('reason')}" for c in causes if isinstance(c, dict))
        deepest = error
        while isinstance(deepest.get("caused_by"), dict):  # "Failed to parse" says less than what caused it
            deepest = deepest["caused_by"]
        if deepest is not error and deepest.get("reason") and str(deepest["reason"]) not in text:
            text += f" (caused by {deepest.get('type')}: {deepest['reason']})"
        if text:
            return text
    if info.get("message"):
        return str(info["message"])
    return str(error or fallback)


class Reader(ABC):
    """A client of one cluster that counts and retries every request; one subclass per engine family.

    Subclasses map the primitives (``_root`` … ``_clear_scroll``) onto their client and describe its
    errors (:meth:`_error_status`); the operations above them are the same for every engine.
    """

    def __init__(
        self, *, max_retries: int = 6, backoff_s: float = 0.5, max_backoff_s: float = 30.0, max_in_flight: int = 1
    ) -> None:
        self.requests: Counter[str] = Counter()
        self.max_in_flight = max_in_flight
        self.peak_in_flight = 0  # the most requests seen in flight at once
        self._in_flight = 0
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._lock = threading.Lock()
        self._cluster: Cluster | None = None
        self._max_attempts = max_retries + 1
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    @property
    def cluster(self) -> Cluster:
        if self._cluster is None:
            raise SourceError("the reader was made without reading GET / (use es_backfill.engines.connect)")
        return self._cluster

    @cluster.setter
    def cluster(self, cluster: Cluster) -> None:
        self._cluster = cluster

    # -- what subclasses provide ------------------------------------------------------------------------------

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def _error_status(self, exc: BaseException) -> tuple[int | None, str] | None:
        """``(status, reason)`` if ``exc`` is the client's error for a request (status ``None`` when no
        answer came: a timeout or a dropped connection); ``None`` for any other exception."""

    @abstractmethod
    def _root(self) -> dict[str, Any]: ...

    @abstractmethod
    def _count(self, index: str, query: dict[str, Any]) -> dict[str, Any]: ...

    @abstractmethod
    def _search(self, index: str | None, body: dict[str, Any], scroll: str | None) -> dict[str, Any]:
        """One search that refuses partial results; ``index`` is ``None`` inside a point in time."""

    @abstractmethod
    def _field_mapping(self, index: str, fields: list[str]) -> dict[str, Any]: ...

    @abstractmethod
    def _mappings(self, index: str) -> dict[str, Any]: ...

    @abstractmethod
    def _open_pit(self, index: str, keep_alive: str) -> str: ...

    @abstractmethod
    def _close_pit(self, pit_id: str) -> None: ...

    @abstractmethod
    def _scroll(self, scroll_id: str, keep_alive: str) -> dict[str, Any]: ...

    @abstractmethod
    def _clear_scroll(self, scroll_id: str) -> None: ...

    # -- the operations -----------------------------------------------------------------------------------------

    def _is_transient(self, exc: BaseException) -> bool:
        described = self._error_status(exc)
        if described is None:
            return False
        status, reason = described
        return (status is None and not tls_refusal(reason)) or status in TRANSIENT_STATUSES

    def call(self, name: str, fn: Callable[..., T], **kwargs: Any) -> T:
        """``fn(**kwargs)``, counted as ``name``, retried while it fails transiently; an error answer
        becomes a :class:`RequestRejected` (or :class:`SourceError` once retries are spent)."""
        retrying = Retrying(
            stop=stop_after_attempt(self._max_attempts),
            wait=wait_random_exponential(multiplier=self._backoff_s, max=self._max_backoff_s),
            retry=retry_if_exception(self._is_transient),
            reraise=True,
            before_sleep=lambda state: log.warning(
                "%s failed (%s), attempt %s of %s; backing off",
                name,
                state.outcome.exception() if state.outcome else "?",
                state.attempt_number,
                self._max_attempts,
            ),
        )
        try:
            for attempt in retrying:
                with attempt, self._slot(name):  # the slot is given back before any backoff
                    return fn(**kwargs)
        except Exception as exc:
            described = self._error_status(exc)
            if described is None:
                raise
            status, reason = described
            if status is None and tls_refusal(reason):
                raise TlsRefused(f"{name} failed in TLS: {reason}") from exc
            if status is None or status in TRANSIENT_STATUSES:
                raise SourceError(f"{name} still failing after {self._max_attempts} attempts: {reason}") from exc
            raise rejection(name, status, reason) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    @contextmanager
    def _slot(self, name: str) -> Iterator[None]:
        with self._slots:
            with self._lock:
                self.requests[name] += 1
                self._in_flight += 1
                self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
            try:
                yield
            finally:
                with self._lock:
                    self._in_flight -= 1

    def root(self) -> dict[str, Any]:
        """``GET /``: the cluster's name, identity and version."""
        return self.call("info", self._root)

    def count(self, index: str, query: dict[str, Any]) -> int:
        response = self.call("count", self._count, index=index, query=query)
        _require_all_shards("count", response)
        return int(response["count"])

    def search(self, index: str | None, body: dict[str, Any], *, scroll: str | None = None) -> dict[str, Any]:
        # Partial results would silently drop documents: implementations ask for an error instead; check.
        response = self.call("search", self._search, index=index, body=body, scroll=scroll)
        _require_all_shards("search", response)
        return response

    def field_mappings(self, index: str, fields: list[str]) -> dict[str, dict[str, Any]]:
        """Which of ``fields`` ``index`` (a name or pattern, matching something) maps, each with its mapping
        (``{"type": ..., "fields": {multi-fields}}``); NotFound if the index matches nothing. Objects are not
        fields: only :meth:`mappings` shows them."""
        response = self.call("field_mappings", self._field_mapping, index=index, fields=sorted(set(fields)))
        return {
            name: next(iter(field.get("mapping", {}).values()), {})
            for body in response.values()
            for name, field in body.get("mappings", {}).items()
        }

    def mappings(self, index: str) -> list[dict[str, Any]]:
        """The whole mapping of each index ``index`` matches (objects included, with ``enabled`` and ``dynamic``)."""
        response = self.call("mappings", self._mappings, index=index)
        return [body.get("mappings", {}) for body in response.values()]

    def open_pit(self, index: str, keep_alive: str) -> str:
        return self.call("open_point_in_time", self._open_pit, index=index, keep_alive=keep_alive)

    def close_pit(self, pit_id: str) -> None:
        self.call("close_point_in_time", self._close_pit, pit_id=pit_id)

    def scroll(self, scroll_id: str, keep_alive: str) -> dict[str, Any]:
        response = self.call("scroll", self._scroll, scroll_id=scroll_id, keep_alive=keep_alive)
        _require_all_shards("scroll", response)
        return response

    def clear_scroll(self, scroll_id: str) -> None:
        self.call("clear_scroll", self._clear_scroll, scroll_id=scroll_id)

    def probe_snapshot(self, index: str, keep_alive: str = "1m") -> None:
        """Open a snapshot of ``index`` in the cluster's read strategy, search it and release it, reading no hit:
        each request a window makes of a snapshot, once, so a refused one (:class:`AccessDenied`) is found before
        any window runs. Unlike :meth:`Snapshot.close`, a refused release raises too."""
        query: dict[str, Any] = {"query": {"match_none": {}}, "size": 1}
        handle: str
        if self.cluster.strategy == SCROLL:
            handle = self.search(index, {**query, "sort": ["_doc"]}, scroll=keep_alive)["_scroll_id"]
            use, release = (lambda: self.scroll(handle, keep_alive)), self.clear_scroll
        else:
            handle = self.open_pit(index, keep_alive)
            use = lambda: self.search(None, {**query, "pit": {"id": handle, "keep_alive": keep_alive}})  # noqa: E731
            release = self.close_pit
        try:
            use()
        except SourceError:
            with suppress(SourceError):
                release(handle)
            raise
        release(handle)

    def snapshot(self, index: str, keep_alive: str) -> Snapshot:
        """A consistent view of ``index`` to page through, in the cluster's read strategy."""
        strategy = self.cluster.strategy
        if strategy == SCROLL:
            return ScrollSnapshot(self, index, keep_alive)
        return PointInTime(self, index, keep_alive, tiebreaker="_shard_doc" if strategy == SHARD_DOC else None)


def throttled(pages: Iterator[list[Hit]], per_second: float | None) -> Iterator[list[Hit]]:
    """``pages``, each asked for only once the hits already returned are due at ``per_second`` (``None``: no
    cap): by any moment ``t`` seconds after the start, at most ``per_second * t`` hits plus one page."""
    if per_second is None:
        yield from pages
        return
    started, returned = time.monotonic(), 0
    for page in pages:
        returned += len(page)
        yield page
        wait = returned / per_second - (time.monotonic() - started)
        if wait > 0:
            time.sleep(wait)


def _body(query: dict[str, Any], source: Any, docvalues: list[str] | None) -> dict[str, Any]:
    body = {"query": query, "_source": source}
    if docvalues:
        body["docvalue_fields"] = docvalues
    return body


def _require_all_shards(name: str, response: Any) -> None:
    shards = response.get("_shards") or {}
    if shards.get("failed") or response.get("timed_out"):
        raise SourceError(f"{name} answered from only part of the shards: {shards}")


class Snapshot(ABC):
    """A consistent view of one index, used as a context manager that always releases it."""

    def __init__(self, reader: Reader, index: str, keep_alive: str) -> None:
        self.reader = reader
        self.index = index
        self.keep_alive = keep_alive
        self.reopened = 0  # points in time reopened after a loss, in all
        self._collecting = threading.Lock()

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @abstractmethod
    def close(self) -> None:
        """Release what is still open."""

    @abstractmethod
    def pages(
        self, query: dict[str, Any], sort: list[Any], size: int, source: Any = True, docvalues: list[str] | None = None
    ) -> Iterator[list[Hit]]:
        """Pages of at most ``size`` hits (a longer one only where equal sort values need it) in ``sort``
        order; each hit's ``sort`` starts with its values for ``sort``; ``docvalues`` fields come in its
        ``fields``."""

    def collect(
        self, query: dict[str, Any], sort: list[Any], size: int, source: Any = True, docvalues: list[str] | None = None
    ) -> list[Hit]:
        """Every hit of a query whose result is bounded (a batch), read again whole after a loss; ties may
        come in any order. One batch at a time: lookups of two pages may share this snapshot, and a point in
        time reopened by one must not be read by the other while it changes."""
        with self._collecting:
            return self._collect(query, sort, size, source, docvalues)

    def _collect(
        self, query: dict[str, Any], sort: list[Any], size: int, source: Any, docvalues: list[str] | None
    ) -> list[Hit]:
        for _ in range(MAX_PIT_REOPENS + 1):
            reopened_before = self.reopened
            try:
                hits = [hit for page in self.pages(query, sort, size, source, docvalues) for hit in page]
            except SnapshotLost:
                continue
            # A point in time reopened mid-batch may order ties differently: read the batch again.
            if self.reopened == reopened_before:
                return hits
        raise SourceError(
            f"the snapshot of {self.index} was lost during each of {MAX_PIT_REOPENS + 1} reads of one batch; "
            f"raise source.pit_keep_alive (now {self.keep_alive})"
        )


class PointInTime(Snapshot):
    """A point in time over ``index``; ``tiebreaker`` is ``"_shard_doc"`` where the engine has it."""

    def __init__(self, reader: Reader, index: str, keep_alive: str, tiebreaker: str | None) -> None:
        super().__init__(reader, index, keep_alive)
        self.tiebreaker = tiebreaker
        self.pit_id: str | None = None
        self._losses = 0  # losses since hits were last returned

    def __enter__(self) -> PointInTime:
        self.pit_id = self.reader.open_pit(self.index, self.keep_alive)
        return self

    def close(self) -> None:
        if self.pit_id is None:
            return
        pit_id, self.pit_id = self.pit_id, None
        try:
            self.reader.close_pit(pit_id)
        except SourceError as err:
            # It expires on its own after keep_alive; failing the window over it would be worse.
            log.warning(
                "Could not close point in time on %s (it expires after %s): %s", self.index, self.keep_alive, err
            )

    def pages(
        self, query: dict[str, Any], sort: list[Any], size: int, source: Any = True, docvalues: list[str] | None = None
    ) -> Iterator[list[Hit]]:
        body = _body(query, source, docvalues)
        if self.tiebreaker is None:
            return self._pages_without_tiebreaker(body, sort, size)
        return self._pages_with_tiebreaker(body, [*sort, self.tiebreaker], size)

    def _pages_with_tiebreaker(self, base: dict[str, Any], sort: list[Any], size: int) -> Iterator[list[Hit]]:
        """The tiebreaker's values belong to one point in time: a new one numbers documents differently
        (merges, relocations). So after a loss, reading resumes at the first hit whose other sort values
        equal the last returned hit's, and skips as many of those as were already returned: nothing repeats
        and nothing is skipped when those values are unique (the messages' (timestamp, id) is), and a tie
        group is read in full again otherwise."""
        search_after: list[Any] | None = None
        last_key: list[Any] | None = None  # sort values of the last returned hit, tiebreaker aside
        tied = 0  # returned hits with exactly those values
        skip = 0  # hits with those values still to skip after a reopen
        while True:
            generation = self.reopened
            body = {**base, "sort": sort, "size": size}
            if search_after is not None:
                body["search_after"] = search_after
            raw = self._search(body)
            if self.reopened != generation:
                if last_key is not None:
                    search_after, skip = [*last_key, -1], tied  # before every tiebreaker value of the group
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

    def _pages_without_tiebreaker(self, base: dict[str, Any], sort: list[Any], size: int) -> Iterator[list[Hit]]:
        """Each request asks for one hit more than the page: when that hit's sort values equal the page's
        last, the page ends before their group, which the next request starts with (a page wholly of one
        group is read with a larger page). Every page ends after a complete group, so ``search_after`` on
        its last values skips nothing, in this point in time or any later one."""
        size = min(size, MAX_PAGE - 1)  # and one hit more
        search_after: list[Any] | None = None
        want = size
        while True:
            generation = self.reopened
            body = {**base, "sort": sort, "size": want + 1}
            if search_after is not None:
                body["search_after"] = search_after
            raw = self._search(body)
            if self.reopened != generation:
                continue  # search_after is valid in the new point in time too
            if len(raw) <= want:
                if raw:
                    self._losses = 0
                    yield raw
                return
            following = raw[want]["sort"]
            cut = want
            while cut and raw[cut - 1]["sort"] == following:
                cut -= 1
            if not cut:
                if want + 1 >= MAX_PAGE:
                    raise SourceError(
                        f"more than {MAX_PAGE - 1} documents of {self.index} share the sort values {following}; "
                        f"{self.reader.cluster.label} has no _shard_doc tiebreaker to page through them"
                    )
                want = min(2 * want, MAX_PAGE - 1)
                continue
            self._losses = 0
            yield raw[:cut]
            search_after, want = raw[cut - 1]["sort"], size

    def _search(self, body: dict[str, Any]) -> list[Hit]:
        """One page in the point in time; after a loss, it is reopened (``reopened`` counts it) and nothing
        is returned, so the caller asks again from a key valid in the new one."""
        pit = {"id": self.pit_id, "keep_alive": self.keep_alive}
        try:
            response = self.reader.search(None, {**body, "pit": pit, "track_total_hits": False})
        except SnapshotLost as err:
            # Only losses without progress in between count: a long window may outlive many keep-alives.
            if self._losses >= MAX_PIT_REOPENS:
                raise
            self._losses += 1
            self.reopened += 1
            log.warning("Point in time on %s was lost (%s); reopening and resuming", self.index, err)
            self.pit_id = None
            self.pit_id = self.reader.open_pit(self.index, self.keep_alive)
            return []
        self.pit_id = response.get("pit_id", self.pit_id)
        return response["hits"]["hits"]


class ScrollSnapshot(Snapshot):
    """A sorted scroll per :meth:`pages` call, cleared when done, failed or abandoned."""

    def close(self) -> None:
        """Nothing stays open between calls of :meth:`pages`."""

    def pages(
        self, query: dict[str, Any], sort: list[Any], size: int, source: Any = True, docvalues: list[str] | None = None
    ) -> Iterator[list[Hit]]:
        body = {**_body(query, source, docvalues), "sort": sort, "size": size}
        response = self.reader.search(self.index, body, scroll=self.keep_alive)
        scroll_id = response.get("_scroll_id")
        returned = 0
        try:
            while True:
                page = response["hits"]["hits"]
                if page:
                    returned += len(page)
                    yield page
                if len(page) < size:
                    return
                try:
                    response = self.reader.scroll(scroll_id, self.keep_alive)
                except SnapshotLost as err:
                    scroll_id = None  # nothing left to clear
                    raise SnapshotLost(
                        "scroll", err.status,
                        f"the scroll over {self.index} expired or was released after {returned} hits ({err.reason}); "
                        f"a scroll cannot be resumed, so the window is read again from its start when its task is "
                        f"retried (raise source.pit_keep_alive, now {self.keep_alive}, if this recurs)",
                    ) from err  # fmt: skip
                scroll_id = response.get("_scroll_id", scroll_id)
        finally:
            if scroll_id is not None:
                try:
                    self.reader.clear_scroll(scroll_id)
                except SourceError as err:
                    log.warning(
                        "Could not clear a scroll on %s (it expires after %s): %s", self.index, self.keep_alive, err
                    )
