"""Custom transforms for the tests, imported by dotted path as a user's module in ``plugins/`` would be."""

from __future__ import annotations

from typing import Any


def drop_sms_and_count_recipients(record: dict[str, Any]) -> dict[str, Any] | None:
    """Drop SMS messages; add how many recipients the others have (after redaction)."""
    if record["message"].get("channel") == "sms":
        return None
    return {**record, "recipient_count": len(record["message"].get("recipients", []))}


def fail_on_one_message(record: dict[str, Any]) -> dict[str, Any]:
    if record["message_id"] == "msg-000000007":
        raise ValueError("cannot shape this one")
    return record


def takes_two(record: dict[str, Any], other: Any) -> dict[str, Any]:
    return record
