"""Planning a backfill: check the cluster, split the range into windows, count, estimate.

Everything here happens before anything is written, so a bad run stops with a clear
:class:`~es_backfill.config.ConfigError` and leaves no trace. Counting all windows
takes one ``range`` aggregation; balancing windows by document count takes one
``date_histogram``; the dry-run size estimate enriches a small sample of messages.
"""

from __future__ import annotations

import gzip
import logging
import math
from datetime import UTC, datetime
from typing import Any

from es_backfill import manifest
from es_backfill.config import BackfillConfig, ConfigError
from es_backfill.enrich import RelatedLookup
from es_backfill.extract import message_query
from es_backfill.records import build_record, dumps_line
from es_backfill.sink import ObjectStore
from es_backfill.source import AccessDenied, BadRequest, NotFound, Reader
from es_backfill.windows import Window, WindowError, balance, iso, split

log = logging.getLogger(__name__)

SAMPLE_SIZE = 50
HISTOGRAM_BUCKETS_PER_WINDOW = 32


def identify_cluster(config: BackfillConfig, reader: Reader) -> BackfillConfig:
    """``config`` reading from the cluster ``GET /`` named when the reader was made (its ``cluster_uuid`` is
    part of the fingerprint); the engine, version and read strategy go to the log."""
    cluster = reader.cluster
    log.info(
        "Source: %s (cluster %s), read strategy %s", cluster.label, cluster.cluster_uuid, cluster.strategy
    )  # fmt: skip
    return config.with_cluster(cluster.cluster_uuid)


def check_cluster(config: BackfillConfig, reader: Reader) -> None:
    """Every index answers with the fields the run relies on, and the engine accepts the query;
    otherwise a ConfigError that says what is wrong. Needs only index privileges (read, view_index_metadata)."""
    source = config.source
    needed = {source.messages_index: [source.timestamp_field, source.id_field]}
    for spec in source.related:
        needed.setdefault(spec.index, []).extend([spec.join_field, *spec.sort])
    problems = [problem for index, fields in needed.items() for problem in _check_fields(reader, index, fields)]
    if problems:
        raise ConfigError(problems)
    try:
        reader.count(source.messages_index, message_query(config, Window(config.start, config.end)))
    except AccessDenied as err:
        raise ConfigError([f"connection {source.es_conn_id}: {_denied(source.messages_index, 'read', err)}"]) from err
    except BadRequest as err:
        raise ConfigError([f"the cluster rejected the query: {err.reason}; fix the query param"]) from err


def _check_fields(reader: Reader, index: str, fields: list[str]) -> list[str]:
    try:
        mapped = reader.field_mappings(index, fields)
    except NotFound:
        return [f"index {index!r} does not exist (or matches nothing) on the cluster"]
    except AccessDenied as err:
        return [_denied(index, "view_index_metadata", err)]
    return [
        f"field {field!r} is not mapped in index {index!r}; check the source settings"
        for field in dict.fromkeys(fields)
        if field not in mapped
    ]


def _denied(index: str, privilege: str, err: AccessDenied) -> str:
    return (
        f"the credentials may not {'search' if privilege == 'read' else 'read the mappings of'} index {index!r} "
        f"({err.reason}); grant the index privileges read and view_index_metadata on it (for Amazon OpenSearch "
        "Service: es:ESHttpGet and es:ESHttpPost on the index in the domain's access policy)"
    )


def plan_windows(config: BackfillConfig, reader: Reader, max_windows: int) -> list[Window]:
    try:
        windows = split(config.start, config.end, config.window, max_windows=max_windows)
    except WindowError as err:
        raise ConfigError([str(err)]) from err
    if config.balance_windows and len(windows) > 1:
        windows = balance(_histogram(config, reader, len(windows)), config.start, config.end, len(windows))
    return windows


def plan_or_resume(config: BackfillConfig, reader: Reader, store: ObjectStore, max_windows: int) -> list[Window]:
    """The windows of an earlier run of the same backfill, or a new plan (saved unless a dry run).

    The backfill's root only ever holds the current plan's windows: a saved plan made with other settings
    (or from another cluster) is refused unless ``force``, which replaces it; and before any window is
    written, objects of window folders the plan does not have are deleted.
    """
    saved = manifest.read_plan(store, config)
    if saved is not None and saved.fingerprint == config.fingerprint() and not config.force:
        log.info("Resuming backfill %s with its %s planned windows", config.backfill_name, len(saved.windows))
        windows = saved.windows
    else:
        if saved is not None and saved.fingerprint != config.fingerprint() and not config.force:
            raise ConfigError([_conflict(config, saved)])
        windows = plan_windows(config, reader, max_windows)
        log.info("Planned %s windows for backfill %s", len(windows), config.backfill_name)
        if not config.dry_run:
            # The new plan first: should the sweep below be interrupted, a re-trigger resumes it.
            manifest.write_plan(store, config, windows, reader.cluster.to_dict())
            if saved is not None:
                store.delete([manifest.run_manifest_key(config)])  # it describes the replaced plan
    if not config.dry_run:
        _sweep(config, store, windows)
    return windows


def _conflict(config: BackfillConfig, saved: manifest.SavedPlan) -> str:
    return (
        f"backfill {config.backfill_name!r} at s3://{config.s3_bucket}/{config.root_prefix}/ was planned with "
        f"other settings ({'; '.join(saved.differences(config))}), and its {len(saved.windows)} windows would be "
        "mixed with these. Re-trigger with the same settings to resume it, choose another backfill_name, or set "
        "force: true to replace the whole backfill (windows the new plan does not have are deleted)"
    )


def _sweep(config: BackfillConfig, store: ObjectStore, windows: list[Window]) -> None:
    """Delete what windows of another plan left under the root; leave (and name) anything else."""
    foreign = manifest.foreign_objects(store, config, windows)
    stale = [key for key in foreign if manifest.window_folder_of(config, key)]
    if stale:
        log.warning("Deleting %s objects of windows that are not in this plan, e.g. %s", len(stale), stale[0])
        store.delete(stale)
    keep = {manifest.window_folder(config, w) for w in windows} | {None}  # and what lies in no window folder
    aborted = store.abort_uploads(
        f"{config.root_prefix}/", keep=lambda key: manifest.window_folder_of(config, key) in keep
    )
    if aborted:
        log.info("Aborted %s unfinished multipart uploads of windows that are not in this plan", aborted)
    others = sorted(set(foreign) - set(stale))
    if others:
        log.warning(
            "%s objects under the backfill's root are not es-backfill output and were left alone: %s",
            len(others), ", ".join(others[:10]),
        )  # fmt: skip


def _histogram(config: BackfillConfig, reader: Reader, windows: int) -> list[tuple[datetime, int]]:
    span_s = (config.end - config.start).total_seconds()
    interval_s = max(1, math.ceil(span_s / (windows * HISTOGRAM_BUCKETS_PER_WINDOW)))
    field = config.source.timestamp_field
    histogram = {
        "field": field,
        "fixed_interval": f"{interval_s}s",
        "offset": f"{int(config.start.timestamp()) % interval_s}s",
        "min_doc_count": 1,
    }
    response = reader.search(
        config.source.messages_index,
        {
            "size": 0,
            "query": message_query(config, Window(config.start, config.end)),
            "aggs": {"h": {"date_histogram": histogram}},
        },
    )
    return [
        (datetime.fromtimestamp(b["key"] / 1000, tz=UTC), b["doc_count"])
        for b in response["aggregations"]["h"]["buckets"]
    ]


def window_counts(config: BackfillConfig, reader: Reader, windows: list[Window]) -> list[int]:
    """Each window's message count, in one request (range buckets are half-open too)."""
    ranges = [{"key": w.key, "from": iso(w.start), "to": iso(w.end)} for w in windows]
    filters = [config.query] if config.query else []
    aggs = {"w": {"date_range": {"field": config.source.timestamp_field, "ranges": ranges, "keyed": True}}}
    response = reader.search(
        config.source.messages_index, {"size": 0, "query": {"bool": {"filter": filters}}, "aggs": aggs}
    )
    buckets = response["aggregations"]["w"]["buckets"]
    return [buckets[w.key]["doc_count"] for w in windows]


def estimate_bytes_per_message(config: BackfillConfig, reader: Reader) -> float:
    """Average output bytes per message over a small enriched sample (compressed if the format is)."""
    response = reader.search(
        config.source.messages_index,
        {
            "size": SAMPLE_SIZE,
            "query": message_query(config, Window(config.start, config.end)),
            "sort": [{config.source.timestamp_field: "asc"}],
        },
    )
    hits = response["hits"]["hits"]
    if not hits:
        return 0.0
    ids = [str(h["_source"].get(config.source.id_field, h["_id"])) for h in hits]
    with RelatedLookup(reader, config.source.related, "30s", config.source.related_page_size) as lookup:
        docs = lookup.fetch(ids)
    data = b"".join(
        dumps_line(build_record(i, "sample", h["_source"], config.source.related, docs))
        for i, h in zip(ids, hits, strict=True)
    )
    size = len(gzip.compress(data, mtime=0)) if config.output_format == "jsonl.gz" else len(data)
    return size / len(hits)


def dry_run_report(config: BackfillConfig, reader: Reader, windows: list[Window]) -> dict[str, Any]:
    counts = window_counts(config, reader, windows)
    per_message = estimate_bytes_per_message(config, reader)
    rows = [
        {"window": w.label, "messages": c, "estimated_bytes": round(c * per_message)}
        for w, c in zip(windows, counts, strict=True)
    ]
    return {
        "windows": rows,
        "messages": sum(counts),
        "estimated_bytes": round(sum(counts) * per_message),
        "bytes_per_message": round(per_message, 1),
    }
