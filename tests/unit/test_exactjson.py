"""Documents come out with every number's digits and every string's code points, as the engine returned them.

The oracle (``tests.json_text.tokens``) is independent of the module under test.
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings

from es_backfill import exactjson
from tests.json_text import tokens, value_text

AWKWARD = [
    '{"iccid": 89014103211118510720, "neg": -89014103211118510720, "u64": 18446744073709551615}',
    '{"f": [1.10, 1e5, 1E+5, 1.0, -0.0, -0, 0, 5e-324, 1e308, 1.7976931348623157e308, 0.1, 12345678901234567890.5]}',
    r'{"s": "see you \ud83d", "low": "\udc00 alone", "pair": "\ud83d\ude80", "nul": "a\u0000b",'
    r' "ctl": "\u0001\u001f\u007f"}',
    '{"rtl": "\u202eabc \u05e9\u05dc\u05d5\u05dd", "emoji": "\U0001f680\U0001f1e9\U0001f1ea", "sep": "\u2028\u2029"}',
    r'{"\ud800key": {"a.b": 1, "a": {"b": 2}}, "empty": {}, "list": [], "nulls": [null, {"x": null}]}',
    '{"deep": ' + '{"d": ' * 100 + "1" + "}" * 100 + "}",
]


@pytest.mark.parametrize("text", AWKWARD)
def test_awkward_documents_round_trip_with_every_digit_and_code_point(text):
    out = exactjson.dumps(exactjson.loads(text))
    assert tokens(out) == tokens(text)
    out.decode("utf-8")  # valid UTF-8: a lone surrogate is written as its escape


def test_big_integers_keep_their_digits_where_orjson_would_make_them_floats():
    text = b'{"iccid": 89014103211118510720, "price": 1.10}'
    assert orjson.dumps(orjson.loads(text)) == b'{"iccid":8.901410321111851e+19,"price":1.1}'  # what main wrote
    assert exactjson.dumps(exactjson.loads(text)) == b'{"iccid":89014103211118510720,"price":1.10}'


def test_a_lone_surrogate_is_written_as_its_escape_instead_of_failing_the_window():
    text = rb'{"text": "see you \ud83d"}'
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(text)
    assert exactjson.dumps(exactjson.loads(text)) == rb'{"text":"see you \ud83d"}'


def test_integers_of_thousands_of_digits_keep_them_too():
    text = "[" + "7" * 5000 + ", -" + "3" * 4400 + "]"
    assert exactjson.dumps(exactjson.loads(text)).decode() == text.replace(" ", "")


def test_parsing_in_many_threads_leaves_the_garbage_collector_as_it_found_it():
    import gc
    from concurrent.futures import ThreadPoolExecutor

    page = ('{"hits": [' + ", ".join(['{"a": 1.10, "b": [1, 2, 3]}'] * 2000) + "]}").encode()
    assert gc.isenabled()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: exactjson.loads(page), range(200)))
    assert gc.isenabled()


def test_numbers_stay_numbers_a_transform_can_compute_with():
    value = exactjson.loads('{"a": 1.10, "b": 2}')
    assert value["a"] * 2 == 2.2 and isinstance(value["a"], float) and value["b"] + 1 == 3


def test_canonical_dumps_sorts_keys_whatever_their_order():
    one, other = exactjson.loads('{"b": 1, "a": [1.10]}'), exactjson.loads('{"a": [1.10], "b": 1}')
    assert exactjson.dumps(one, sort_keys=True) == exactjson.dumps(other, sort_keys=True) == b'{"a":[1.10],"b":1}'


@settings(max_examples=400, deadline=None)
@given(value_text())
def test_generated_documents_round_trip_token_for_token(text):
    out = exactjson.dumps(exactjson.loads(text))
    assert tokens(out) == tokens(text)
    assert exactjson.dumps(exactjson.loads(out)) == out  # and writing again changes nothing


@settings(max_examples=200, deadline=None)
@given(value_text())
def test_documents_nested_deeper_than_orjson_writes_come_out_the_same(text):
    """An object the engine does not index (enabled: false) may nest past orjson's 255 levels."""
    value = exactjson.loads(text)
    for sort_keys in (False, True):
        inner = exactjson.dumps(value, sort_keys=sort_keys)
        deep = exactjson.dumps({"d": [[value], [value]], "z": _nested(value, 600)}, sort_keys=sort_keys)
        assert deep == b'{"d":[[' + inner + b"],[" + inner + b']],"z":' + b'{"x":[' * 600 + inner + b"]}" * 600 + b"}"


def _nested(value, depth):
    for _ in range(depth):
        value = {"x": [value]}
    return value


def test_a_key_that_is_not_a_string_is_refused_not_written_as_its_text():
    for value in ({1: "a", "1": "b"}, {"s": "\ud83d", "o": {None: 1}}, _nested({True: 1}, 300)):
        with pytest.raises(TypeError, match="Dict key must be str"):
            exactjson.dumps(value)


def test_a_value_that_holds_itself_is_refused_not_written_until_memory_runs_out():
    looped: dict = {"a": [1]}
    looped["a"].append(looped)
    with pytest.raises(TypeError, match="Nested deeper than 10000 levels"):
        exactjson.dumps({"message": looped})
    levels = (exactjson.MAX_DEPTH - 1) // 2  # each {"x": [...]} is two: with [1], every level it may have
    assert exactjson.dumps(_nested([1], levels)).endswith(b"[1]" + b"]}" * levels)
