"""Which shaped paths ``plan`` accepts, at the reader seam: what ``_mapping/field`` and ``_mapping`` answer (as
recorded from Elasticsearch 9.5) decides; a path ``_source`` never holds is refused, naming what to write."""

from __future__ import annotations

from typing import Any

from es_backfill.plan import _check_paths

MAPPING = {
    "dynamic": "strict",
    "properties": {
        "subject": {"type": "text", "fields": {"keyword": {"type": "keyword"}}},
        "sender": {"properties": {"email": {"type": "keyword"}}},
        "sender_email": {"type": "alias", "path": "sender.email"},
        "payload": {"type": "object", "enabled": False},
        "raw": {"dynamic": "false", "properties": {"known": {"type": "keyword"}}},
    },
}
FIELDS = {
    "subject": {"type": "text", "fields": {"keyword": {"type": "keyword"}}},
    "subject.keyword": {"type": "keyword"},
    "sender.email": {"type": "keyword"},
    "sender_email": {"type": "alias", "path": "sender.email"},
    "raw.known": {"type": "keyword"},
}


class MappingsOnly:
    """Answers ``field_mappings`` and ``mappings`` as the engine does for :data:`MAPPING`."""

    def field_mappings(self, index: str, fields: list[str]) -> dict[str, dict[str, Any]]:
        return {name: body for name, body in FIELDS.items() if name in fields or any(
            f.endswith(".*") and name.startswith(f[:-1]) for f in fields)}  # fmt: skip

    def mappings(self, index: str) -> list[dict[str, Any]]:
        return [MAPPING]


def test_stored_but_unmapped_paths_pass_and_what_source_never_holds_is_refused_by_name():
    ok = ["payload", "payload.card", "payload.x.y", "raw.secret", "raw.deep.pan", "raw.known", "sender", "sender.email"]
    assert _check_paths(MappingsOnly(), "m", ok) == []
    refused = ["subject.keyword", "sender_email", "raw.known.x", "sendr", "subject.x"]
    problems = _check_paths(MappingsOnly(), "m", refused)
    assert "is a multi-field of 'subject'" in problems[0] and "name 'subject' instead" in problems[0]
    assert "is an alias of 'sender.email'" in problems[1] and "name 'sender.email' instead" in problems[1]
    assert len(problems) == 5 and all("is not mapped in index 'm'" in p for p in problems[2:])
