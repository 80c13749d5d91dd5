"""One output record per message, its bytes, and the check that message ids are present and unique.

A record is ``{"message_id", "window", "message", <related name>...}`` where each related
index contributes a list (cardinality ``many``) or one document or ``null`` (``one``:
the last by its sort fields, i.e. the current one; documents equal in every sort field
are ordered by index name and then ``_id``, compared as strings, so ``s9`` comes after
``s11``). Keys come in a fixed order and serialisation is deterministic, so the same
source data gives the same bytes.

Every message must carry its id, and no two messages may share one: a record is
addressed by its id (``output_format=json`` keys, joins downstream). :class:`MessageIds`
checks both as records are written and digests the ids for the manifest.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from typing import Any

from es_backfill import exactjson
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
    """One JSON Lines line (UTF-8, no escaping of non-ASCII, trailing newline), every number and string as the
    engine returned it (:mod:`es_backfill.exactjson`)."""
    return exactjson.dumps(record, newline=True)


def dumps_document(record: dict[str, Any]) -> bytes:
    return exactjson.dumps(record)


class MessageIdError(ValueError):
    """Messages without an id, or sharing one: the window cannot be written faithfully."""


class MessageIds:
    """The ids of the messages written so far, in order: present, unique, and digested.

    Holds a 16-byte digest per id (about 70 bytes per message in Python), so memory grows with the messages
    checked, which a window bounds; with ``spill``, the digests go to a :class:`DigestSpill` instead and the
    repeats are counted at :meth:`problems`, with memory bounded whatever the number of ids (``verify``, which
    checks a whole backfill). It keeps at most ``EXAMPLES`` offenders.
    """

    EXAMPLES = 20

    def __init__(self, id_field: str, spill: bool = False) -> None:
        self.id_field = id_field
        self.missing: list[str] = []  # where the messages without an id are (their document _id)
        self.duplicates: list[str] = []
        self._missing = self._duplicated = 0
        self._seen: set[bytes] = set()
        self._spill = DigestSpill() if spill else None
        self._sha = hashlib.sha256()
        self.written = 0

    def add(self, message_id: Any, where: str) -> str | None:
        """Record one message's id (e.g. a sort value of the id field); return it as a string, or None if it
        is missing (``where`` then names the message, e.g. by its document ``_id``)."""
        if message_id is None:
            self._missing += 1
            if len(self.missing) < self.EXAMPLES:
                self.missing.append(where)
            return None
        text = str(message_id)
        raw = text.encode("utf-8", "surrogatepass")
        digest = hashlib.blake2b(raw, digest_size=16).digest()
        if self._spill is not None:
            self._spill.add(digest, raw)
            return text
        if digest in self._seen:
            self._duplicated += 1
            if len(self.duplicates) < self.EXAMPLES:
                self.duplicates.append(text)
        self._seen.add(digest)
        return text

    def wrote(self, message_id: str) -> None:
        """Digest an id whose record was written (a record the transform dropped is checked, not digested)."""
        self._sha.update(message_id.encode("utf-8", "surrogatepass") + b"\n")
        self.written += 1

    def summary(self) -> dict[str, Any]:
        """What a manifest records: the number of distinct ids written and the SHA-256 of those ids in order
        (ids are unique, or the window fails)."""
        return {"distinct": self.written, "sha256": self._sha.hexdigest()}

    def problems(self) -> list[str]:
        """Each kind of offence, with how many and some examples."""
        if self._spill is not None:
            self._duplicated, self.duplicates = self._spill.repeats(self.EXAMPLES)
        problems = []
        if self._missing:
            problems.append(f"{self._missing} messages have no {self.id_field!r} (e.g. {', '.join(self.missing)})")
        if self._duplicated:
            problems.append(f"{self._duplicated} messages repeat an earlier id (e.g. {', '.join(self.duplicates)})")
        return problems

    def check(self, where: str) -> None:
        """Raise :class:`MessageIdError` naming the offenders, if any."""
        problems = self.problems()
        if problems:
            raise message_id_error(where, problems, self.id_field)


class DigestSpill:
    """Id digests kept on disk, in ``PARTITIONS`` temporary files by their first bytes: only buffers of
    ``FLUSH_BYTES`` each stay in memory while ids are added, and :meth:`repeats` checks one file at a time, so
    memory holds about 1/``PARTITIONS`` of the digests (about 90 MB at a billion ids, plus the buffers)."""

    PARTITIONS = 1024
    FLUSH_BYTES = 16 * 1024

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="es-backfill-ids-")  # under TMPDIR: 20 bytes and the id, per id
        self._buffers = [bytearray() for _ in range(self.PARTITIONS)]
        self._repeats: tuple[int, list[str]] | None = None

    def add(self, digest: bytes, raw: bytes) -> None:
        """One id: its 16-byte digest, and its UTF-8 text for naming it if it repeats."""
        part = int.from_bytes(digest[:2], "big") % self.PARTITIONS
        buffer = self._buffers[part]
        buffer += digest + len(raw).to_bytes(4, "big") + raw
        if len(buffer) >= self.FLUSH_BYTES:
            self._flush(part)

    def repeats(self, examples: int) -> tuple[int, list[str]]:
        """How many ids repeat an earlier one, and up to ``examples`` of them; the files are removed after, and
        later calls give the same answer."""
        if self._repeats is not None:
            return self._repeats
        count, named = 0, []
        for part in range(self.PARTITIONS):
            self._flush(part)
            path = os.path.join(self._dir.name, str(part))
            if not os.path.exists(path):
                continue
            seen: set[bytes] = set()
            with open(path, "rb") as stream:
                while digest := stream.read(16):
                    raw = stream.read(int.from_bytes(stream.read(4), "big"))
                    if digest in seen:
                        count += 1
                        if len(named) < examples:
                            named.append(raw.decode("utf-8", "surrogatepass"))
                    seen.add(digest)
        self._dir.cleanup()
        self._repeats = count, named
        return self._repeats

    def _flush(self, part: int) -> None:
        if self._buffers[part]:
            with open(os.path.join(self._dir.name, str(part)), "ab") as stream:
                stream.write(self._buffers[part])
            self._buffers[part].clear()


def message_id_error(where: str, problems: list[str], id_field: str) -> MessageIdError:
    """The error for ``problems`` with message ids, and what to do about them."""
    return MessageIdError(
        f"{where}: {'; '.join(problems)}. Every message needs a unique {id_field!r}: fix the data, "
        "exclude those messages with the query param, or point source.messages.id_field at a unique field"
    )
