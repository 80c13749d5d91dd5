"""Checking a finished backfill against its manifests and against Elasticsearch, read-only.

For every planned window: the manifest exists and matches the backfill's settings (and
the cluster verified against); every object it lists exists with the recorded size and
SHA-256 and decodes completely; no object lies in the window's folder that the manifest
does not list; the records decoded equal the manifest's counts and carry exactly the
message ids it recorded, each in this window by its timestamp; Elasticsearch still counts
as many messages for the window and query; the related documents of ``many`` indices
number what Elasticsearch holds for the window's message ids, and as many records carry a
document of a ``one`` index as there are message ids with one. Across the backfill: no
message id appears twice, and nothing lies under the root that the plan does not account
for (other plans' windows, stray files). Nothing is written.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from es_backfill import exactjson, fieldpath, manifest
from es_backfill.config import BackfillConfig, RedactRule, RelatedIndex
from es_backfill.plan import window_counts
from es_backfill.records import MessageIds
from es_backfill.sink import ObjectStore
from es_backfill.source import Reader
from es_backfill.windows import Window, WindowError, parse_instant, split

log = logging.getLogger(__name__)

TERMS_BATCH = 10_000
PARQUET_IN_MEMORY = 64 * 2**20  # a Parquet object larger than this is spooled to disk to be read
BACKFILL = "backfill"  # where findings about the backfill as a whole are reported
_SUBMICRO = re.compile(r"(\.\d{6})\d+")  # Python reads at most microseconds


@dataclass(frozen=True)
class Finding:
    window: str
    kind: str
    detail: str


@dataclass
class VerifyReport:
    windows: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    def render(self) -> str:
        bad = {f.window for f in self.findings} - {BACKFILL}
        lines = [f"verified {self.windows} windows: {self.windows - len(bad)} ok, {len(bad)} with problems"]
        if any(f.window == BACKFILL for f in self.findings):
            lines.append("the backfill as a whole has problems")
        lines += [f"  {f.window}: {f.kind}: {f.detail}" for f in self.findings]
        return "\n".join(lines)


def planned_windows(config: BackfillConfig, saved: manifest.SavedPlan | None) -> tuple[list[Window], str | None]:
    """The windows the backfill planned (``saved`` by its plan task), or the plain split of its range; and why
    the saved plan could not be used, if there is one that does not match the settings."""
    if saved is not None and saved.fingerprint == config.fingerprint():
        return saved.windows, None
    windows = split(config.start, config.end, config.window, max_windows=10**9)
    if saved is None:
        return windows, None
    return windows, f"the saved plan was made with other settings: {'; '.join(saved.differences(config))}"


def verify(config: BackfillConfig, reader: Reader, store: ObjectStore, *, redaction: bool = False) -> VerifyReport:
    """Check the backfill of ``config``, whose ``cluster_uuid`` is the cluster ``reader`` reads; with
    ``redaction``, also that every record obeys the redaction rules (see :class:`RedactionCheck`)."""
    saved = manifest.read_plan(store, config)
    windows, plan_problem = planned_windows(config, saved)
    report = VerifyReport(windows=len(windows))
    if plan_problem:
        report.findings.append(Finding(BACKFILL, "plan", plan_problem))
    report.findings += [
        Finding(BACKFILL, "unaccounted object", key) for key in manifest.foreign_objects(store, config, windows)
    ]
    seen = _Seen(MessageIds("message_id", spill=True), RedactionCheck(config.source.redact) if redaction else None)
    seen.columns = saved.table if saved is not None else None  # Parquet's schema
    live_counts = window_counts(config, reader, windows)
    for window, live in zip(windows, live_counts, strict=True):
        for kind, detail in _verify_window(config, window, live, reader, store, seen):
            report.findings.append(Finding(window.label, kind, detail))
    report.findings += [Finding(BACKFILL, "message ids", problem) for problem in seen.ids.problems()]
    if seen.redaction is not None:
        report.findings += [Finding(BACKFILL, "redaction", problem) for problem in seen.redaction.problems()]
        log.info("Redaction: %s", seen.redaction.summary())
    if seen.unchecked_timestamps:
        log.warning("%s records carry no %s, so whether they lie in their window was not checked",
                    seen.unchecked_timestamps, config.source.timestamp_field)  # fmt: skip
    log.info("%s", report.render())
    return report


def _verify_window(
    config: BackfillConfig, window: Window, live_count: int, reader: Reader, store: ObjectStore, seen: _Seen
) -> list[tuple[str, str]]:
    key = manifest.window_manifest_key(config, window)
    body = manifest.read(store, key)
    if body is None:
        return [("missing window", f"no manifest at {key}")]
    problem = manifest.completeness_problem(body, config, window)
    findings = [("manifest", problem)] if problem else []
    if not (isinstance(body.get("objects"), list) and isinstance(body.get("related"), dict)
            and isinstance(body.get("messages"), int)):  # fmt: skip
        return [*findings, ("manifest", f"{key} lacks its objects, messages or related counts")]

    prefix = manifest.window_folder(config, window)
    listed = {prefix + o["key"] for o in body["objects"]}
    findings += [("unexpected object", o["Key"]) for o in store.list(prefix) if o["Key"] not in listed | {key}]

    tally = _Tally(config, window, reader, seen)
    for obj in body["objects"]:
        findings += _check_object(store, prefix + obj["key"], obj, tally)
    tally.flush()
    findings += tally.findings()
    if tally.records != body["messages"]:
        findings.append(("record count", f"objects hold {tally.records} records, manifest says {body['messages']}"))
    if tally.ids_sha256() != (body.get("message_ids") or {}).get("sha256"):
        findings.append(("message ids", "the records' message ids are not those the manifest recorded"))
    if live_count != manifest.written_and_dropped(body):
        findings.append(
            ("count mismatch", f"Elasticsearch counts {live_count} messages, output has {body['messages']}"
             f" ({body.get('dropped', 0)} dropped by the transform)")
        )  # fmt: skip
    for spec in config.source.related:
        written = tally.related[spec.name]
        if written != body["related"].get(spec.name):
            findings.append(("related count", f"{spec.name}: objects hold {written}, manifest says {body['related']}"))
        elif tally.in_es[spec.name] != written:
            what = "documents" if spec.cardinality == "many" else "messages with a document"
            findings.append(
                ("related mismatch",
                 f"{spec.name}: Elasticsearch holds {tally.in_es[spec.name]} {what}, output has {written}")
            )  # fmt: skip
    return findings


@dataclass
class _Seen:
    """What verify gathers across all windows: every message id, and records it could not place in time."""

    ids: MessageIds
    redaction: RedactionCheck | None = None
    unchecked_timestamps: int = 0
    columns: dict[str, Any] | None = None  # the plan's table columns: Parquet's schema


class _Tally:
    """Checks a window's decoded records one by one (id, window, timestamp) and counts them, and
    Elasticsearch's related documents for their ids in batches, so memory stays bounded by one batch
    of ids (and the backfill-wide id check)."""

    def __init__(self, config: BackfillConfig, window: Window, reader: Reader, seen: _Seen) -> None:
        self.config = config
        self.window = window
        self.reader = reader
        self.seen = seen
        self.records = 0
        self.related: Counter[str] = Counter()
        self.in_es: Counter[str] = Counter()
        self.outside: list[str] = []
        self._outside = 0
        self._sha = hashlib.sha256()
        self._batch: list[str] = []

    def add(self, record: Any) -> None:
        self.records += 1
        if not isinstance(record, dict):
            record = {}  # counted, and reported below as not of this window
        message_id = record.get("message_id")
        self.seen.ids.add(message_id, f"a record of window {self.window.label}")
        self._sha.update(f"{message_id}\n".encode("utf-8", "surrogatepass"))
        if message_id is not None:
            self._batch.append(str(message_id))
        if record.get("window") != self.window.key or not self._in_window(record.get("message")):
            self._outside += 1
            if len(self.outside) < MessageIds.EXAMPLES:
                self.outside.append(str(message_id))
        for spec in self.config.source.related:
            value = record.get(spec.name)
            self.related[spec.name] += len(value) if isinstance(value, list) else int(value is not None)
        if self.seen.redaction is not None:
            self.seen.redaction.check(record, f"{self.window.label} message {message_id!r}")
        if len(self._batch) >= TERMS_BATCH:
            self.flush()

    def _in_window(self, message: Any) -> bool:
        value: Any = message
        for part in self.config.source.timestamp_field.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            self.seen.unchecked_timestamps += 1  # source_fields left it out
            return True
        moment = _instant(value)
        return moment is not None and self.window.start <= moment < self.window.end

    def flush(self) -> None:
        if not self._batch:
            return
        for spec in self.config.source.related:
            self.in_es[spec.name] += _attachments(self.reader, spec, self._batch)
        self._batch = []

    def ids_sha256(self) -> str:
        return self._sha.hexdigest()

    def findings(self) -> list[tuple[str, str]]:
        if not self._outside:
            return []
        return [
            ("outside window", f"{self._outside} records are not of this window or their "
             f"{self.config.source.timestamp_field} lies outside it, e.g. {', '.join(self.outside)}")
        ]  # fmt: skip


class RedactionCheck:
    """Proves on the output what the redaction rules promise, in every form a field can take (nested, dotted,
    mixed, in lists of objects): no value at the path of a ``drop`` rule, only 64 hex characters (or ``null``)
    at a ``hash`` rule's, and only what its mask leaves (``keep_start`` characters, ``*``s, ``keep_end``
    characters; or ``null``) at a ``mask`` rule's. Keeps at most ``MessageIds.EXAMPLES`` examples per rule."""

    def __init__(self, rules: tuple[RedactRule, ...]) -> None:
        self.rules = rules
        self.values: Counter[str] = Counter()  # values checked per rule
        self.offences: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self._patterns = {rule.field: _redacted_pattern(rule) for rule in rules if rule.action != "drop"}

    def check(self, record: dict[str, Any], where: str) -> None:
        for rule in self.rules:
            section = record.get(rule.section)
            if rule.action == "drop":
                offends = fieldpath.present(section, rule.path)
                self.values[rule.field] += 1
            else:
                found = list(fieldpath.values(section, rule.path))
                self.values[rule.field] += len(found)
                pattern = self._patterns[rule.field]
                offends = any(not (v is None or (isinstance(v, str) and pattern.fullmatch(v))) for v in found)
            if offends:
                self.offences[rule.field] += 1
                examples = self.examples.setdefault(rule.field, [])
                if len(examples) < MessageIds.EXAMPLES:
                    examples.append(where)

    def summary(self) -> str:
        parts = [
            f"{r.field} ({r.action}): {self.values[r.field]} checked, {self.offences[r.field]} offending"
            for r in self.rules
        ]
        return ", ".join(parts) or "no rules"

    def problems(self) -> list[str]:
        return [
            f"{self.offences[rule.field]} records break the {rule.action} rule on {rule.field!r} "
            f"(e.g. {', '.join(self.examples[rule.field])})"
            for rule in self.rules
            if self.offences[rule.field]
        ]


def _redacted_pattern(rule: RedactRule) -> re.Pattern[str]:
    """What a value may look like after a ``hash`` or ``mask`` rule."""
    if rule.action == "hash":
        return re.compile(r"[0-9a-f]{64}")
    # Kept characters around at least one '*', or only '*'s when too short to keep any.
    return re.compile(rf"(?s:.{{{rule.keep_start}}}\*+.{{{rule.keep_end}}}|\**)")


def _instant(value: Any) -> datetime | None:
    """A timestamp as Elasticsearch's default date format reads it: ISO 8601 or epoch milliseconds."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value / 1000, tz=UTC)
    try:
        return parse_instant(_SUBMICRO.sub(r"\1", str(value)))
    except WindowError:
        return None


def _attachments(reader: Reader, spec: RelatedIndex, ids: list[str]) -> int:
    """What the output should carry of ``spec``'s index for ``ids``: for ``many``, the (document, message id)
    pairs (a document whose join field names several of them counts once for each, as the output attaches it
    to each); for ``one``, the messages that have a document at all."""
    aggs = {"ids": {"terms": {"field": spec.join_field, "include": ids, "size": len(ids)}}}
    response = reader.search(spec.index, {"size": 0, "query": {"terms": {spec.join_field: ids}}, "aggs": aggs})
    buckets = response["aggregations"]["ids"]["buckets"]
    return sum(bucket["doc_count"] for bucket in buckets) if spec.cardinality == "many" else len(buckets)


def _check_object(store: ObjectStore, key: str, obj: dict[str, Any], tally: _Tally) -> list[tuple[str, str]]:
    """Stream one listed object: its size, its checksum, and each record it decodes into ``tally``."""
    chunks = store.stream(key)
    if chunks is None:
        return [("missing object", key)]
    if key.endswith(".parquet"):
        return _check_parquet(key, chunks, obj, tally)
    sha, size, pending = hashlib.sha256(), 0, b""
    gunzip = zlib.decompressobj(wbits=31) if key.endswith(".gz") else None
    undecodable = None
    for chunk in chunks:
        sha.update(chunk)
        size += len(chunk)
        if undecodable is not None:
            continue
        try:
            pending += gunzip.decompress(chunk) if gunzip else chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                tally.add(exactjson.loads(line))
        except (zlib.error, ValueError) as err:
            undecodable = str(err)
    if undecodable is None:
        try:
            if gunzip is not None and not gunzip.eof:
                raise zlib.error("gzip stream ends early")
            if pending.strip():
                tally.add(exactjson.loads(pending))  # a json object, or a last line without newline
        except (zlib.error, ValueError) as err:
            undecodable = str(err)
    return _object_findings(key, obj, size, sha.hexdigest(), undecodable)


def _check_parquet(key: str, chunks: Iterator[bytes], obj: dict[str, Any], tally: _Tally) -> list[tuple[str, str]]:
    """As :func:`_check_object`, for a Parquet file: spooled to local disk once large (its footer comes last),
    then decoded in batches of rows."""
    from es_backfill.parquet import read_records  # pyarrow, only for the backfills that need it

    sha, size = hashlib.sha256(), 0
    with tempfile.SpooledTemporaryFile(max_size=PARQUET_IN_MEMORY) as spool:
        for chunk in chunks:
            sha.update(chunk)
            size += len(chunk)
            spool.write(chunk)
        spool.seek(0)
        undecodable = None
        try:
            if tally.seen.columns is None:
                raise ValueError("the backfill's plan has no table columns, which Parquet's schema comes from")
            for record in read_records(spool, tally.seen.columns):
                tally.add(record)
        except ValueError as err:
            undecodable = str(err)
    return _object_findings(key, obj, size, sha.hexdigest(), undecodable)


def _object_findings(
    key: str, obj: dict[str, Any], size: int, sha256: str, undecodable: str | None
) -> list[tuple[str, str]]:
    findings = []
    if size != obj["bytes"]:
        findings.append(("size mismatch", f"{key}: {size} bytes, manifest says {obj['bytes']} (truncated?)"))
    elif sha256 != obj["sha256"]:
        findings.append(("checksum mismatch", key))
    if undecodable:
        findings.append(("undecodable", f"{key}: {undecodable}"))
    return findings
