"""Redaction and the transform on records, at the seam: copies where they change, fields missing left alone."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from es_backfill.config import ConfigError, RedactRule
from es_backfill.shape import Shaper, TransformError

KEY = b"k"


def _record():
    shared = {"user": "ann", "ip": "10.1.2.3"}  # one audit document joined to two messages shares this dict
    return shared, {
        "message_id": "m1",
        "message": {"sender": "a@example.com", "to": ["bob@example.com", "cy@example.com"], "meta": {"ip": "1.2.3.4"}},
        "audit": [shared, {"user": "bo"}],
        "status": None,
    }


def test_each_rule_applies_in_the_message_and_every_related_document_and_leaves_missing_fields_alone():
    shared, record = _record()
    rules = (RedactRule("message.sender", "hash"), RedactRule("message.to", "mask", 1, 12),
             RedactRule("message.meta.ip", "drop"), RedactRule("audit.ip", "mask", 3, 0),
             RedactRule("status.state", "drop"))  # fmt: skip
    out = Shaper(rules, KEY, None).apply(record)
    assert out["message"] == {
        "sender": hmac.new(KEY, b"a@example.com", hashlib.sha256).hexdigest(),
        "to": ["b**@example.com", "c*@example.com"],
        "meta": {},
    }
    assert out["audit"] == [{"user": "ann", "ip": "10.*****"}, {"user": "bo"}]  # the second has no ip
    assert out["status"] is None
    # Nothing changed in place: the shared related document is intact for the next record.
    assert shared == {"user": "ann", "ip": "10.1.2.3"} and record["message"]["meta"] == {"ip": "1.2.3.4"}
    assert Shaper(rules, KEY, None).apply(_record()[1]) == out  # the same input, the same output


def test_a_value_shorter_than_what_a_mask_keeps_is_masked_whole():
    out = Shaper((RedactRule("message.pin", "mask", 2, 2),), None, None).apply({"message": {"pin": "123"}})
    assert out == {"message": {"pin": "***"}}


def test_hash_rules_need_a_key_and_a_transform_must_return_a_record_or_none():
    with pytest.raises(ConfigError, match="need a key"):
        Shaper((RedactRule("message.sender", "hash"),), None, None)
    shaper = Shaper((), None, "builtins.len")  # returns an int
    with pytest.raises(TransformError, match="returned a int for message 'm1'"):
        shaper.apply({"message_id": "m1"})
