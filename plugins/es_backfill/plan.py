"""Planning a backfill: check the cluster, split the range into windows, count, estimate.

Everything here happens before anything is written, so a bad run stops with a clear
:class:`~es_backfill.config.ConfigError` and leaves no trace. Counting all windows
takes one ``range`` aggregation; balancing windows by document count takes one
``date_histogram``; the dry-run size estimate enriches a small sample of messages.
"""

from __future__ import annotations

import fnmatch
import gzip
import heapq
import logging
import math
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from es_backfill import lease, manifest, table
from es_backfill.catalog import GlueCatalog
from es_backfill.config import BackfillConfig, ConfigError
from es_backfill.enrich import RelatedLookup
from es_backfill.extract import message_query
from es_backfill.lease import Holder
from es_backfill.records import build_record, dumps_line
from es_backfill.shape import Shaper
from es_backfill.sink import ObjectStore
from es_backfill.source import SCROLL, AccessDenied, BadRequest, NotFound, Reader
from es_backfill.table import ParquetMisfit, table_location, table_name
from es_backfill.windows import Window, WindowError, balance, iso, split

log = logging.getLogger(__name__)

HISTOGRAM_BUCKETS_PER_WINDOW = 32


def identify_cluster(config: BackfillConfig, reader: Reader) -> BackfillConfig:
    """``config`` reading from the cluster ``GET /`` named when the reader was made (its ``cluster_uuid`` is
    part of the fingerprint); the engine, version and read strategy go to the log."""
    cluster = reader.cluster
    log.info(
        "Source: %s (cluster %s), read strategy %s", cluster.label, cluster.cluster_uuid, cluster.strategy
    )  # fmt: skip
    return config.with_cluster(cluster.cluster_uuid)


def check_bucket(store: ObjectStore) -> None:
    """ConfigError unless the output bucket exists and these credentials reach it: before anything is read."""
    problem = store.bucket_problem()
    if problem:
        raise ConfigError([f"s3_bucket: {problem}"])


def check_catalog(config: BackfillConfig, catalog: GlueCatalog | None) -> None:
    """ConfigError if the run's ``glue_database`` is missing, or holds a table of this backfill's table name that
    another backfill (or something else) registered: found before anything is written."""
    if catalog is None or config.dry_run:
        return
    problem = catalog.problem(table_name(config.backfill_name), table_location(config))
    if problem:
        raise ConfigError([problem])


def check_cluster(config: BackfillConfig, reader: Reader) -> None:
    """Every index answers with the fields the run relies on, and the engine accepts the query;
    otherwise a ConfigError that says what is wrong. Needs only index privileges (read, view_index_metadata)."""
    source = config.source
    needed = {source.messages_index: [source.timestamp_field, source.id_field]}
    for spec in source.related:
        needed.setdefault(spec.index, []).extend([spec.join_field, *spec.sort])
    problems = [problem for index, fields in needed.items() for problem in _check_fields(reader, index, fields)]
    # Fields named for selection or redaction may be objects (their fields are mapped) or patterns.
    shaped = {source.messages_index: [*(source.source_fields or ()), *source.source_excludes]}
    for spec in source.related:
        shaped.setdefault(spec.index, []).extend([*(spec.source_fields or ()), *spec.source_excludes])
    sections = {"message": source.messages_index, **{spec.name: spec.index for spec in source.related}}
    for rule in source.redact:
        shaped[sections[rule.section]].append(rule.path)
    problems += [p for index, fields in shaped.items() if fields for p in _check_paths(reader, index, fields)]
    if problems:
        raise ConfigError(problems)
    try:
        reader.count(source.messages_index, message_query(config, Window(config.start, config.end)))
    except AccessDenied as err:
        raise ConfigError([f"connection {source.es_conn_id}: {_denied(source.messages_index, 'read', err)}"]) from err
    except BadRequest as err:
        raise ConfigError([f"the cluster rejected the query: {err.reason}; fix the query param"]) from err
    _check_snapshots(reader, list(needed), source.es_conn_id)


def _check_snapshots(reader: Reader, indices: list[str], conn_id: str) -> None:
    """Each index can be read the way a window reads it: a point in time (or scroll) opened, searched and
    released. A role may allow searches but not these; found here, before any window runs."""
    problems = []
    for index in dict.fromkeys(indices):
        try:
            reader.probe_snapshot(index)
        except AccessDenied as err:
            what = "scroll" if reader.cluster.strategy == SCROLL else "point in time"
            problems.append(
                f"connection {conn_id}: the credentials may not open, search or release a {what} on index "
                f"{index!r} ({err.reason}); grant the index privilege read (OpenSearch's security plugin: "
                f"{SNAPSHOT_ACTIONS[what]})"
            )
    if problems:
        raise ConfigError(problems)


# The OpenSearch security plugin's permissions for reading a snapshot, besides indices:data/read/search.
SNAPSHOT_ACTIONS = {
    "point in time": "the index permissions indices:data/read/point_in_time/create and "
    "indices:data/read/point_in_time/delete",
    "scroll": "the cluster permissions indices:data/read/scroll and indices:data/read/scroll/clear",
}


def _check_fields(reader: Reader, index: str, fields: list[str]) -> list[str]:
    try:
        mapped = reader.field_mappings(index, fields)
    except NotFound as err:
        if "index_not_found" in err.reason or "no such index" in err.reason:
            return [f"index {index!r} does not exist (or matches nothing) on the cluster"]
        # OpenSearch's security plugin denies a sub-action of the field-mapping request silently: 404, body {}.
        return [
            f"index {index!r}: its field mappings answered 404 without naming a missing index ({err.reason}), "
            "as OpenSearch's security plugin does for a role with indices:admin/mappings/fields/get but not its "
            "sub-actions: grant indices:admin/mappings/fields/get* (Elasticsearch: view_index_metadata)"
        ]
    except AccessDenied as err:
        return [_denied(index, "view_index_metadata", err)]
    return [
        f"field {field!r} is not mapped in index {index!r}; check the source settings"
        for field in dict.fromkeys(fields)
        if field not in mapped
    ]


def check_shaping(config: BackfillConfig, redaction_key: bytes | None) -> None:
    """The transform imports and takes a record, and hash rules have their key: ConfigError otherwise, so a
    bad transform fails the plan, not every window."""
    Shaper.for_config(config, redaction_key)


def _check_paths(reader: Reader, index: str, paths: list[str]) -> list[str]:
    """Each of ``paths`` (a field, an object holding fields, or a pattern) names something ``_source`` can hold:
    a mapped field or object, or a field inside an object mapped ``"enabled": false`` or under ``"dynamic":
    false`` (stored, not indexed: not in the field mappings). A multi-field (``subject.keyword``) is an
    index-time view that ``_source`` never holds: refused, naming its source field."""
    prefixes = {p for path in paths if not _PATTERN.search(path) for p in _prefixes(path)}
    try:
        mapped = reader.field_mappings(index, [*paths, *(f"{path}.*" for path in paths), *prefixes])
    except (NotFound, AccessDenied):
        return []  # _check_fields has said so already
    problems: list[str] = []
    unmapped = []
    for path in dict.fromkeys(paths):
        parent = _multi_field_parent(path, mapped)
        mapping = mapped.get(path) or {}
        target = mapping.get("path") if mapping.get("type") == "alias" else None
        if parent is not None:
            problems.append(
                f"field {path!r} (in _source selection or a redaction rule) of index {index!r} is a multi-field of "
                f"{parent!r}, which _source does not hold: name {parent!r} instead"
            )
        elif target is not None:
            problems.append(
                f"field {path!r} (in _source selection or a redaction rule) of index {index!r} is an alias of "
                f"{target!r}, and _source holds the value under {target!r} only: name {target!r} instead"
            )
        elif not any(fnmatch.fnmatchcase(field, path) or field.startswith(f"{path}.") for field in mapped):
            unmapped.append(path)
    if unmapped:
        problems += _unmapped_problems(reader, index, unmapped)
    return problems


_PATTERN = re.compile(r"[*?]")
_STORED_NOT_INDEXED = (False, "false", "runtime")  # dynamic settings that keep unmapped fields in _source


def _prefixes(path: str) -> list[str]:
    """``a.b.c`` → ``a``, ``a.b``."""
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _multi_field_parent(path: str, mapped: dict[str, dict[str, Any]]) -> str | None:
    """The field whose multi-field ``path`` is, if it is one."""
    for prefix in _prefixes(path):
        if path[len(prefix) + 1 :] in (mapped.get(prefix) or {}).get("fields", {}):
            return prefix
    return None


def _unmapped_problems(reader: Reader, index: str, paths: list[str]) -> list[str]:
    """Problems for ``paths`` that no field mapping names, unless an object they lie in keeps them in
    ``_source`` without mapping them (read from the index mappings, which needs more than field mappings)."""
    try:
        mappings = reader.mappings(index)
    except AccessDenied as err:
        return [
            f"fields {', '.join(map(repr, paths))} are not mapped in index {index!r}, and whether they lie in an "
            f"object mapped enabled: false or dynamic: false cannot be read ({err.reason}): grant "
            "indices:admin/mappings/get on the index (Elasticsearch: view_index_metadata), or fix the names"
        ]
    return [
        f"field {path!r} (in _source selection or a redaction rule) is not mapped in index {index!r}, nor inside "
        "an object mapped enabled: false or dynamic: false: a typo would silently select or redact nothing"
        for path in paths
        if not any(_stored_unmapped(mapping, path) for mapping in mappings)
    ]


def _stored_unmapped(mapping: dict[str, Any], path: str) -> bool:
    """Whether ``mapping`` has ``path`` in ``_source``: it is an object of the mapping, enters an object mapped
    ``"enabled": false``, or leaves the mapped objects where ``dynamic`` (inherited) is false or runtime."""
    node, dynamic, rest = mapping, mapping.get("dynamic", True), path
    while True:
        if node.get("enabled") is False:
            return True
        dynamic = node.get("dynamic", dynamic)
        properties = node.get("properties") or {}
        # The longest key that starts the rest of the path (objects with subobjects: false have dotted keys).
        keys = sorted(properties, key=len, reverse=True)
        key = next((k for k in keys if rest == k or rest.startswith(k + ".")), None)
        if key is None:
            return dynamic in _STORED_NOT_INDEXED
        if key == rest:
            return True  # an object of the mapping (a field would have had a field mapping)
        if properties[key].get("type", "object") not in ("object", "nested"):
            return False  # a field holds no fields (its multi-fields are not in _source)
        node, rest = properties[key], rest[len(key) + 1 :]


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


def plan_or_resume(
    config: BackfillConfig, reader: Reader, store: ObjectStore, max_windows: int, holder: Holder | None = None
) -> list[Window]:
    """The windows of an earlier run of the same backfill, or a new plan (saved unless a dry run).

    ``holder`` (the DAG run) takes the backfill's lease first, unless a dry run: of two runs of the same
    backfill, the second stops here (:class:`LeaseHeld`) before anything is written. The backfill's root only
    ever holds the current plan's windows: a saved plan made with other settings (or from another cluster) is
    refused unless ``force``, which replaces it; and before any window is written, objects of window folders
    the plan does not have are deleted.
    """
    if holder is None or config.dry_run:
        return _plan_or_resume(config, reader, store, max_windows)
    lease.require_conditional_writes(store, config)
    lease.hold(store, config, holder, force=config.force_lease)
    try:
        return _plan_or_resume(config, reader, store, max_windows)
    except BaseException:
        lease.release(store, config, holder)  # a run that cannot start must not keep others out
        raise


def _plan_or_resume(config: BackfillConfig, reader: Reader, store: ObjectStore, max_windows: int) -> list[Window]:
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
            manifest.write_plan(store, config, windows, reader.cluster.to_dict(), output_columns(config, reader))
            if saved is not None:
                store.delete([manifest.run_manifest_key(config)])  # it describes the replaced plan
    if not config.dry_run:
        _sweep(config, store, windows)
    return windows


def output_columns(config: BackfillConfig, reader: Reader) -> dict[str, Any]:
    """The output table's columns, typed from the mappings of the messages index and each related index, the
    run's ``json_fields`` made JSON text."""
    related = [(spec.name, spec.cardinality, reader.mappings(spec.index)) for spec in config.source.related]
    return table.widened(table.from_mappings(reader.mappings(config.source.messages_index), related),
                         config.json_fields)  # fmt: skip


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


@dataclass(frozen=True)
class Sample:
    """One page of the range's first messages read, enriched and serialised as an extract task would."""

    messages: int
    seconds: float  # reading it (one search, one lookup per related index) and building its output
    output_bytes: int  # compressed if the format is
    json_fields: list[str] | None = None  # Parquet: the json_fields entries its records need, beyond the run's

    @property
    def bytes_per_message(self) -> float:
        return self.output_bytes / self.messages if self.messages else 0.0

    @property
    def seconds_per_message(self) -> float:
        return self.seconds / self.messages if self.messages else 0.0


def read_sample(config: BackfillConfig, reader: Reader) -> Sample:
    """Time one page (``page_size`` messages, the first of the range) through the extract path: one search, the
    related lookups, records shaped as the run shapes them (field selection, redaction, transform: what will be
    written), serialisation and compression. Bounded and read-only: about ``1 + related`` requests. Requests are
    sent one after the other here, so an extract task, which overlaps them, is faster."""
    started = time.perf_counter()
    response = reader.search(
        config.source.messages_index,
        {
            "size": config.page_size,
            "query": message_query(config, Window(config.start, config.end)),
            "sort": [{config.source.timestamp_field: "asc"}, {config.source.id_field: "asc"}],
            "_source": config.source.messages_source(),
            "track_total_hits": False,
        },
    )
    hits = [hit for hit in response["hits"]["hits"] if hit["sort"][1] is not None]
    if not hits:
        return Sample(0, 0.0, 0)
    ids = [str(hit["sort"][1]) for hit in hits]
    with RelatedLookup(reader, config.source.related, "30s", config.source.related_page_size) as lookup:
        docs = lookup.fetch(ids)
    # The size of a hash does not depend on its key, so the estimate needs none.
    shaper = Shaper.for_config(config, b"estimate")
    records = {}
    for message_id, hit in zip(ids, hits, strict=True):
        record = build_record(message_id, "sample", hit["_source"], config.source.related, docs)
        if shaper is None or (record := shaper.apply(record)) is not None:
            records[message_id] = record
    if config.output_format == "parquet":
        return _parquet_sample(config, reader, len(hits), records, started)
    data = b"".join(dumps_line(record) for record in records.values())
    size = len(gzip.compress(data, mtime=0)) if config.output_format == "jsonl.gz" else len(data)
    return Sample(len(hits), time.perf_counter() - started, size)


def _parquet_sample(
    config: BackfillConfig, reader: Reader, read: int, records: dict[str, dict[str, Any]], started: float
) -> Sample:
    """The sample (``read`` messages, ``records`` kept by the transform) as Parquet: the fields its records
    misfit (which ``json_fields`` must name) and, with those as JSON text, its size. ConfigError if no
    ``json_fields`` can hold what a record holds."""
    from es_backfill.parquet import MisfitFinder, parquet_bytes  # pyarrow, only for the runs that need it

    finder = MisfitFinder(output_columns(config, reader))
    try:
        for message_id, record in records.items():
            finder.check(message_id, record, "The dry run's sample")
    except ParquetMisfit as err:
        raise ConfigError([str(err)]) from err
    columns = table.widened(finder.columns, finder.found)
    size = len(parquet_bytes(columns, list(records.values())))
    return Sample(read, time.perf_counter() - started, size, finder.json_fields())


def schedule_seconds(durations: list[float], slots: int) -> float:
    """When the last of ``durations`` ends if they start in order, each on the first of ``slots`` to free up
    (how the scheduler fills the pool with mapped tasks)."""
    ends = [0.0] * min(slots, max(len(durations), 1))
    for duration in durations:
        heapq.heappush(ends, heapq.heappop(ends) + duration)
    return max(ends)


def suggest_pool_slots(durations: list[float], target_s: float) -> int | None:
    """The fewest slots that finish ``durations`` within ``target_s``; None if even one slot per window cannot
    (a window alone takes longer: use smaller windows)."""
    if not durations or max(durations) > target_s:
        return None
    low, high = 1, len(durations)
    while low < high:
        middle = (low + high) // 2
        if schedule_seconds(durations, middle) <= target_s:
            high = middle
        else:
            low = middle + 1
    return low


# What a window costs whatever its size: its task's start in Airflow, its point in time, count and manifest
# (README, *Sizing*: about 10 s a task; the Quickstart's windows of ~90 messages took 5-8 s each).
WINDOW_OVERHEAD_S = 10.0


def dry_run_report(config: BackfillConfig, reader: Reader, windows: list[Window]) -> dict[str, Any]:
    """Per-window counts, the output size and the run time, estimated from one sample page."""
    counts = window_counts(config, reader, windows)
    sample = read_sample(config, reader)
    rows = [
        {
            "window": w.label,
            "messages": c,
            "estimated_bytes": round(c * sample.bytes_per_message),
            "estimated_seconds": round(WINDOW_OVERHEAD_S + c * sample.seconds_per_message, 1),
        }
        for w, c in zip(windows, counts, strict=True)
    ]
    durations = [WINDOW_OVERHEAD_S + c * sample.seconds_per_message for c in counts]
    target_s = config.target_duration.total_seconds() if config.target_duration else None
    return {
        "windows": rows,
        "messages": sum(counts),
        "estimated_bytes": round(sum(counts) * sample.bytes_per_message),
        "bytes_per_message": round(sample.bytes_per_message, 1),
        "sample": {"messages": sample.messages, "seconds": round(sample.seconds, 3)},
        "pool_slots": config.pool_slots,
        "estimated_seconds": round(schedule_seconds(durations, config.pool_slots), 1),
        "target_seconds": target_s,
        "suggested_pool_slots": suggest_pool_slots(durations, target_s) if target_s else None,
        "max_concurrent_searches": min(config.pool_slots, len(windows)) * config.source.max_in_flight,
        "json_fields_needed": sample.json_fields,
    }
