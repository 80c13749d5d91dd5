"""A field's path in a document, in every form the engines map to it.

Elasticsearch and OpenSearch map ``{"sender.email": "x"}`` exactly like ``{"sender": {"email": "x"}}``,
and a document may mix both (``{"sender": {"name": "C"}, "sender.email": "x"}``, ``{"a.b": {"c": 1}}``).
So a path ``a.b.c`` may be split into keys at any of its dots (``a`` → ``b.c``, ``a.b`` → ``c``, ``a.b.c``),
through lists of objects at any level; and a key that goes on past the path (``a.b.c.d``) is part of the
value at ``a.b.c``. :func:`values` finds every value at a path, :func:`replace` changes them all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

DROP = object()  # what a :func:`replace` callback returns to remove the key


def values(node: Any, path: str) -> Iterator[Any]:
    """Every value at ``path`` in ``node``, lists of values and objects flattened; keys that go on past the path
    give their values too (each is part of the value at ``path``)."""
    if isinstance(node, list):
        for item in node:
            yield from values(item, path)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key == path or key.startswith(path + "."):
            yield from _flat(value)
        elif path.startswith(key + "."):
            yield from values(value, path[len(key) + 1 :])


def _flat(value: Any) -> Iterator[Any]:
    if isinstance(value, list):
        for item in value:
            yield from _flat(item)
    else:
        yield value


def replace(node: Any, path: str, change: Callable[[Any], Any]) -> Any:
    """``node`` with every value at ``path`` replaced by ``change(value)`` (its key removed if that is
    :data:`DROP`), copied where it changes; ``node`` itself when the path is not there. A list at the path is
    handed to ``change`` whole."""
    if isinstance(node, list):
        items = [replace(item, path, change) for item in node]
        return node if all(a is b for a, b in zip(items, node, strict=True)) else items
    if not isinstance(node, dict):
        return node
    changed: dict[str, Any] | None = None
    for key, value in node.items():
        if key == path or key.startswith(path + "."):
            new = change(value)
        elif path.startswith(key + "."):
            new = replace(value, path[len(key) + 1 :], change)
        else:
            continue
        if new is not value:
            changed = dict(node) if changed is None else changed
            changed[key] = new
    if changed is None:
        return node
    return {key: value for key, value in changed.items() if value is not DROP}


def present(node: Any, path: str) -> bool:
    """Whether ``node`` has a key at ``path`` in any form (even one holding ``null`` or an empty list)."""
    if isinstance(node, list):
        return any(present(item, path) for item in node)
    if not isinstance(node, dict):
        return False
    for key, value in node.items():
        if key == path or key.startswith(path + "."):
            return True
        if path.startswith(key + ".") and present(value, path[len(key) + 1 :]):
            return True
    return False
