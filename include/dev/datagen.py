"""Synthetic messages and their related documents, for tests, the demo and benchmarks.

One ``messages`` index and three related indices keyed by ``message_id``:

* ``history`` — 0..``max_history`` events per message (created, edited, forwarded...);
* ``status`` — at most one current status per message, with the changes that led to it;
* ``audit`` — 0..``max_audit`` access records per message.

A share of messages (``no_related_ratio``) has no related document at all. Text mixes
scripts and emoji. Everything is a pure function of the :class:`DatasetSpec`, so the same
seed gives the same documents; :func:`load` creates the indices and bulk-loads them with
the client's bulk helpers, and returns how many documents each index received. It never
deletes or writes an index that exists already (:class:`IndexExists`): on a cluster of
yours, seed under names of your own (``--prefix``).

Command line: ``python -m include.dev.datagen --es-url URL --messages 10000 --prefix try-1-``.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAPPINGS_DIR = Path(__file__).resolve().parents[1] / "mappings"
ROLES = ("messages", "history", "status", "audit")
# The week make demo and make servers seed.
SEED_WEEK = (datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 8, tzinfo=UTC))

_WORDS = (
    "invoice",
    "meeting",
    "report",
    "shipment",
    "delay",
    "approved",
    "question",
    "follow-up",
    "Grüße",
    "naïve",
    "café",
    "Zürich",
    "Ωmega",
    "Привет",
    "日本語",
    "テスト",
    "中文",
    "한국어",
    "مرحبا",
    "שלום",
    "नमस्ते",
    "emoji🚀",
    "ok👍",
    "€100",
    "‰",
    "tab\tseparated",
    'quote"d',
    "back\\slash",
)
_CHANNELS = ("email", "sms", "chat", "push")
_EVENTS = ("created", "edited", "forwarded", "replied", "archived", "restored")
_STATUSES = ("received", "queued", "delivered", "read", "failed", "bounced")
_ACTIONS = ("view", "export", "print", "share", "redact")


@dataclass(frozen=True)
class IndexNames:
    """Names of the four indices; defaults match ``include/backfill_defaults.json``."""

    messages: str = "messages"
    history: str = "history"
    status: str = "status"
    audit: str = "audit"

    def of(self, role: str) -> str:
        return getattr(self, role)


@dataclass(frozen=True)
class DatasetSpec:
    """What to generate. ``start``/``end`` bound message timestamps, half-open: [start, end)."""

    messages: int
    start: datetime
    end: datetime
    seed: int = 42
    max_history: int = 6
    max_audit: int = 4
    no_related_ratio: float = 0.1
    body_words: int = 40
    indices: IndexNames = field(default_factory=IndexNames)

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("start and end must be timezone-aware (UTC)")
        if self.end <= self.start:
            raise ValueError(f"end ({self.end}) must be after start ({self.start})")
        if self.messages < 0 or self.max_history < 0 or self.max_audit < 0:
            raise ValueError("messages, max_history and max_audit must not be negative")
        if not 0.0 <= self.no_related_ratio <= 1.0:
            raise ValueError("no_related_ratio must be within [0, 1]")


@dataclass
class DatasetCounts:
    """How many documents each index got."""

    messages: int = 0
    history: int = 0
    status: int = 0
    audit: int = 0

    def add(self, role: str) -> None:
        setattr(self, role, getattr(self, role) + 1)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def iso_millis(moment: datetime) -> str:
    """UTC timestamp with millisecond precision, the way Elasticsearch stores ``date`` fields."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def message_id(index: int) -> str:
    return f"msg-{index:09d}"


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def _timestamp(rng: random.Random, start: datetime, span_ms: int) -> datetime:
    return start + timedelta(milliseconds=rng.randrange(span_ms))


def generate(spec: DatasetSpec) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Yield ``(role, document id, source)`` for every document, message first, then its related ones."""
    rng = random.Random(spec.seed)
    span_ms = max(1, int((spec.end - spec.start).total_seconds() * 1000))
    for i in range(spec.messages):
        mid = message_id(i)
        created = _timestamp(rng, spec.start, span_ms)
        body = _text(rng, rng.randint(1, spec.body_words))
        yield (
            "messages",
            mid,
            {
                "message_id": mid,
                "@timestamp": iso_millis(created),
                "channel": rng.choice(_CHANNELS),
                "sender": f"user{rng.randrange(1000)}@example.com",
                "recipients": [f"user{rng.randrange(1000)}@example.com" for _ in range(rng.randint(1, 3))],
                "subject": _text(rng, rng.randint(1, 6)),
                "body": body,
                "size_bytes": len(body.encode()),
                "tags": sorted({rng.choice(_WORDS) for _ in range(rng.randint(0, 3))}),
            },
        )
        if rng.random() < spec.no_related_ratio:
            continue
        yield from _related(rng, spec, mid, created)


def _related(
    rng: random.Random, spec: DatasetSpec, mid: str, created: datetime
) -> Iterator[tuple[str, str, dict[str, Any]]]:
    moment = created
    for j in range(rng.randint(0, spec.max_history)):
        moment += timedelta(seconds=rng.randint(1, 3600))
        yield (
            "history",
            f"{mid}-h{j:03d}",
            {
                "message_id": mid,
                "event_id": f"{mid}-h{j:03d}",
                "@timestamp": iso_millis(moment),
                "event": rng.choice(_EVENTS),
                "actor": f"user{rng.randrange(1000)}",
                "details": _text(rng, rng.randint(0, 8)),
            },
        )
    changes = []
    previous = "received"
    moment = created
    for _ in range(rng.randint(0, 3)):
        moment += timedelta(seconds=rng.randint(1, 600))
        current = rng.choice(_STATUSES)
        changes.append({"from": previous, "to": current, "at": iso_millis(moment)})
        previous = current
    yield "status", mid, {"message_id": mid, "status": previous, "updated_at": iso_millis(moment), "changes": changes}
    for k in range(rng.randint(0, spec.max_audit)):
        yield (
            "audit",
            f"{mid}-a{k:03d}",
            {
                "message_id": mid,
                "audit_id": f"{mid}-a{k:03d}",
                "@timestamp": iso_millis(created + timedelta(seconds=rng.randint(1, 86_400))),
                "action": rng.choice(_ACTIONS),
                "user": f"auditor{rng.randrange(50)}",
                "ip": f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
            },
        )


class IndexExists(RuntimeError):
    """A seeding helper was asked to write an index that already exists: it only writes indices it creates."""


def create_indices(es: Any, names: IndexNames) -> None:
    """Create the four indices from the mappings in ``include/mappings``. An index that exists already is never
    deleted or written to (it may be somebody's data): :class:`IndexExists`, before anything is created."""
    existing = [names.of(role) for role in ROLES if es.indices.exists(index=names.of(role))]
    if existing:
        raise IndexExists(
            f"index {', '.join(existing)} exists on this cluster already; the seeding helpers only write indices "
            "they create, so they never touch data of yours: seed under other names (IndexNames, or the demo's "
            "and the bench's own tagged names)"
        )
    for role in ROLES:
        es.indices.create(index=names.of(role), body=json.loads((MAPPINGS_DIR / f"{role}.json").read_text()))


def load(es: Any, spec: DatasetSpec, *, chunk_size: int = 2000) -> DatasetCounts:
    """Create the indices (:class:`IndexExists` if one exists), bulk-load the dataset, refresh, and return the
    per-index counts. ``es`` is an elasticsearch-py client, or an opensearch-py one (for OpenSearch and
    Elasticsearch before 7.14)."""
    if type(es).__module__.startswith("opensearchpy"):
        from opensearchpy import helpers
    else:
        from elasticsearch import helpers  # type: ignore[no-redef]

    create_indices(es, spec.indices)
    counts = DatasetCounts()

    def actions() -> Iterator[dict[str, Any]]:
        for role, doc_id, source in generate(spec):
            counts.add(role)
            yield {"_index": spec.indices.of(role), "_id": doc_id, "_source": source}

    bulk = helpers.streaming_bulk(es, actions(), chunk_size=chunk_size, raise_on_error=True)
    for loaded, _ in enumerate(bulk, start=1):
        if loaded % 100_000 == 0:
            log.info("Loaded %s documents", loaded)
    es.indices.refresh(index=",".join(spec.indices.of(role) for role in ROLES))
    log.info("Loaded dataset %s", counts.as_dict())
    return counts


def seed_week(url: str, messages: int, names: IndexNames) -> DatasetCounts:
    """Load ``messages`` synthetic messages of 2024-03-01 .. 2024-03-08 with their related documents into new
    indices ``names`` at ``url`` (:class:`IndexExists` if one exists): what ``make demo`` and ``make servers``
    seed."""
    from opensearchpy import OpenSearch

    # opensearch-py speaks plain JSON, which every engine of the suite accepts.
    with OpenSearch(url, timeout=60) as es:
        return load(es, DatasetSpec(messages=messages, start=SEED_WEEK[0], end=SEED_WEEK[1], indices=names))


def _parse_utc(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--es-url", required=True)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--start", type=_parse_utc, default=_parse_utc("2024-03-01"))
    parser.add_argument("--end", type=_parse_utc, default=_parse_utc("2024-03-08"))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--prefix", default="", help="put before each index name (e.g. seed-1-): indices are created")
    args = parser.parse_args(argv)
    from elasticsearch import Elasticsearch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    with Elasticsearch(args.es_url, request_timeout=60) as es:
        names = IndexNames(*(f"{args.prefix}{role}" for role in ROLES))
        spec = DatasetSpec(messages=args.messages, start=args.start, end=args.end, seed=args.seed, indices=names)
        counts = load(es, spec)
    print(json.dumps(counts.as_dict()))


if __name__ == "__main__":
    main()
