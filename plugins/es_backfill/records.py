"""One output record per message, and its bytes.

A record is ``{"message_id", "window", "message", <related name>...}`` where each related
index contributes a list (cardinality ``many``) or one document or ``null`` (``one``:
the last by its sort order, i.e. the current one). Keys come in a fixed order and
serialisation is deterministic, so the same source data gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from es_backfill.config import RelatedIndex
from es_backfill.enrich import RelatedDocs


def build_record(
    message_id: str, window_key: str, message: dict[str, Any], related: Sequence[RelatedIndex], docs: RelatedDocs
) -> dict[str, Any]:
    record: dict[str, Any] = {"message_id": message_id, "window": window_key, "message": message}
    for spec in related:
        found = docs.get(spec.name, {}).get(message_id, [])
        record[spec.name] = (found[-1] if found else None) if spec.cardinality == "one" else found
    return record


def related_counts(record: dict[str, Any], related: Sequence[RelatedIndex]) -> dict[str, int]:
    """How many related documents a record carries, per related index."""
    counts = {}
    for spec in related:
        value = record[spec.name]
        counts[spec.name] = len(value) if spec.cardinality == "many" else int(value is not None)
    return counts


def dumps_line(record: dict[str, Any]) -> bytes:
    """One JSON Lines line (UTF-8, no escaping of non-ASCII, trailing newline)."""
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


def dumps_document(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record)
