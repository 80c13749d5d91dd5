"""What ``make demo`` prints of a record: long values are shortened as values, so the printout stays whole JSON."""

from __future__ import annotations

import json

from include.dev.demo import shortened


def test_long_strings_and_lists_are_cut_as_values_saying_how_much_is_left_out():
    record = {"body": "x" * 100, "history": [{"n": i} for i in range(5)], "n": 12345678901234567890, "none": None}
    short = shortened(record)
    assert short["body"] == "x" * 60 + "… (+40 characters)"
    assert short["history"] == [{"n": 0}, {"n": 1}, {"n": 2}, "… (+2 more)"]
    assert short["n"] == record["n"] and short["none"] is None
    assert json.loads(json.dumps(short)) == short


def test_short_values_are_printed_as_they_are():
    record = {"subject": "テスト emoji🚀", "tags": ["a", "b", "c"], "nested": {"ok": True, "x": 1.5}}
    assert shortened(record) == record
