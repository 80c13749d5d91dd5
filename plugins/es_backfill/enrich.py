"""Batched lookups of the documents related to a page of messages.

For each related index, one ``terms`` query on the join field covers a whole page of
message ids. When a batch has more hits than one request returns, the ids the full answer holds completely
are kept and only the others are asked for again (each id is looked up about once, where reading the batch
again in pages looked every id up once per page); only one message's documents filling a request are paged
with a consistent snapshot. Never one request per message; the related indices are asked at the same
time (the reader bounds how many requests are in flight). Related documents come
back grouped by message id, ordered by the index's sort fields and then by index and
document id, so the output is the same however Elasticsearch orders ties. A document
whose join field holds several message ids joins every message of the batch it names.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from itertools import pairwise
from typing import Any

from es_backfill import fieldpath
from es_backfill.config import RelatedIndex
from es_backfill.source import Reader, Snapshot

log = logging.getLogger(__name__)

RelatedDocs = dict[str, dict[str, list[dict[str, Any]]]]  # related name -> message id -> sources


class RelatedLookup:
    """Lookups in the related indices for one window; a context manager that releases any snapshot it had
    to open."""

    def __init__(self, reader: Reader, related: Sequence[RelatedIndex], keep_alive: str, page_size: int) -> None:
        self.reader = reader
        self.related = related
        self.keep_alive = keep_alive
        self.page_size = page_size
        self._stack = ExitStack()
        self._snapshots: dict[str, Snapshot] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(related)), thread_name_prefix="related")

    def __enter__(self) -> RelatedLookup:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._pool.shutdown(wait=True)  # no lookup still runs when the snapshots are released
        self._stack.close()

    def _snapshot(self, spec: RelatedIndex) -> Snapshot:
        # Opened on first use, so windows whose batches fit in one request cost no snapshot at all.
        with self._lock:
            if spec.name not in self._snapshots:
                snapshot = self.reader.snapshot(spec.index, self.keep_alive)
                self._snapshots[spec.name] = self._stack.enter_context(snapshot)
            return self._snapshots[spec.name]

    def fetch(self, message_ids: Sequence[str]) -> RelatedDocs:
        """Every related document of ``message_ids``, per related index, grouped and ordered."""
        return self.start(message_ids)()

    def start(self, message_ids: Sequence[str]) -> Callable[[], RelatedDocs]:
        """Start the lookups of ``message_ids`` and return what waits for them: ``fetch`` in two steps, so that
        the caller can read something else meanwhile."""
        if not message_ids:
            return dict
        futures = {spec.name: self._pool.submit(self._fetch_one, spec, message_ids) for spec in self.related}
        return lambda: {name: future.result() for name, future in futures.items()}

    def _fetch_one(self, spec: RelatedIndex, message_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        sort = [{spec.join_field: "asc"}, *({f: "asc"} for f in spec.sort)]
        # Usually a page's related documents fit in one request, which needs no point in time.
        body: dict[str, Any] = {"sort": sort, "size": self.page_size, "track_total_hits": False}
        source = spec.source_filter()
        # With a selection, _source may lack the join field: its every value is read from the doc values instead.
        docvalues = None if source is True else [spec.join_field]
        if docvalues:
            body["_source"] = source  # only the fields asked for are read
            body["docvalue_fields"] = docvalues
        grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
        remaining = list(dict.fromkeys(message_ids))
        while remaining:
            query = {"bool": {"filter": [{"terms": {spec.join_field: remaining}}]}}
            found = self.reader.search(spec.index, {**body, "query": query})["hits"]["hits"]
            full = len(found) >= self.page_size
            done, remaining = complete_ids(found, remaining, self.page_size)
            split = full and bool(done)
            if not done:  # one message's documents fill a request (or ids are sorted as other values)
                found = self._snapshot(spec).collect(query, sort, self.page_size, source, docvalues)
                done, remaining = set(remaining), []
            for hit in found:
                # Of a split answer, a document joins only the ids it completed; the others are asked for again.
                for message_id in _join_values(hit, spec.join_field, done, exact=split):
                    grouped[message_id].append(hit)
        return {message_id: _ordered(hits, len(sort)) for message_id, hits in grouped.items()}


def complete_ids(found: list[dict[str, Any]], ids: list[str], page_size: int) -> tuple[set[str], list[str]]:
    """The ids whose every document ``found`` holds, and the ids to ask for again. A request that returned less
    than a page holds them all. A full one is sorted by join value first: every id it shows as a sort value
    before its last hit's is complete (a document sorts by its smallest join value, which is no larger), so only
    the others are asked for again, instead of reading the whole batch again in pages. Comparing the engine's own
    sort values keeps its order, whatever a normaliser does to the ids."""
    if len(found) < page_size:
        return set(ids), []
    last = found[-1]["sort"][0]
    seen = {hit["sort"][0] for hit in found}
    done = {i for i in ids if i in seen and isinstance(last, str) and i < last}
    return done, [i for i in ids if i not in done]


def _ordered(hits: list[dict[str, Any]], sort_fields: int) -> list[dict[str, Any]]:
    """The sources of one message's related documents, ordered by the sort fields' values, then by (index, id)
    for ties: a tiebreaker such as _shard_doc differs between points in time and clusters. The engine's order
    usually is that already (no ties, one join value each), which one pass proves; otherwise they are sorted."""
    try:
        in_order = all(a["sort"][1:sort_fields] < b["sort"][1:sort_fields] for a, b in pairwise(hits))
    except TypeError:  # a missing value (None) or mixed types: let the sort key decide
        in_order = False
    if not in_order:
        hits = sorted(hits, key=lambda h: _order_key(h, sort_fields))
    return [hit["_source"] for hit in hits]


def _join_values(hit: dict[str, Any], field: str, wanted: set[str], exact: bool = False) -> list[str]:
    """The message ids of ``wanted`` a related document names: every value of its join field, from the doc
    values where they were asked for (a ``_source`` selection), else from ``_source`` in any form (the sort value
    is only the smallest); if none of those is a wanted id as written (a normaliser, a multi-field such as
    ``message_id.keyword``), the value it was sorted by; with ``exact`` (a split answer), only if that is wanted."""
    if "fields" in hit and field in hit["fields"]:
        candidates = hit["fields"][field]
    else:
        value = hit["_source"].get(field)
        if type(value) is str and value in wanted:  # the usual case: one keyword id, at the top level
            return [value]
        candidates = fieldpath.values(hit["_source"], field)
    found = [v for v in dict.fromkeys(str(v) for v in candidates if v is not None) if v in wanted]
    if found:
        return found
    sorted_by = str(hit["sort"][0])
    return [sorted_by] if not exact or sorted_by in wanted else []


def _order_key(hit: dict[str, Any], sort_fields: int) -> tuple[Any, ...]:
    # The sort fields' values (after the join value, constant within a message's group), then (index, id)
    # for ties: a tiebreaker such as _shard_doc differs between points in time and clusters.
    return (*(_comparable(v) for v in hit["sort"][1:sort_fields]), hit["_index"], hit["_id"])


def _comparable(value: Any) -> tuple[int, Any]:
    # Missing values and mixed types must not make Python's sort fail.
    if value is None:
        return (2, 0)
    if isinstance(value, int | float):
        return (0, value)
    return (1, str(value))
