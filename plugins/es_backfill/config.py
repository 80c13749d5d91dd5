"""The validated, frozen configuration of one backfill run.

A run is described by the trigger conf (the DAG's Params) on top of a defaults file
(``include/backfill_defaults.json``: connection ids, index names, fields, related
indices, limits). :func:`from_params` checks everything that can be checked without
the network and reports every problem at once, each with how to fix it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from es_backfill.windows import WindowError, iso, parse_duration, parse_instant

OUTPUT_FORMATS = ("jsonl.gz", "jsonl", "json")
DEFAULTS_NAME = "backfill_defaults.json"
PAGE_SIZE_MIN, PAGE_SIZE_MAX = 100, 10_000
# The highest `size` Elasticsearch allows per search by default (index.max_result_window).
RELATED_PAGE_SIZE_MAX = 10_000
MAX_IN_FLIGHT_MAX = 16
CARDINALITIES = ("one", "many")

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_PREFIX_SEGMENT = re.compile(r"^[A-Za-z0-9._=-]+$")
_KEEP_ALIVE = re.compile(r"^\d+[smh]$")


class ConfigError(ValueError):
    """The run's configuration is invalid; the message lists each problem and its fix."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("Invalid backfill configuration:\n" + "\n".join(f"- {p}" for p in problems))


@dataclass(frozen=True)
class RelatedIndex:
    """One index of documents related to a message by ``join_field`` = message id."""

    name: str
    index: str
    join_field: str
    sort: tuple[str, ...]
    cardinality: str  # "one": a single document (or null), "many": a list


@dataclass(frozen=True)
class SourceConfig:
    """Where the data lives and how hard we may read it (from the defaults file, overridable per run)."""

    es_conn_id: str
    aws_conn_id: str
    messages_index: str
    id_field: str
    timestamp_field: str
    source_fields: tuple[str, ...] | None
    related: tuple[RelatedIndex, ...]
    related_page_size: int
    pit_keep_alive: str
    request_timeout_s: float
    max_retries: int
    part_max_records: int
    part_max_bytes: int
    max_in_flight: int = 3  # requests one extract task may have in flight at once
    max_messages_per_second: float | None = None  # a cap on one task's read rate


@dataclass(frozen=True)
class BackfillConfig:
    start: datetime
    end: datetime
    window: timedelta
    window_text: str
    query: dict[str, Any] | None
    backfill_name: str
    s3_bucket: str
    s3_prefix: str
    output_format: str
    page_size: int
    dry_run: bool
    force: bool
    balance_windows: bool
    source: SourceConfig
    cluster_uuid: str = ""  # the source cluster, read by plan; see with_cluster()

    @property
    def root_prefix(self) -> str:
        """``{s3_prefix}/{backfill_name}``: everything this backfill writes lives under it."""
        return f"{self.s3_prefix}/{self.backfill_name}" if self.s3_prefix else self.backfill_name

    def with_cluster(self, cluster_uuid: str) -> BackfillConfig:
        """This configuration reading from the cluster ``cluster_uuid`` (as ``GET /`` reports it in ``plan``)."""
        return replace(self, cluster_uuid=cluster_uuid)

    def shaping_settings(self) -> dict[str, Any]:
        """Exactly the settings that shape the output, and the cluster it comes from.

        Not here, because the same data gives the same bytes whatever they are: connection ids (the
        cluster's uuid stands for where the data came from), page sizes, keep-alives, timeouts, retries.
        """
        source = self.source
        settings = {
            "cluster_uuid": self.cluster_uuid,
            "start": iso(self.start),
            "end": iso(self.end),
            "window": self.window_text,
            "balance_windows": self.balance_windows,
            "query": self.query,
            "output_format": self.output_format,
            "messages": {
                "index": source.messages_index,
                "id_field": source.id_field,
                "timestamp_field": source.timestamp_field,
                "source_fields": source.source_fields,
            },
            "related": [asdict(spec) for spec in source.related],
            "parts": {"max_records": source.part_max_records, "max_bytes": source.part_max_bytes},
        }
        return json.loads(json.dumps(settings, default=str))  # as a saved plan reads back: lists, not tuples

    def fingerprint(self) -> str:
        """A digest of :meth:`shaping_settings`; plans and manifests record it, and trust only their own."""
        shaping = json.dumps(self.shaping_settings(), sort_keys=True, default=str)
        return hashlib.sha256(shaping.encode()).hexdigest()[:16]


def defaults_path() -> Path:
    """Where the defaults file is: ``ES_BACKFILL_DEFAULTS``; else ``include/backfill_defaults.json`` of
    this repository (local runs, docker compose); else a copy packed beside this module (MWAA's
    plugins.zip, which the deploy tool builds)."""
    if os.environ.get("ES_BACKFILL_DEFAULTS"):
        return Path(os.environ["ES_BACKFILL_DEFAULTS"])
    in_repository = Path(__file__).resolve().parents[2] / "include" / DEFAULTS_NAME
    return in_repository if in_repository.is_file() else Path(__file__).resolve().parent / DEFAULTS_NAME


def load_defaults(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError([f"cannot read the defaults file {path}: {err}"]) from err


def default_backfill_name(start: datetime, end: datetime, window_text: str) -> str:
    """Same range and window, same name, so re-triggering targets the same keys."""
    return f"backfill-{start:%Y%m%dT%H%M%SZ}-{end:%Y%m%dT%H%M%SZ}-{window_text}"


def from_params(params: Mapping[str, Any], defaults: Mapping[str, Any]) -> BackfillConfig:
    """Validate the trigger conf on top of the defaults; raise :class:`ConfigError` listing every problem."""
    problems: list[str] = []

    def instant(name: str) -> datetime | None:
        value = params.get(name)
        if not value:
            problems.append(f"{name} is required (a UTC date or date-time, e.g. 2024-03-01 or 2024-03-01T06:00:00Z)")
            return None
        try:
            return parse_instant(str(value))
        except WindowError as err:
            problems.append(f"{name}: {err}")
            return None

    start, end = instant("start"), instant("end")
    if start and end and end <= start:
        problems.append(f"end ({iso(end)}) must be after start ({iso(start)}); the range is half-open [start, end)")

    window_text = str(params.get("window") or "1d").strip()
    window = timedelta(days=1)
    try:
        window = parse_duration(window_text)
    except WindowError as err:
        problems.append(str(err))

    query = params.get("query")
    if query == "":  # an emptied field of the trigger form
        query = None
    if query is not None and (not isinstance(query, dict) or not query):
        problems.append('query must be an Elasticsearch query DSL object, e.g. {"term": {"channel": "email"}}')

    output_format = params.get("output_format") or "jsonl.gz"
    if output_format not in OUTPUT_FORMATS:
        problems.append(f"output_format {output_format!r} is not one of {', '.join(OUTPUT_FORMATS)}")

    page_size = _int(params.get("page_size", 1000), "page_size", problems)
    if page_size is not None and not PAGE_SIZE_MIN <= page_size <= PAGE_SIZE_MAX:
        problems.append(f"page_size {page_size} is out of bounds; use {PAGE_SIZE_MIN}..{PAGE_SIZE_MAX}")

    bucket = str(params.get("s3_bucket") or "")
    if not _BUCKET.match(bucket):
        problems.append(f"s3_bucket {bucket!r} is not a valid bucket name (3-63 lowercase letters, digits, '.', '-')")

    prefix = str(params.get("s3_prefix") or "").strip("/")
    if prefix and not all(_PREFIX_SEGMENT.match(seg) and seg not in {".", ".."} for seg in prefix.split("/")):
        problems.append(f"s3_prefix {prefix!r} may only hold letters, digits and . _ = - between slashes")

    name = params.get("backfill_name") or (
        default_backfill_name(start, end, window_text) if start and end else "backfill"
    )
    if not _NAME.match(str(name)):
        problems.append(f"backfill_name {name!r} may only hold letters, digits, '.', '_' and '-' (max 128)")

    source = _source_config({**defaults, **(params.get("source") or {})}, problems)

    if problems:
        raise ConfigError(problems)
    assert start and end and page_size is not None and source is not None
    return BackfillConfig(
        start=start,
        end=end,
        window=window,
        window_text=window_text,
        query=query,
        backfill_name=str(name),
        s3_bucket=bucket,
        s3_prefix=prefix,
        output_format=output_format,
        page_size=page_size,
        dry_run=bool(params.get("dry_run", False)),
        force=bool(params.get("force", False)),
        balance_windows=bool(params.get("balance_windows", False)),
        source=source,
    )


def _int(value: Any, name: str, problems: list[str]) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | str):
        problems.append(f"{name} must be an integer")
        return None
    try:
        return int(value)
    except ValueError:
        problems.append(f"{name} must be an integer, not {value!r}")
        return None


def _source_config(raw: Mapping[str, Any], problems: list[str]) -> SourceConfig | None:
    before = len(problems)
    messages = raw.get("messages") or {}
    for key in ("index", "id_field", "timestamp_field"):
        if not messages.get(key):
            problems.append(f"source.messages.{key} is required")
    fields = messages.get("source_fields")
    if fields is not None and not (isinstance(fields, list) and all(isinstance(f, str) for f in fields)):
        problems.append("source.messages.source_fields must be null (whole documents) or a list of field names")

    related: list[RelatedIndex] = []
    names: set[str] = set()
    for i, item in enumerate(raw.get("related") or []):
        missing = [k for k in ("name", "index", "join_field") if not item.get(k)]
        if missing:
            problems.append(f"source.related[{i}] is missing {', '.join(missing)}")
            continue
        if item["name"] in names or item["name"] in {"message", "message_id", "window"}:
            problems.append(f"source.related[{i}].name {item['name']!r} is used twice or is reserved")
        names.add(item["name"])
        cardinality = item.get("cardinality", "many")
        if cardinality not in CARDINALITIES:
            problems.append(f"source.related[{i}].cardinality must be 'one' or 'many', not {cardinality!r}")
        sort = item.get("sort") or []
        if not isinstance(sort, list) or not all(isinstance(s, str) for s in sort):
            problems.append(f"source.related[{i}].sort must be a list of field names")
            sort = []
        elif cardinality == "one" and not sort:
            problems.append(
                f"source.related[{i}] ({item['name']}) has cardinality 'one' but no sort fields: name the fields "
                "that order its documents so the last is the current one, ending in a unique field, "
                'e.g. "sort": ["updated_at", "status_id"]'
            )
        related.append(RelatedIndex(item["name"], item["index"], item["join_field"], tuple(sort), cardinality))

    related_page_size = _int(raw.get("related_page_size", RELATED_PAGE_SIZE_MAX), "related_page_size", problems)
    if related_page_size is not None and not 1 <= related_page_size <= RELATED_PAGE_SIZE_MAX:
        problems.append(f"source.related_page_size must be within 1..{RELATED_PAGE_SIZE_MAX}")
    keep_alive = str(raw.get("pit_keep_alive", "2m"))
    if not _KEEP_ALIVE.match(keep_alive):
        problems.append(f"source.pit_keep_alive {keep_alive!r} must look like 30s, 2m or 1h")
    part_max_records = _int(raw.get("part_max_records", 100_000), "part_max_records", problems)
    part_max_bytes = _int(raw.get("part_max_bytes", 256 * 2**20), "part_max_bytes", problems)
    max_retries = _int(raw.get("max_retries", 6), "max_retries", problems)
    if (part_max_records or 0) < 1 or (part_max_bytes or 0) < 1024 or (max_retries or 0) < 0:
        problems.append("source.part_max_records >= 1, part_max_bytes >= 1024 and max_retries >= 0 are required")
    max_in_flight = _int(raw.get("max_in_flight", 3), "max_in_flight", problems)
    if max_in_flight is not None and not 1 <= max_in_flight <= MAX_IN_FLIGHT_MAX:
        problems.append(f"source.max_in_flight must be within 1..{MAX_IN_FLIGHT_MAX} (requests of one task at once)")
    rate = raw.get("max_messages_per_second")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0):
        problems.append("source.max_messages_per_second must be a positive number, or null for no cap")
    if len(problems) > before:
        return None
    return SourceConfig(
        es_conn_id=str(raw.get("es_conn_id", "elasticsearch_default")),
        aws_conn_id=str(raw.get("aws_conn_id", "aws_default")),
        messages_index=messages["index"],
        id_field=messages["id_field"],
        timestamp_field=messages["timestamp_field"],
        source_fields=tuple(fields) if fields is not None else None,
        related=tuple(related),
        related_page_size=related_page_size or RELATED_PAGE_SIZE_MAX,
        pit_keep_alive=keep_alive,
        request_timeout_s=float(raw.get("request_timeout_s", 60)),
        max_retries=max_retries or 0,
        part_max_records=part_max_records or 1,
        part_max_bytes=part_max_bytes or 1024,
        max_in_flight=max_in_flight or 1,
        max_messages_per_second=float(rate) if rate is not None else None,
    )
