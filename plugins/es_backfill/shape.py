"""Shaping records on the way out: redaction rules, then an optional custom transform.

A rule names ``message.<path>`` or ``<related name>.<path>`` and applies to that value in the message,
or in every document of that related index the record carries; through lists of objects too. ``drop``
removes the field; ``hash`` replaces it with the hex HMAC-SHA-256 of its value under a key from an
Airflow connection (same value and key, same hash: joins across exports still work); ``mask`` keeps
``keep_start`` and ``keep_end`` characters and replaces the rest with ``*``. A field a document lacks is
left alone. Documents are copied where they change, never changed in place (a related document joined
to several messages is shared by their records).

The transform (``source.transform``, a dotted path to a function in ``plugins/``) gets each redacted
record and returns the record to write, or ``None`` to drop it; the manifests count the dropped ones.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import inspect
from collections.abc import Callable
from typing import Any

import orjson

from es_backfill.config import BackfillConfig, ConfigError, RedactRule

Transform = Callable[[dict[str, Any]], dict[str, Any] | None]


class TransformError(RuntimeError):
    """The custom transform failed on a record, or returned something that is not a record."""


def load_transform(path: str) -> Transform:
    """The function ``path`` names; ConfigError if it cannot be imported or does not take one argument."""
    module_name, _, name = path.rpartition(".")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(
            [f"source.transform {path!r} cannot be imported ({err}); put its module in plugins/, next to es_backfill"]
        ) from err
    if not callable(function):
        raise ConfigError([f"source.transform {path!r} is not a function"])
    try:
        inspect.signature(function).bind({})
    except TypeError as err:
        raise ConfigError(
            [f"source.transform {path!r} must take one argument, the record, and return it or None ({err})"]
        ) from err
    except ValueError:
        pass  # no signature to read (a builtin): calling it will tell
    return function


class Shaper:
    """Applies the redaction rules, then the transform, to each record."""

    def __init__(self, rules: tuple[RedactRule, ...], key: bytes | None, transform: str | None) -> None:
        if any(rule.action == "hash" for rule in rules) and not key:
            raise ConfigError(["hash rules need a key: source.redaction_key_conn_id's password is empty"])
        self.rules = rules
        self.key = key or b""
        self.transform_name = transform
        self.transform = load_transform(transform) if transform else None

    @classmethod
    def for_config(cls, config: BackfillConfig, key: bytes | None) -> Shaper | None:
        """The run's shaper; None when it neither redacts nor transforms."""
        source = config.source
        return cls(source.redact, key, source.transform) if source.redact or source.transform else None

    def apply(self, record: dict[str, Any]) -> dict[str, Any] | None:
        for rule in self.rules:
            section = record.get(rule.section)
            changed = _apply(section, rule.path.split("."), lambda value, rule=rule: self._redacted(value, rule))
            if changed is not section:
                record = {**record, rule.section: changed}
        if self.transform is None:
            return record
        try:
            shaped = self.transform(record)
        except Exception as err:
            raise TransformError(
                f"transform {self.transform_name} failed on message {record.get('message_id')!r}: {err!r}"
            ) from err
        if shaped is not None and not isinstance(shaped, dict):
            raise TransformError(
                f"transform {self.transform_name} returned a {type(shaped).__name__} for message "
                f"{record.get('message_id')!r}: return the record (a dict) or None to drop it"
            )
        return shaped

    def _redacted(self, value: Any, rule: RedactRule) -> Any:
        if rule.action == "drop":
            return _DROP
        if isinstance(value, list):  # a multi-valued field: each value on its own
            return [self._redacted(item, rule) for item in value]
        if rule.action == "hash":
            data = value.encode() if isinstance(value, str) else orjson.dumps(value)
            return hmac.new(self.key, data, hashlib.sha256).hexdigest()
        text = value if isinstance(value, str) else str(value)
        kept = rule.keep_start + rule.keep_end
        if kept >= len(text):
            return "*" * len(text)  # too short to keep anything and hide the rest
        return text[: rule.keep_start] + "*" * (len(text) - kept) + text[len(text) - rule.keep_end :]


_DROP = object()


def _apply(node: Any, path: list[str], redact: Callable[[Any], Any]) -> Any:
    """``node`` with the value at ``path`` replaced by ``redact(value)`` (removed if that is ``_DROP``), copied
    where it changes; ``node`` itself when the path is not there."""
    if isinstance(node, list):
        items = [_apply(item, path, redact) for item in node]
        return node if all(a is b for a, b in zip(items, node, strict=True)) else items
    if not isinstance(node, dict) or path[0] not in node:
        return node
    if len(path) > 1:
        child = _apply(node[path[0]], path[1:], redact)
        return node if child is node[path[0]] else {**node, path[0]: child}
    value = redact(node[path[0]])
    if value is _DROP:
        return {key: item for key, item in node.items() if key != path[0]}
    return {**node, path[0]: value}
