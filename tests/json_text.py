"""JSON text for fidelity tests: Hypothesis strategies for awkward documents, and an independent oracle.

The strategies write JSON as a client might have sent it to the engine: numbers in any valid form (long
integers, fractions with trailing zeros, exponents), strings with any code point (lone surrogates and
controls, escaped), unique keys (the engines refuse a repeated one). :func:`tokens` parses text with the
standard library's hooks into a form where two documents compare equal only when every key (in order),
string and number token is the same: it does not use the code under test.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st


def tokens(text: str | bytes) -> Any:
    """``text`` as nested ("object", [(key, value), ...]) and lists, each number as ("number", its text)."""

    def number(raw: str) -> tuple[str, str]:
        return ("number", raw)

    return json.loads(text, parse_float=number, parse_int=number, parse_constant=number,
                      object_pairs_hook=lambda pairs: ("object", pairs))  # fmt: skip


def number_text() -> st.SearchStrategy[str]:
    digits = st.text("0123456789", min_size=1, max_size=40).map(lambda d: d.lstrip("0") or "0")
    fraction = st.one_of(st.just(""), st.text("0123456789", min_size=1, max_size=25).map(lambda d: "." + d))
    exponent = st.one_of(
        st.just(""), st.tuples(st.sampled_from("eE"), st.sampled_from(["", "+", "-"]), st.integers(0, 300)).map(
            lambda t: f"{t[0]}{t[1]}{t[2]}"
        ),
    )  # fmt: skip
    return st.tuples(st.sampled_from(["", "-"]), digits, fraction, exponent).map("".join)


def string_text() -> st.SearchStrategy[str]:
    """Any code point, lone surrogates and controls included, escaped as JSON writes them."""
    return st.text(st.characters(codec=None), max_size=12).map(lambda s: json.dumps(s, ensure_ascii=True))


def value_text(max_leaves: int = 12) -> st.SearchStrategy[str]:
    scalars = st.one_of(number_text(), string_text(), st.sampled_from(["true", "false", "null"]))
    return st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=4).map(lambda items: "[" + ", ".join(items) + "]"),
            st.lists(st.tuples(string_text(), children), max_size=4, unique_by=lambda m: json.loads(m[0])).map(
                lambda members: "{" + ", ".join(f"{k}: {v}" for k, v in members) + "}"
            ),
        ),
        max_leaves=max_leaves,
    )
