"""JSON that keeps a document exactly as the engine returned it.

``_source`` is stored as it was sent, so a search returns numbers and strings that a fast parser
would change: integers past 64 bits (orjson makes them floats, ``89014103211118510720`` becomes
``8.901410321111851e+19``), floats written in a form that is not the shortest (``1.10``, ``1e5``),
``-0``, and strings holding a lone surrogate (``"\\ud83d"``, which orjson refuses to parse, so one
such document failed its window on every retry). Here:

* :func:`loads` parses with the standard library (the cyclic garbage collector paused meanwhile) and keeps
  every float's text: a float is a :class:`Number`, a ``float`` that remembers how it was written.
  Integers are Python's, exact at any size; the integer ``-0`` is a :class:`Number`. Lone surrogates
  stay in the string. On a bench page (10 MiB, 31,865 documents) it takes 130 ms of CPU where orjson
  took 106 ms, and writing records 18 ms where orjson took 16 ms.
* :func:`dumps` writes with orjson; a :class:`Number` comes out as its text, an integer past 64 bits
  with all its digits, and a string with a lone surrogate with that surrogate escaped (``\\ud83d``),
  the other characters as orjson writes them. Keys keep their order and form. A document nested deeper
  than orjson writes (255 levels; an object the engine does not index, ``enabled: false``, may be) is
  written the same way with an explicit stack. A key that is not a string is a TypeError, not its text.

So ``dumps(loads(text))`` has every number's digits and every string's code points of ``text``.
"""

from __future__ import annotations

import gc
import json
import re
import threading
from typing import Any

import orjson

__all__ = ["Number", "dumps", "has_lone_surrogate", "loads"]

_SURROGATE = re.compile("[\ud800-\udfff]")
# The integer -0 (or something in a string like it): a cheap test (a literal search, about 4 ms on a 10 MB
# page) that spares most responses a call per integer.
_NEGATIVE_ZERO = re.compile(r"-0(?:[,\]} \n\r\t]|$)")


def has_lone_surrogate(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate (which UTF-8 cannot encode)."""
    return not text.isascii() and _SURROGATE.search(text) is not None


class Number(float):
    """A number as the engine wrote it: a ``float`` (so a transform can compute with it) whose :attr:`text`
    (read-only: records may share it) is what :func:`dumps` writes."""

    __slots__ = ("_text",)

    def __new__(cls, text: str) -> Number:
        number = super().__new__(cls, text)
        number._text = text
        return number

    @property
    def text(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return self._text

    def __reduce__(self) -> tuple[type[Number], tuple[str]]:
        return Number, (self._text,)


def _integer(text: str) -> int | Number:
    """An integer token: ``-0`` and integers longer than Python converts (4,300 digits) keep their text."""
    return Number(text) if text == "-0" or len(text) > 4000 else int(text)


_DECODER = json.JSONDecoder(parse_float=Number, parse_constant=Number)
_DECODER_EVERY_INTEGER = json.JSONDecoder(parse_float=Number, parse_constant=Number, parse_int=_integer)


class _CollectorPause:
    """Pauses the cyclic garbage collector while any thread parses (the reader's threads parse at once): the
    first parse to start turns it off if it was on, the last to end turns it back on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parsing = 0
        self._was_enabled = False

    def __enter__(self) -> None:
        with self._lock:
            if self._parsing == 0:
                self._was_enabled = gc.isenabled()
                gc.disable()
            self._parsing += 1

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._parsing -= 1
            if self._parsing == 0 and self._was_enabled:
                gc.enable()


_PAUSE = _CollectorPause()


def loads(data: bytes | bytearray | str) -> Any:
    """Parse ``data``, keeping every number's digits and every string's code points (see the module)."""
    text = data if isinstance(data, str) else bytes(data).decode("utf-8", "surrogatepass")
    decoder = _DECODER_EVERY_INTEGER if _NEGATIVE_ZERO.search(text) else _DECODER
    # A page makes a few hundred thousand objects, none in a cycle: the cyclic collector would walk them again
    # and again as they are made (measured: parsing took 3 times as long with it).
    with _PAUSE:
        try:
            return decoder.decode(text)
        except ValueError as err:
            if "Exceeds the limit" not in str(err):
                raise
            return _DECODER_EVERY_INTEGER.decode(text)  # an integer of thousands of digits: keep its text


def _default(value: Any) -> Any:
    if isinstance(value, Number):
        return orjson.Fragment(value.text)
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def dumps(value: Any, *, newline: bool = False, sort_keys: bool = False) -> bytes:
    """``value`` as compact UTF-8 JSON (``newline``: with a trailing newline; ``sort_keys``: canonical key
    order, for digests). TypeError for what JSON cannot hold: a key that is not a string, a set..."""
    option = (orjson.OPT_APPEND_NEWLINE if newline else 0) | (orjson.OPT_SORT_KEYS if sort_keys else 0)
    try:
        return orjson.dumps(value, default=_default, option=option)
    except TypeError:
        pass
    try:
        # A big integer or a lone surrogate somewhere (rare): those values as JSON text, the rest orjson's again.
        return orjson.dumps(_fragments(value, sort_keys), default=_default, option=option)
    except (TypeError, RecursionError) as err:
        if not isinstance(err, RecursionError) and "Recursion limit" not in str(err):
            raise
    # Nesting deeper than orjson's 255 levels (or than Python's, in _fragments), which an object the engine
    # does not index (enabled: false) may have: an explicit stack instead.
    return (_written(value, sort_keys) + ("\n" if newline else "")).encode()


def _fragments(value: Any, sort_keys: bool) -> Any:
    """``value`` with what orjson cannot write replaced by :class:`orjson.Fragment`s of the exact JSON."""
    if isinstance(value, str):
        return value if value.isascii() or not _SURROGATE.search(value) else orjson.Fragment(_string(value))
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else orjson.Fragment(str(value))
    if isinstance(value, list | tuple):
        return [_fragments(item, sort_keys) for item in value]
    if isinstance(value, dict):
        _check_keys(value)
        if all(key.isascii() or not _SURROGATE.search(key) for key in value):
            return {key: _fragments(item, sort_keys) for key, item in value.items()}
        items = sorted(value.items()) if sort_keys else value.items()
        members = (_string(key) + ":" + dumps(_fragments(item, sort_keys), sort_keys=sort_keys).decode(
            "utf-8", "surrogatepass") for key, item in items)  # fmt: skip
        return orjson.Fragment("{" + ",".join(members) + "}")
    return value  # orjson or _default says what it cannot write


def _check_keys(value: dict[Any, Any]) -> None:
    for key in value:
        if type(key) is not str:  # as orjson: not even a subclass (an enum's member)
            raise TypeError(f"Dict key must be str, not {type(key).__name__}: {key!r}")


class _Punctuation(str):
    """Text :func:`_written` writes as it is."""


class _Close(_Punctuation):
    """The end of an object or array, where :func:`_written` goes up a level."""


MAX_DEPTH = 10_000  # levels _written writes; the engines' parser (Jackson) refuses over 1,000 by default


def _written(value: Any, sort_keys: bool) -> str:
    """``value`` as JSON text, as orjson writes it, but for integers of any size, lone surrogates (escaped) and
    any depth up to :data:`MAX_DEPTH` (TypeError past it: a value that holds itself): an explicit stack instead
    of recursion."""
    out: list[str] = []
    stack: list[Any] = [value]
    depth = 0
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item if isinstance(item, _Punctuation) else _string(item))
            depth -= isinstance(item, _Close)
            continue
        if isinstance(item, dict | list | tuple):
            depth += 1
            if depth > MAX_DEPTH:
                raise TypeError(f"Nested deeper than {MAX_DEPTH} levels (a value that holds itself?)")
        if isinstance(item, dict):
            _check_keys(item)
            members = sorted(item.items()) if sort_keys else list(item.items())
            out.append("{")
            stack.append(_Close("}"))
            for index in range(len(members) - 1, -1, -1):
                key, member = members[index]
                stack.append(member)
                stack.append(_Punctuation(("," if index else "") + _string(key) + ":"))
        elif isinstance(item, list | tuple):
            out.append("[")
            stack.append(_Close("]"))
            for index in range(len(item) - 1, -1, -1):
                stack.append(item[index])
                if index:
                    stack.append(_Punctuation(","))
        elif isinstance(item, Number):
            out.append(item.text)
        elif isinstance(item, int) and not isinstance(item, bool):
            out.append(int.__repr__(item))  # it refuses more than 4,300 digits: exactjson reads those as Numbers
        else:
            out.append(orjson.dumps(item, default=_default).decode())  # True, None, a float; TypeError otherwise
    return "".join(out)


def _string(text: str) -> str:
    """``text`` as a JSON string, as orjson writes it, lone surrogates escaped as ``\\uXXXX``."""
    if text.isascii() or not _SURROGATE.search(text):
        return orjson.dumps(text).decode()
    quoted = json.dumps(text, ensure_ascii=False)
    return _SURROGATE.sub(lambda match: f"\\u{ord(match.group()):04x}", quoted)
