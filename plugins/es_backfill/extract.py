"""One window, end to end: read its messages, enrich them, write them, then its manifest.

``run_window`` serves the DAG's mapped task, the command line, tests and benchmarks. The next
page and its related documents are read in a worker thread while the current one is written
(the reader's ``max_in_flight`` bounds the requests), and records keep their order.
It is safe to run again on the same window: a complete window is skipped (unless
``force``); otherwise the old manifest goes first, unfinished multipart uploads of a
failed attempt are aborted, parts are overwritten under the same keys, objects the
new attempt did not write are deleted, and the manifest is written last. A window
that its plan read from another cluster than the connection now reaches fails with a
:class:`~es_backfill.config.ConfigError` before anything is written. A window
whose messages lack ids fails with :class:`~es_backfill.records.MessageIdError` before
reading them, one whose messages share ids before its manifest is written; a window that
its backfill's saved plan no longer has (it was re-planned with ``force``) fails with
:class:`~es_backfill.manifest.StalePlanError` before anything is written, or, if the
re-plan came while it ran, with its objects deleted instead of its manifest written. An attempt
that finds its window finished by another attempt after it began (Airflow gave it up
meanwhile) skips it; see :mod:`es_backfill.lease` for how attempts claim windows.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from es_backfill import manifest
from es_backfill.config import BackfillConfig, ConfigError
from es_backfill.enrich import RelatedDocs, RelatedLookup
from es_backfill.lease import Heartbeat, Holder, LeaseHeld
from es_backfill.records import (
    MessageIds,
    build_record,
    dumps_document,
    dumps_line,
    message_id_error,
    related_counts,
)
from es_backfill.shape import Shaper
from es_backfill.sink import DocumentWriter, ObjectStore, PartWriter, window_prefix
from es_backfill.source import Hit, Reader, throttled
from es_backfill.table import Misfits
from es_backfill.windows import Window, iso

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 10.0


@dataclass
class WindowResult:
    """The small summary of one window that travels through XCom."""

    window: dict[str, Any]
    status: str  # "written" or "skipped"
    es_count: int
    messages: int  # written
    related: dict[str, int] = field(default_factory=dict)
    dropped: int = 0  # by the transform: messages + dropped == es_count when the window reconciles
    objects: int = 0
    bytes: int = 0
    seconds: float = 0.0
    es_requests: int = 0
    misfits: list[list[str]] = field(default_factory=list)  # fields the table's types do not fit (es_backfill.table)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def message_query(config: BackfillConfig, window: Window) -> dict[str, Any]:
    """The window's messages: the half-open time range, and the run's query if any."""
    time_range = {
        "range": {
            config.source.timestamp_field: {
                "gte": iso(window.start),
                "lt": iso(window.end),
                "format": "strict_date_optional_time",
            }
        }
    }
    filters: list[dict[str, Any]] = [time_range]
    if config.query:
        filters.append(config.query)
    return {"bool": {"filter": filters}}


def run_window(
    config: BackfillConfig,
    window: Window,
    reader: Reader,
    store: ObjectStore,
    holder: Holder | None = None,
    redaction_key: bytes | None = None,
) -> WindowResult:
    """Copy ``window``, or skip it if its manifest says it is complete. With a ``holder`` (the DAG run), the
    window holds the backfill's lease whenever it writes: it renews it before writing anything, while reading
    and before its manifest, and fails with :class:`LeaseHeld` if another run took it over. Records go through
    the run's redaction rules (``hash`` ones keyed by ``redaction_key``) and transform before they are written."""
    started = time.monotonic()
    manifest_key = manifest.window_manifest_key(config, window)
    claim_key = manifest.window_claim_key(config, window)
    heartbeat = Heartbeat(store, config, holder, claim_key)
    existing = manifest.read(store, manifest_key)
    if not config.force and manifest.completeness_problem(existing, config, window) is None:
        return _skipped(window, existing)

    _require_planned_cluster(config, reader)
    saved = manifest.require_in_plan(store, config, window)
    columns = saved.table if saved is not None else None
    if config.output_format == "parquet" and columns is None:
        raise manifest.StalePlanError(
            f"Window {window.label}: the backfill's plan has no table columns, which Parquet's schema comes from; "
            "trigger the backfill again (its plan task saves them)"
        )
    # Parquet's schema is fixed: a misfit fails the window there instead (es_backfill.parquet).
    misfits = Misfits(columns) if columns is not None and config.output_format != "parquet" else None
    heartbeat.claim()
    finished = manifest.read(store, manifest_key)
    if finished != existing and manifest.completeness_problem(finished, config, window) is None:
        # Another attempt wrote the window's manifest since this one began (this one was given up meanwhile).
        heartbeat.withdraw()
        return _skipped(window, finished)
    heartbeat.now()
    prefix = window_prefix(config.root_prefix, window.day, window.key)
    # No manifest may exist while the window's objects are being replaced.
    store.delete([manifest_key])
    aborted = store.abort_uploads(prefix + "/")
    if aborted:
        log.info("Aborted %s unfinished multipart uploads left by an earlier attempt", aborted)

    query = message_query(config, window)
    es_count = reader.count(config.source.messages_index, query)
    log.info("Window %s: %s messages to copy", window.label, es_count)
    _refuse_messages_without_id(config, window, reader, query)

    writer, encode = _writer(config, store, window, columns, heartbeat.confirm)
    shaper = Shaper.for_config(config, redaction_key)
    read, dropped, related = 0, 0, Counter({spec.name: 0 for spec in config.source.related})
    ids = MessageIds(config.source.id_field)
    progress = _Progress(window.label, es_count)
    try:
        with (
            reader.snapshot(config.source.messages_index, config.source.pit_keep_alive) as snapshot,
            RelatedLookup(
                reader, config.source.related, config.source.pit_keep_alive, config.source.related_page_size
            ) as lookup,
        ):
            pages = snapshot.pages(
                query=query,
                sort=[{config.source.timestamp_field: "asc"}, {config.source.id_field: "asc"}],
                size=config.page_size,
                source=config.source.messages_source(),
            )
            window_key = window.key
            for page, docs in _read_ahead(throttled(pages, config.source.max_messages_per_second), lookup):
                page_ids = [ids.add(hit["sort"][1], hit["_id"]) for hit in page]
                for message_id, hit in zip(page_ids, page, strict=True):
                    if message_id is None:
                        continue  # the window fails below, naming it
                    record = build_record(message_id, window_key, hit["_source"], config.source.related, docs)
                    if shaper is not None and (record := shaper.apply(record)) is None:
                        dropped += 1
                        continue
                    if misfits is not None:
                        misfits.check(record)
                    related.update(related_counts(record, config.source.related))
                    try:
                        data = encode(record)
                    except TypeError as err:  # only a transform can put what JSON cannot hold in a record
                        raise shaper.unwritable(record, err) if shaper is not None else err from err
                    writer.write(message_id, data)
                    ids.wrote(message_id)
                read += len(page)
                progress.update(read)
                heartbeat.beat()
        ids.check(f"Window {window.label}")
        objects = writer.close()
        messages = ids.written
    except BaseException:
        writer.abort()
        raise

    # A re-plan with force while this window ran swept it: leave nothing of it under the replaced root.
    try:
        manifest.require_in_plan(store, config, window)
    except manifest.StalePlanError:
        store.delete([o.key for o in objects])
        raise
    written = {o.key for o in objects}
    listed = list(store.list(prefix + "/"))
    _require_own_bytes(window, listed, writer.etags)
    heartbeat.now()  # still this attempt's window before anything is deleted
    stale = [o["Key"] for o in listed if o["Key"] not in written | {manifest_key, claim_key}]
    if stale:
        log.info("Deleting %s objects an earlier attempt left behind", len(stale))
        store.delete(stale)
    body = manifest.build_window_manifest(
        config,
        window,
        es_count=es_count,
        messages=messages,
        dropped=dropped,
        related=dict(related),
        objects=objects,
        message_ids=ids.summary(),
        misfits=misfits.found() if misfits is not None else None,
    )
    heartbeat.finish()
    store.put(manifest_key, manifest.dumps(body))
    seconds = time.monotonic() - started
    log.info(
        "Window %s done: %s messages written, %s dropped by the transform (Elasticsearch counted %s), %s objects, "
        "%s bytes, %.1fs, %s ES requests",
        window.label, messages, dropped, es_count, len(objects), body["bytes"], seconds, reader.total_requests,
    )  # fmt: skip
    if messages + dropped != es_count:
        log.warning(
            "Window %s wrote %s messages (%s dropped) but Elasticsearch counts %s", window.label, messages, dropped,
            es_count,
        )  # fmt: skip
    return WindowResult(
        window=window.to_dict(),
        status="written",
        es_count=es_count,
        messages=messages,
        dropped=dropped,
        related=dict(related),
        objects=len(objects),
        bytes=body["bytes"],
        seconds=round(seconds, 3),
        es_requests=reader.total_requests,
        misfits=body.get("table_misfits", []),
    )


def _writer(
    config: BackfillConfig,
    store: ObjectStore,
    window: Window,
    columns: dict[str, Any] | None,
    before_commit: Callable[[], None],
) -> tuple[Any, Callable[[dict[str, Any]], Any]]:
    """The window's writer for the run's output format, and what it takes of a record."""
    prefix = window_prefix(config.root_prefix, window.day, window.key)
    source = config.source
    if config.output_format == "json":
        return DocumentWriter(store, prefix, before_commit=before_commit), dumps_document
    if config.output_format == "parquet":
        from es_backfill.parquet import ParquetWriter  # pyarrow, only for the runs that need it

        assert columns is not None
        limits = (source.part_max_records, source.part_max_bytes)
        return ParquetWriter(store, prefix, columns, *limits, before_commit, f"Window {window.label}"), _as_is
    writer = PartWriter(
        store, prefix, config.output_format, source.part_max_records, source.part_max_bytes, before_commit
    )
    return writer, dumps_line


def _as_is(record: dict[str, Any]) -> dict[str, Any]:
    """The record itself: Parquet's writer encodes it."""
    return record


def _skipped(window: Window, existing: dict[str, Any] | None) -> WindowResult:
    """The result of a window whose manifest ``existing`` proves it complete."""
    assert existing is not None
    log.info("Window %s is complete (%s messages); skipping", window.label, existing["messages"])
    return WindowResult(
        window=window.to_dict(),
        status="skipped",
        es_count=existing["es_count"],
        messages=existing["messages"],
        related=existing["related"],
        dropped=existing.get("dropped", 0),
        objects=len(existing["objects"]),
        bytes=existing["bytes"],
        misfits=existing.get("table_misfits", []),
    )


def _require_own_bytes(window: Window, listed: list[dict[str, Any]], etags: dict[str, str]) -> None:
    """:class:`LeaseHeld` unless every object this attempt wrote still has the ETag its upload returned: a run
    that lost the lease may have overwritten one, and a manifest lists only bytes its writer uploaded."""
    found = {o["Key"]: o.get("ETag") for o in listed}
    changed = [key for key, etag in etags.items() if found.get(key) != etag]
    if changed:
        raise LeaseHeld(
            f"Window {window.label}: {len(changed)} objects changed after this attempt uploaded them (e.g. "
            f"{changed[0]}): another run is writing this backfill, so no manifest is written. Check which run holds "
            "the lease (_lease.json), then clear this window's task in that run"
        )


def _require_planned_cluster(config: BackfillConfig, reader: Reader) -> None:
    """ConfigError (no retry helps) if the connection now reaches another cluster than the one the plan read:
    the window would be written under the plan's fingerprint from other data."""
    if not config.cluster_uuid or reader.cluster.cluster_uuid == config.cluster_uuid:
        return
    now = reader.cluster.cluster_uuid
    raise ConfigError(
        [
            f"connection {config.source.es_conn_id} now reaches cluster {now!r} ({reader.cluster.label}), but "
            f"backfill {config.backfill_name!r} was planned on cluster {config.cluster_uuid!r}: point the "
            "connection back at that cluster, or trigger a new backfill (another backfill_name, or force: true)"
        ]
    )


def _read_ahead(pages: Iterator[list[Hit]], lookup: RelatedLookup) -> Iterator[tuple[list[Hit], RelatedDocs]]:
    """Each page with its related documents, in order, read ahead in a worker thread: while page N is
    enriched, serialised, compressed and uploaded, the lookups of page N+1 and the search for page N+2 run
    (the reader bounds the requests in flight). Three pages are in memory at most."""

    def next_page() -> tuple[list[Hit], Callable[[], RelatedDocs]] | None:
        page = next(pages, None)
        if page is None:
            return None
        # The ids as MessageIds reads them (a missing one fails the window, so it needs no lookup).
        return page, lookup.start([str(hit["sort"][1]) for hit in page if hit["sort"][1] is not None])

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-ahead") as pool:
        ahead = pool.submit(next_page)
        while (item := ahead.result()) is not None:
            page, related = item
            ahead = pool.submit(next_page)
            yield page, related()


def _refuse_messages_without_id(config: BackfillConfig, window: Window, reader: Reader, query: dict[str, Any]) -> None:
    """Fail before reading if messages lack the id field: sorting cannot tell (a numeric field sorts a
    missing value as the largest long), so one search asks for them, naming up to 20 by ``_id``."""
    id_field = config.source.id_field
    without = {"bool": {"filter": [query], "must_not": [{"exists": {"field": id_field}}]}}
    response = reader.search(
        config.source.messages_index,
        {"query": without, "size": MessageIds.EXAMPLES, "_source": False, "track_total_hits": True},
    )
    hits = response["hits"]["hits"]
    if hits:
        total = response["hits"]["total"]["value"]
        examples = ", ".join(hit["_id"] for hit in hits)
        problem = f"{total} messages have no {id_field!r} (e.g. {examples})"
        raise message_id_error(f"Window {window.label}", [problem], id_field)


class _Progress:
    """Logs records done, rate and ETA at most every PROGRESS_EVERY_S seconds."""

    def __init__(self, label: str, total: int) -> None:
        self.label = label
        self.total = total
        self.started = self.last = time.monotonic()

    def update(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_EVERY_S:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        eta = (self.total - done) / rate if rate else float("inf")
        log.info("Window %s: %s/%s messages, %.0f/s, ETA %.0fs", self.label, done, self.total, rate, eta)
