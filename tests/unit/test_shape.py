"""Redaction and the transform on records, at the seam: copies where they change, fields missing left alone."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from es_backfill import exactjson
from es_backfill.config import ConfigError, RedactRule, RelatedIndex
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
    with pytest.raises(TransformError, match=r"builtins.len returned a int: .*\(message 'm1'\)"):
        shaper.apply({"message_id": "m1", "window": "w"})


@pytest.mark.parametrize(
    "message",
    [
        {"sender": {"name": "C", "email": "x@y.z"}},
        {"sender.email": "x@y.z", "sender": {"name": "C"}},  # both forms in one document
        {"sender": {"name": "C", "email.addr": "x@y.z"}},  # a key that goes on past the path is part of it
        {"sender": [{"name": "C"}, {"email": "x@y.z"}, {"email": ["x@y.z", None]}]},  # arrays of objects
        {"sender.email.addr": "x@y.z", "sender.name": "C"},
    ],
)
def test_a_rule_finds_its_field_in_every_form_the_engines_map_to_it(message):
    dropped = Shaper((RedactRule("message.sender.email", "drop"),), KEY, None).apply({"message": message})
    assert "x@y.z" not in repr(dropped) and "C" in repr(dropped)
    masked = Shaper((RedactRule("message.sender.email", "mask", 1, 0),), KEY, None).apply({"message": message})
    assert "x@y.z" not in repr(masked) and "x****" in repr(masked)
    hashed = Shaper((RedactRule("message.sender.email", "hash"),), KEY, None).apply({"message": message})
    assert "x@y.z" not in repr(hashed) and hmac.new(KEY, b"x@y.z", hashlib.sha256).hexdigest() in repr(hashed)


def test_dotted_and_nested_forms_in_related_documents_and_an_object_holding_dotted_keys():
    record = {"message": {"a.b": {"c": 1, "d": 2}}, "audit": [{"who.ip": "1.2.3.4"}, {"who": {"ip": "5.6.7.8"}}]}
    rules = (RedactRule("message.a.b.c", "drop"), RedactRule("audit.who.ip", "drop"))
    assert Shaper(rules, KEY, None).apply(record) == {"message": {"a.b": {"d": 2}}, "audit": [{}, {"who": {}}]}


def test_null_stays_null_and_a_hashed_object_does_not_depend_on_key_order():
    rules = (RedactRule("message.a", "mask", 1, 0), RedactRule("message.b", "hash"))
    assert Shaper(rules, KEY, None).apply({"message": {"a": None, "b": None}}) == {"message": {"a": None, "b": None}}
    one = Shaper(rules[1:], KEY, None).apply({"message": {"b": {"x": 1, "y": [2]}}})
    other = Shaper(rules[1:], KEY, None).apply({"message": {"b": {"y": [2], "x": 1}}})
    assert one == other and one["message"]["b"] == hmac.new(KEY, b'{"x":1,"y":[2]}', hashlib.sha256).hexdigest()


def edit_shared_audit(record):
    """A transform that changes what it is given in place."""
    for document in record["audit"]:
        document["user"] = document["user"].upper()
    record["message"]["seen"] = True
    return record


def drop_audit_key(record):
    del record["audit"]
    return record


def change_id(record):
    return {**record, "message_id": "other"}


def drop_message(record):
    return {**record, "message": ["x"]}


def ratio_of_nothing(record):
    record["message"]["ratio"] = [{"of": float("nan")}]
    return record


def infinite_deep_down(record):
    record["message"]["deep"] = [exactjson.Number("1.10"), [[[{"x": float("-inf")}]]]]
    return record


def holds_itself(record):
    record["message"]["self"] = record["message"]
    return record


def test_a_record_a_transform_made_hold_itself_is_checked_to_the_end_and_refused_when_written():
    _, record = _record()
    shaper = Shaper((), None, "tests.unit.test_shape.holds_itself", _RELATED)
    shaped = shaper.apply({**record, "window": "w"})
    with pytest.raises(TypeError, match="holds itself"):
        exactjson.dumps(shaped)  # which fails the window as the transform's (extract: Shaper.unwritable)


def test_each_record_handed_to_a_transform_is_its_own():
    shared, record = _record()
    second = {**record, "message_id": "m2", "window": "w", "message": {"sender": "b"}}
    record["window"] = "w"
    shaper = Shaper((), None, "tests.unit.test_shape.edit_shared_audit", _RELATED)
    first_out, second_out = shaper.apply(record), shaper.apply(second)
    assert first_out["audit"][0]["user"] == second_out["audit"][0]["user"] == "ANN"  # not "ANN" upper-cased twice
    assert shared == {"user": "ann", "ip": "10.1.2.3"} and "seen" not in record["message"]


@pytest.mark.parametrize(
    ("transform", "problem"),
    [
        ("drop_audit_key", "left audit out or changed its kind"),
        ("change_id", "changed message_id or window"),
        ("drop_message", "left message out or made it something else than an object"),
        ("ratio_of_nothing", "returned the number nan, which JSON cannot hold"),  # orjson writes null
        ("infinite_deep_down", "returned the number -inf, which JSON cannot hold"),
    ],
)
def test_a_transform_that_breaks_the_record_fails_as_a_transform_error_naming_it(transform, problem):
    _, record = _record()
    shaper = Shaper((), None, f"tests.unit.test_shape.{transform}", _RELATED)
    with pytest.raises(TransformError, match=rf"transform tests.unit.test_shape.{transform} {problem}"):
        shaper.apply({**record, "window": "w"})


_RELATED = (
    RelatedIndex("audit", "audit", "message_id", ("@timestamp",), "many"),
    RelatedIndex("status", "status", "message_id", ("updated_at",), "one"),
)
