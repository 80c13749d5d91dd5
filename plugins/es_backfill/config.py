"""The validated, frozen configuration of one backfill run.

A run is described by the trigger conf (the DAG's Params) on top of a defaults file
(``include/backfill_defaults.json``: connection ids, index names, fields, related
indices, limits). :func:`from_params` checks everything that can be checked without
the network and reports every problem at once, each with how to fix it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, ValidationError

from es_backfill.sink import Encryption
from es_backfill.windows import WindowError, iso, parse_duration, parse_instant

OUTPUT_FORMATS = ("jsonl.gz", "jsonl", "json", "parquet")
DEFAULTS_NAME = "backfill_defaults.json"
PAGE_SIZE_MIN, PAGE_SIZE_MAX = 100, 10_000
# The highest `size` Elasticsearch allows per search by default (index.max_result_window).
RELATED_PAGE_SIZE_MAX = 10_000
MAX_IN_FLIGHT_MAX = 16
POOL_SLOTS_MAX = 1024  # no more windows than [core] max_map_length can run at once
CARDINALITIES = ("one", "many")
REDACT_ACTIONS = ("drop", "hash", "mask")
SSE_KINDS = ("AES256", "aws:kms")

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_PREFIX_SEGMENT = re.compile(r"^[A-Za-z0-9._=-]+$")
_GLUE_DATABASE = re.compile(r"^[a-z0-9_]{1,255}$")
_IP_ADDRESS = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
# Prefixes and suffixes S3 reserves for its own bucket names (access point aliases, Object Lambda, S3 Express).
_RESERVED_BUCKET_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_BUCKET_SUFFIXES = ("-s3alias", "--ol-s3", "--x-s3", ".mrap")

_NAME_TEXT = {"type": "string", "minLength": 1}
_COLUMN_NAME = re.compile(r"[a-z_][a-z0-9_]*")
_NAMES = {"type": "array", "items": _NAME_TEXT}

# The shape of the conf and of the source settings (defaults file + overrides), as JSON Schema: the types at
# every depth, bounds, and the known keys (an unknown key is a typo). Checked first, with the field named.
MESSAGES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["index", "id_field", "timestamp_field"],
    "properties": {
        "index": _NAME_TEXT,
        "id_field": _NAME_TEXT,
        "timestamp_field": _NAME_TEXT,
        "source_fields": {"type": ["array", "null"], "items": _NAME_TEXT},
        "source_excludes": _NAMES,
    },
}
RELATED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "index", "join_field"],
    "properties": {
        "name": _NAME_TEXT,
        "index": _NAME_TEXT,
        "join_field": _NAME_TEXT,
        "sort": _NAMES,
        "cardinality": {"enum": list(CARDINALITIES)},
        "source_fields": {"type": ["array", "null"], "items": _NAME_TEXT},
        "source_excludes": _NAMES,
    },
}
REDACT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["field", "action"],
    "properties": {
        "field": _NAME_TEXT,
        "action": {"enum": list(REDACT_ACTIONS)},
        "keep_start": {"type": "integer", "minimum": 0, "maximum": 64},
        "keep_end": {"type": "integer", "minimum": 0, "maximum": 64},
    },
}
# As an override in the conf: any of these keys, each replacing the defaults file's, but for ``messages``, whose
# keys are merged into the defaults file's (so {"messages": {"index": "x"}} changes the index only).
SOURCE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "es_conn_id": _NAME_TEXT,
        "aws_conn_id": _NAME_TEXT,
        "messages": {key: value for key, value in MESSAGES_SCHEMA.items() if key != "required"},
        "related": {"type": "array", "items": RELATED_SCHEMA},
        "related_page_size": {"type": "integer", "minimum": 1, "maximum": RELATED_PAGE_SIZE_MAX},
        "pit_keep_alive": {"type": "string", "pattern": r"^\d{1,6}[smh]$"},
        "request_timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
        "max_retries": {"type": "integer", "minimum": 0},
        "max_in_flight": {"type": "integer", "minimum": 1, "maximum": MAX_IN_FLIGHT_MAX},
        "max_messages_per_second": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 10**9},
        "part_max_records": {"type": "integer", "minimum": 1},
        "part_max_bytes": {"type": "integer", "minimum": 1024},
        "redact": {"type": "array", "items": REDACT_SCHEMA},
        "redaction_key_conn_id": {"type": ["string", "null"], "minLength": 1},
        "transform": {"type": ["string", "null"], "pattern": r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$"},
    },
}
# The defaults file with the overrides applied: complete.
MERGED_SOURCE_SCHEMA: dict[str, Any] = {
    **SOURCE_SCHEMA,
    "required": ["messages"],
    "properties": {**SOURCE_SCHEMA["properties"], "messages": MESSAGES_SCHEMA},
}
CONF_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "start": {"type": "string"},
        "end": {"type": "string"},
        "window": {"type": "string"},
        # "" is what the trigger form sends for an emptied field.
        "query": {"type": ["object", "null", "string"], "minProperties": 1, "maxLength": 0},
        "backfill_name": {"type": ["string", "null"]},
        "s3_bucket": {"type": "string"},
        "s3_prefix": {"type": "string"},
        "output_format": {"enum": list(OUTPUT_FORMATS)},
        "page_size": {"type": "integer", "minimum": PAGE_SIZE_MIN, "maximum": PAGE_SIZE_MAX},
        "balance_windows": {"type": "boolean"},
        "dry_run": {"type": "boolean"},
        "force": {"type": "boolean"},
        "force_lease": {"type": "boolean"},
        "sse": {"enum": [None, "", *SSE_KINDS]},
        "kms_key_id": {"type": ["string", "null"]},
        "pool_slots": {"type": "integer", "minimum": 1, "maximum": POOL_SLOTS_MAX},
        "target_duration": {"type": ["string", "null"]},
        "glue_database": {"type": ["string", "null"]},
        "json_fields": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "source": SOURCE_SCHEMA,
    },
}
# How to fix a value of the right type that a pattern or length refuses, by field name.
_FIXES = {
    "query": 'must be an Elasticsearch query DSL object, e.g. {"term": {"channel": "email"}}',
    "pit_keep_alive": "must look like 30s, 2m or 1h",
    "transform": "must be the dotted path of a function in plugins/, e.g. my_transforms.shape_record",
}
_TYPE_WORDS = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "true or false",
               "object": "an object", "array": "a list", "null": "null"}  # fmt: skip


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
    source_fields: tuple[str, ...] | None = None  # _source includes; None: whole documents
    source_excludes: tuple[str, ...] = ()

    def source_filter(self) -> Any:
        return source_filter(self.source_fields, self.source_excludes)

    def shaping(self) -> dict[str, Any]:
        """What of this index's settings shapes the output (the field selection only once set)."""
        settings = asdict(self)
        for key in ("source_fields", "source_excludes"):
            if settings[key] in (None, ()):
                del settings[key]
        return settings


def source_filter(includes: tuple[str, ...] | None, excludes: tuple[str, ...]) -> Any:
    """A search's ``_source``: ``True`` (whole documents), the includes as a list, or includes and excludes."""
    if not excludes:
        return list(includes) if includes else True
    return {**({"includes": list(includes)} if includes else {}), "excludes": list(excludes)}


@dataclass(frozen=True)
class RedactRule:
    """``field`` is ``message.<path>`` or ``<related name>.<path>``: what happens to that value in every record."""

    field: str
    action: str  # drop, hash (HMAC-SHA-256, hex) or mask (keep_start and keep_end characters, the rest '*')
    keep_start: int = 0
    keep_end: int = 0

    @property
    def section(self) -> str:
        return self.field.split(".", 1)[0]

    @property
    def path(self) -> str:
        """The field within the section's documents."""
        return self.field.split(".", 1)[1]


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
    source_excludes: tuple[str, ...] = ()  # the messages' _source excludes
    redact: tuple[RedactRule, ...] = ()
    redaction_key_conn_id: str | None = None  # the connection whose password is the HMAC key of "hash" rules
    transform: str | None = None  # dotted path of a function record -> record | None

    def messages_source(self) -> Any:
        return source_filter(self.source_fields, self.source_excludes)


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
    force_lease: bool = False  # take the backfill's lease from another run (see es_backfill.lease)
    encryption: Encryption | None = None  # server-side encryption of every object written; None: the bucket's
    pool_slots: int = 4  # the pool's size, which the dry run's time estimate assumes
    target_duration: timedelta | None = None  # the dry run suggests a pool size that finishes within it
    cluster_uuid: str = ""  # the source cluster, read by plan; see with_cluster()
    glue_database: str | None = None  # register the output's table there (es_backfill.catalog)
    json_fields: tuple[tuple[str, ...], ...] = ()  # table columns held as JSON text (es_backfill.table)

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
                **({"source_excludes": source.source_excludes} if source.source_excludes else {}),
            },
            "related": [spec.shaping() for spec in source.related],
            "parts": {"max_records": source.part_max_records, "max_bytes": source.part_max_bytes},
        }
        # Only once set, so that backfills planned before these options existed keep their fingerprint.
        if source.redact:
            settings["redact"] = [asdict(rule) for rule in source.redact]
        if self.json_fields:
            settings["json_fields"] = sorted(column_path_text(path) for path in self.json_fields)  # a set
        if source.transform:
            settings["transform"] = source.transform
            # Its code too: a resume after the function changed would mix old and new records.
            settings["transform_source_sha256"] = transform_source_digest(source.transform)
        return json.loads(json.dumps(settings, default=str))  # as a saved plan reads back: lists, not tuples

    def fingerprint(self) -> str:
        """A digest of :meth:`shaping_settings`; plans and manifests record it, and trust only their own."""
        shaping = json.dumps(self.shaping_settings(), sort_keys=True, default=str)
        return hashlib.sha256(shaping.encode()).hexdigest()[:16]


def transform_source_digest(path: str) -> str:
    """The SHA-256 of the source file of the module holding the transform ``path`` names, without importing it;
    ``""`` if it cannot be found (loading the transform then fails with the reason)."""
    try:
        spec = importlib.util.find_spec(path.rpartition(".")[0])
        origin = spec.origin if spec is not None else None
        return hashlib.sha256(Path(origin).read_bytes()).hexdigest() if origin else ""
    except (ImportError, ValueError, OSError):
        return ""


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
    """Validate the trigger conf on top of the defaults; raise :class:`ConfigError` listing every problem.

    The shape comes first (:data:`CONF_SCHEMA`: types at every depth, bounds, known keys); the checks of
    meaning then run on every field whose shape is right, so one call reports every problem."""
    problems, misshapen = _shape_problems(params, CONF_SCHEMA)

    def instant(name: str) -> datetime | None:
        value = params.get(name)
        if name in misshapen:
            return None
        if not value:
            problems.append(f"{name} is required (a UTC date or date-time, e.g. 2024-03-01 or 2024-03-01T06:00:00Z)")
            return None
        try:
            return parse_instant(value)
        except WindowError as err:
            problems.append(f"{name}: {err}")
            return None

    start, end = instant("start"), instant("end")
    if start and end and end <= start:
        problems.append(f"end ({iso(end)}) must be after start ({iso(start)}); the range is half-open [start, end)")

    window_text = "1d" if "window" in misshapen else (params.get("window") or "1d").strip()
    window = timedelta(days=1)
    try:
        window = parse_duration(window_text)
    except WindowError as err:
        problems.append(str(err))

    query = None if "query" in misshapen else params.get("query") or None  # "": an emptied form field

    bucket = "" if "s3_bucket" in misshapen else params.get("s3_bucket") or ""
    if "s3_bucket" not in misshapen:
        problems += _bucket_problems(bucket)

    prefix = "" if "s3_prefix" in misshapen else (params.get("s3_prefix") or "").strip("/")
    if prefix and not all(_PREFIX_SEGMENT.fullmatch(seg) and seg not in {".", ".."} for seg in prefix.split("/")):
        problems.append(f"s3_prefix {prefix!r} may only hold letters, digits and . _ = - between slashes")

    name = None if "backfill_name" in misshapen else params.get("backfill_name")
    name = name or (default_backfill_name(start, end, window_text) if start and end else "backfill")
    if not _NAME.fullmatch(name):
        problems.append(f"backfill_name {name!r} may only hold letters, digits, '.', '_' and '-' (max 128)")

    encryption = None if {"sse", "kms_key_id"} & misshapen else _encryption(params, problems)

    target_text = None if "target_duration" in misshapen else (params.get("target_duration") or "").strip()
    target = None
    if target_text:
        try:
            target = parse_duration(target_text)
        except WindowError:
            problems.append(f"target_duration {target_text!r} is not a positive duration like 6h, 90m or 2d")

    glue_database = None if "glue_database" in misshapen else (params.get("glue_database") or None)
    if glue_database and not _GLUE_DATABASE.fullmatch(glue_database):
        problems.append(
            f"glue_database {glue_database!r} may only hold lower-case letters, digits and '_' (max 255), as Athena "
            "requires of database names"
        )

    json_fields = () if "json_fields" in misshapen else _json_fields(params.get("json_fields") or [], problems)

    source = None
    if "source" not in misshapen:
        override = params.get("source") or {}
        merged = {**defaults, **override}
        if isinstance(defaults.get("messages"), dict) and isinstance(override.get("messages"), dict):
            merged["messages"] = {**defaults["messages"], **override["messages"]}
        source_problems, _ = _shape_problems(merged, MERGED_SOURCE_SCHEMA, "source")
        problems += source_problems
        source = None if source_problems else _source_config(merged, problems)

    if source is not None:
        columns = ["message", *(spec.name for spec in source.related)]
        problems += [
            f"json_fields[{i}]: {column_path_text(path)!r} is a field of no column: the record's columns are "
            f"{', '.join(columns)} (a single name is a top-level key a transform adds)"
            for i, path in enumerate(json_fields) if len(path) > 1 and path[0] not in columns
        ]  # fmt: skip
        problems += [
            f"json_fields[{i}]: {path[0]!r} differs only in case from the column {column!r}, which a record cannot "
            f"also have (Athena's names are case-insensitive): name {column!r} or one of its fields"
            for i, path in enumerate(json_fields) for column in columns
            if path[0] != column and path[0].lower() == column.lower()
        ]  # fmt: skip

    if problems:
        raise ConfigError(problems)
    assert start and end and source is not None
    return BackfillConfig(
        start=start,
        end=end,
        window=window,
        window_text=window_text,
        query=query,
        backfill_name=name,
        s3_bucket=bucket,
        s3_prefix=prefix,
        output_format=params.get("output_format") or "jsonl.gz",
        page_size=int(params.get("page_size", 1000)),
        dry_run=params.get("dry_run", False),
        force=params.get("force", False),
        force_lease=params.get("force_lease", False),
        balance_windows=params.get("balance_windows", False),
        source=source,
        encryption=encryption,
        pool_slots=int(params.get("pool_slots", 4)),
        target_duration=target,
        glue_database=glue_database,
        json_fields=json_fields,
    )


def column_path(text: str) -> tuple[str, ...]:
    """The path of a table column or struct field written as ``message.sender.tags``: names joined by ``.``,
    a name holding ``.`` or a backquote (a key written with dots, ``{"a.b": 1}``) in backquotes, a backquote in
    it doubled (``message.`a.b```). ValueError if ``text`` is not such a path."""
    names: list[str] = []
    i = 0
    while True:
        if text.startswith("`", i):
            name, i = "", i + 1
            while True:
                end = text.find("`", i)
                if end < 0:
                    raise ValueError(f"{text!r} has a backquote that is not closed")
                name, i = name + text[i:end], end + 1
                if not text.startswith("`", i):
                    break
                name, i = name + "`", i + 1
        else:
            end = text.find(".", i)
            name, i = (text[i:], len(text)) if end < 0 else (text[i:end], end)
            if not name or "`" in name:
                raise ValueError(f"{text!r} has an empty name or a stray backquote; quote such names in backquotes")
        names.append(name)
        if i == len(text):
            return tuple(names)
        if text[i] != ".":
            raise ValueError(f"{text!r}: a quoted name must be followed by '.' or the end")
        i += 1


def column_path_text(path: tuple[str, ...] | list[str]) -> str:
    """``path`` as :func:`column_path` reads it."""
    return ".".join(name if name and not {".", "`"} & set(name) else "`" + name.replace("`", "``") + "`"
                    for name in path)  # fmt: skip


def _json_fields(texts: list[str], problems: list[str]) -> tuple[tuple[str, ...], ...]:
    paths = []
    for i, text in enumerate(texts):
        try:
            path = column_path(text)
        except ValueError as err:
            problems.append(f"json_fields[{i}]: {err}")
            continue
        if path[0].lower() in ("message_id", "window"):
            problems.append(f"json_fields[{i}]: {path[0]} is the record's {path[0]}, a string; name another field")
        elif path[0].lower() == "dt":
            problems.append(f"json_fields[{i}]: dt is the table's partition column, which no record field can be")
        elif path not in paths:
            paths.append(path)
    return tuple(paths)


def _shape_problems(instance: Any, schema: dict[str, Any], root: str = "") -> tuple[list[str], set[str]]:
    """Every way ``instance`` departs from ``schema``, each naming the field and the fix, and the top-level
    keys concerned."""
    errors = sorted(Draft202012Validator(schema).iter_errors(instance), key=lambda e: [str(p) for p in e.path])
    return [_describe(error, root) for error in errors], {str(e.path[0]) for e in errors if e.path}


def _describe(error: ValidationError, root: str) -> str:
    path = root
    for part in error.path:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    value, schema, kind = error.instance, error.schema, error.validator
    shown = json.dumps(value, default=str)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    if kind == "additionalProperties":
        known = schema.get("properties", {})
        unknown = ", ".join(repr(k) for k in value if k not in known)
        return f"unknown key {unknown} in {path or 'the conf'}; the known keys are {', '.join(known)}"
    if kind == "required":
        missing = [k for k in error.validator_value if k not in value]
        return f"{f'{path}.' if path else ''}{missing[0]} is required"
    if kind == "type":
        types = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        hint = " (JSON true or false, not a string)" if types == ["boolean"] and isinstance(value, str) else ""
        return f"{path} must be {' or '.join(_TYPE_WORDS[t] for t in types)}, not {shown}{hint}"
    if kind == "enum":
        allowed = ", ".join(json.dumps(v) for v in error.validator_value if v != "")
        return f"{path} must be one of {allowed}, not {shown}"
    if kind in {"minimum", "maximum", "exclusiveMinimum"}:
        if "minimum" in schema and "maximum" in schema:
            bound = f"within {schema['minimum']}..{schema['maximum']}"
        else:
            words = {"minimum": "at least", "exclusiveMinimum": "greater than", "maximum": "at most"}
            bound = " and ".join(f"{word} {schema[key]}" for key, word in words.items() if key in schema)
        return f"{path} must be {bound}, not {shown}"
    if kind == "minLength":
        return f"{path} must not be empty"
    last = path.rsplit(".", 1)[-1]
    if last in _FIXES:
        return f"{path} {_FIXES[last]}, not {shown}"
    return f"{path}: {error.message}"


def _bucket_problems(bucket: str) -> list[str]:
    """Why S3 would refuse ``bucket`` as a bucket name (general purpose buckets' rules)."""
    fix = "use 3-63 lowercase letters, digits, '.' and '-', starting and ending with a letter or digit"
    if not _BUCKET.fullmatch(bucket):
        return [f"s3_bucket {bucket!r} is not a valid bucket name: {fix}"]
    problems = []
    if _IP_ADDRESS.fullmatch(bucket):
        problems.append(f"s3_bucket {bucket!r} looks like an IP address, which S3 refuses as a bucket name")
    if ".." in bucket or ".-" in bucket or "-." in bucket:
        problems.append(f"s3_bucket {bucket!r} has '..', '.-' or '-.', which S3 refuses in a bucket name")
    for reserved in _RESERVED_BUCKET_PREFIXES:
        if bucket.startswith(reserved):
            problems.append(f"s3_bucket {bucket!r} starts with {reserved!r}, a prefix S3 reserves")
    for reserved in _RESERVED_BUCKET_SUFFIXES:
        if bucket.endswith(reserved):
            problems.append(f"s3_bucket {bucket!r} ends with {reserved!r}, a suffix S3 reserves")
    return problems


def _encryption(params: Mapping[str, Any], problems: list[str]) -> Encryption | None:
    """Server-side encryption of every object written: ``sse`` AES256 or aws:kms, with ``kms_key_id`` for the
    latter (else the bucket's AWS managed key)."""
    sse, key = params.get("sse") or None, params.get("kms_key_id") or None
    if key and sse != "aws:kms":
        problems.append('kms_key_id needs sse "aws:kms" (SSE-KMS); set sse, or drop kms_key_id')
        return None
    return Encryption(sse, key) if sse else None


def _source_config(raw: Mapping[str, Any], problems: list[str]) -> SourceConfig | None:
    """The source settings, whose shape :data:`SOURCE_SCHEMA` has checked; ``None`` if their meaning is wrong."""
    before = len(problems)
    messages = raw["messages"]
    related: list[RelatedIndex] = []
    names: set[str] = set()
    indices = {messages["index"]: "source.messages.index"}
    for i, item in enumerate(raw.get("related", [])):
        if not _COLUMN_NAME.fullmatch(item["name"]):
            problems.append(
                f"source.related[{i}].name {item['name']!r} is a key of every record and a column of the output's "
                "table: use lower-case letters, digits and _, not starting with a digit (Athena's column names)"
            )
        elif item["name"] in names or item["name"] in {"message", "message_id", "window", "dt"}:
            problems.append(
                f"source.related[{i}].name {item['name']!r} is used twice or is reserved (message, message_id, "
                "window and dt, the table's partition column)"
            )
        names.add(item["name"])
        if item["index"] in indices:
            problems.append(
                f"source.related[{i}].index {item['index']!r} is already {indices[item['index']]}: "
                "each index may be named once"
            )
        indices.setdefault(item["index"], f"source.related[{i}].index")
        cardinality, sort = item.get("cardinality", "many"), item.get("sort", [])
        if cardinality == "one" and not sort:
            problems.append(
                f"source.related[{i}] ({item['name']}) has cardinality 'one' but no sort fields: name the fields "
                "that order its documents so the last is the current one, ending in a unique field, "
                'e.g. "sort": ["updated_at", "status_id"]'
            )
        fields = item.get("source_fields")
        related.append(
            RelatedIndex(
                item["name"], item["index"], item["join_field"], tuple(sort), cardinality,
                source_fields=tuple(fields) if fields else None,
                source_excludes=tuple(item.get("source_excludes", [])),
            )
        )  # fmt: skip
    redact = _redact_rules(raw, [spec.name for spec in related], problems)
    problems += [
        f"source.redact: {rule.field!r} would redact the messages' {kind} field {field!r}, which addresses the "
        "record and its window (verify would find every record outside its window): redact another field"
        for rule in redact
        if rule.section == "message"
        for kind, field in (("id", messages["id_field"]), ("timestamp", messages["timestamp_field"]))
        if field == rule.path or field.startswith(rule.path + ".")
    ]
    if len(problems) > before:
        return None
    fields = messages.get("source_fields")
    rate = raw.get("max_messages_per_second")
    return SourceConfig(
        es_conn_id=raw.get("es_conn_id", "elasticsearch_default"),
        aws_conn_id=raw.get("aws_conn_id", "aws_default"),
        messages_index=messages["index"],
        id_field=messages["id_field"],
        timestamp_field=messages["timestamp_field"],
        source_fields=tuple(fields) if fields else None,
        source_excludes=tuple(messages.get("source_excludes", [])),
        related=tuple(related),
        redact=redact,
        redaction_key_conn_id=raw.get("redaction_key_conn_id"),
        transform=raw.get("transform"),
        related_page_size=int(raw.get("related_page_size", RELATED_PAGE_SIZE_MAX)),
        pit_keep_alive=raw.get("pit_keep_alive", "2m"),
        request_timeout_s=float(raw.get("request_timeout_s", 60)),
        max_retries=int(raw.get("max_retries", 6)),
        part_max_records=int(raw.get("part_max_records", 100_000)),
        part_max_bytes=int(raw.get("part_max_bytes", 256 * 2**20)),
        max_in_flight=int(raw.get("max_in_flight", 3)),
        max_messages_per_second=float(rate) if rate is not None else None,
    )


def _redact_rules(raw: Mapping[str, Any], related_names: list[str], problems: list[str]) -> tuple[RedactRule, ...]:
    """The ``redact`` rules, each on ``message.<path>`` or ``<related name>.<path>``, once per field; ``hash``
    rules need ``redaction_key_conn_id`` (the key never comes from the conf)."""
    sections = ["message", *related_names]
    rules: list[RedactRule] = []
    for i, item in enumerate(raw.get("redact", [])):
        rule = RedactRule(item["field"], item["action"], item.get("keep_start", 0), item.get("keep_end", 0))
        where = f"source.redact[{i}]"
        if "." not in rule.field or rule.section not in sections or "" in rule.path.split("."):
            problems.append(
                f"{where}.field {rule.field!r} must be a section and a field path: "
                f"one of {', '.join(f'{s}.<field>' for s in sections)}"
            )
        elif any(char in rule.field for char in "*?[]"):
            problems.append(
                f"{where}.field {rule.field!r} is a pattern, but a rule names one field: write a rule per field "
                f"(e.g. {rule.section}.sender.email), or name the object that holds them all (e.g. "
                f"{rule.section}.sender) to redact everything in it"
            )
        elif any(r.field == rule.field for r in rules):
            problems.append(f"{where}.field {rule.field!r} has a rule already: one rule per field")
        elif overlapping := [r.field for r in rules if rule.field.startswith(r.field + ".")
                             or r.field.startswith(rule.field + ".")]:  # fmt: skip
            problems.append(
                f"{where}.field {rule.field!r} lies in or holds {overlapping[0]!r}, which has a rule already: one rule "
                "would redact what the other did (differently in dotted and nested documents); keep one of them"
            )
        if rule.action == "hash" and not raw.get("redaction_key_conn_id"):
            problems.append(
                f"{where} hashes {rule.field!r}, which needs source.redaction_key_conn_id: an Airflow connection "
                "(or a Secrets Manager secret behind one) whose password is the HMAC key"
            )
        if rule.action != "mask" and (rule.keep_start or rule.keep_end):
            problems.append(f"{where}: keep_start and keep_end apply to mask rules only")
        rules.append(rule)
    return tuple(rules)
