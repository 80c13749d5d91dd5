"""Checking a finished backfill against its manifests and against Elasticsearch, read-only.

For every planned window: the manifest exists and matches the backfill's settings; every
object it lists exists with the recorded size and SHA-256 and decodes completely; no
object lies in the window's folder that the manifest does not list; the records decoded
equal the manifest's counts; Elasticsearch still counts as many messages for the window
and query; and the related documents of ``many`` indices number what Elasticsearch holds
for the window's message ids. Nothing is written.
"""

from __future__ import annotations

import hashlib
import logging
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from es_backfill import manifest
from es_backfill.config import BackfillConfig
from es_backfill.plan import window_counts
from es_backfill.sink import ObjectStore, window_prefix
from es_backfill.source import EsReader
from es_backfill.windows import Window, split

log = logging.getLogger(__name__)

TERMS_BATCH = 10_000


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
        bad = {f.window for f in self.findings}
        lines = [f"verified {self.windows} windows: {self.windows - len(bad)} ok, {len(bad)} with problems"]
        lines += [f"  {f.window}: {f.kind}: {f.detail}" for f in self.findings]
        return "\n".join(lines)


def planned_windows(config: BackfillConfig, store: ObjectStore) -> list[Window]:
    """The windows the backfill planned (saved by its plan task), or the plain split of its range."""
    return manifest.read_plan(store, config) or split(config.start, config.end, config.window, max_windows=10**9)


def verify(config: BackfillConfig, reader: EsReader, store: ObjectStore) -> VerifyReport:
    windows = planned_windows(config, store)
    report = VerifyReport(windows=len(windows))
    live_counts = window_counts(config, reader, windows)
    for window, live in zip(windows, live_counts, strict=True):
        for kind, detail in _verify_window(config, window, live, reader, store):
            report.findings.append(Finding(window.label, kind, detail))
    log.info("%s", report.render())
    return report


def _verify_window(
    config: BackfillConfig, window: Window, live_count: int, reader: EsReader, store: ObjectStore
) -> list[tuple[str, str]]:
    key = manifest.window_manifest_key(config, window)
    body = manifest.read(store, key)
    if body is None:
        return [("missing window", f"no manifest at {key}")]
    problem = manifest.completeness_problem(body, config, window)
    findings = [("manifest", problem)] if problem else []

    prefix = window_prefix(config.root_prefix, window.day, window.key) + "/"
    listed = {prefix + o["key"] for o in body["objects"]}
    findings += [("unexpected object", o["Key"]) for o in store.list(prefix) if o["Key"] not in listed | {key}]

    tally = _Tally(config, reader)
    for obj in body["objects"]:
        findings += _check_object(store, prefix + obj["key"], obj, tally)
    tally.flush()
    if tally.records != body["messages"]:
        findings.append(("record count", f"objects hold {tally.records} records, manifest says {body['messages']}"))
    if live_count != body["messages"]:
        findings.append(
            ("count mismatch", f"Elasticsearch counts {live_count} messages, output has {body['messages']}")
        )
    for spec in config.source.related:
        written = tally.related[spec.name]
        if written != body["related"].get(spec.name):
            findings.append(("related count", f"{spec.name}: objects hold {written}, manifest says {body['related']}"))
        elif spec.cardinality == "many" and tally.in_es[spec.name] != written:
            findings.append(
                ("related mismatch", f"{spec.name}: Elasticsearch holds {tally.in_es[spec.name]}, output has {written}")
            )
    return findings


class _Tally:
    """Counts a window's decoded records, and Elasticsearch's related documents for their ids in batches,
    so memory stays bounded by one batch of ids."""

    def __init__(self, config: BackfillConfig, reader: EsReader) -> None:
        self.config = config
        self.reader = reader
        self.records = 0
        self.related: Counter[str] = Counter()
        self.in_es: Counter[str] = Counter()
        self._ids: list[str] = []

    def add(self, record: dict[str, Any]) -> None:
        self.records += 1
        self._ids.append(record["message_id"])
        for spec in self.config.source.related:
            value = record.get(spec.name)
            self.related[spec.name] += len(value) if isinstance(value, list) else int(value is not None)
        if len(self._ids) >= TERMS_BATCH:
            self.flush()

    def flush(self) -> None:
        if not self._ids:
            return
        for spec in self.config.source.related:
            if spec.cardinality == "many":
                self.in_es[spec.name] += self.reader.count(spec.index, {"terms": {spec.join_field: self._ids}})
        self._ids = []


def _check_object(store: ObjectStore, key: str, obj: dict[str, Any], tally: _Tally) -> list[tuple[str, str]]:
    """Stream one listed object: its size, its checksum, and each record it decodes into ``tally``."""
    chunks = store.stream(key)
    if chunks is None:
        return [("missing object", key)]
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
                tally.add(orjson.loads(line))
        except (zlib.error, orjson.JSONDecodeError) as err:
            undecodable = str(err)
    if undecodable is None:
        try:
            if gunzip is not None and not gunzip.eof:
                raise zlib.error("gzip stream ends early")
            if pending.strip():
                tally.add(orjson.loads(pending))  # a json object, or a last line without newline
        except (zlib.error, orjson.JSONDecodeError) as err:
            undecodable = str(err)
    findings = []
    if size != obj["bytes"]:
        findings.append(("size mismatch", f"{key}: {size} bytes, manifest says {obj['bytes']} (truncated?)"))
    elif sha.hexdigest() != obj["sha256"]:
        findings.append(("checksum mismatch", key))
    if undecodable:
        findings.append(("undecodable", f"{key}: {undecodable}"))
    return findings


def _count_related(reader: EsReader, index: str, join_field: str, ids: list[str]) -> int:
    return sum(
        reader.count(index, {"terms": {join_field: ids[i : i + TERMS_BATCH]}}) for i in range(0, len(ids), TERMS_BATCH)
    )
