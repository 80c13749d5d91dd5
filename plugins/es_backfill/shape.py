"""Shaping records on the way out: redaction rules, then an optional custom transform.

A rule names ``message.<path>`` or ``<related name>.<path>`` and applies to that value in the message,
or in every document of that related index the record carries; through lists of objects too, and in
every form the engines map to that path: ``{"sender": {"email": ...}}``, ``{"sender.email": ...}`` and
any mix (``{"sender": {"name": ...}, "sender.email": ...}``). A key that extends the path
(``sender.email`` under a rule on ``sender``) is part of the value the rule names, so it is redacted
too. ``drop`` removes the field; ``hash`` replaces it with the hex HMAC-SHA-256 of its value under a key
from an Airflow connection (a string's UTF-8 bytes, anything else's canonical JSON: sorted keys, numbers
as stored; same value and key, same hash, so joins across exports still work); ``mask`` keeps
``keep_start`` and ``keep_end`` characters of the value (a string, or the JSON text of anything else) and
replaces the rest with ``*``. ``null`` stays ``null``, and each value of a list is redacted on its own.
A field a document lacks is left alone. Documents are copied where they change, never changed in place
(a related document joined to several messages is shared by their records).

The transform (``source.transform``, a dotted path to a function in ``plugins/``) gets each redacted
record, a copy of its own (so whatever it changes cannot reach another record), and returns the record to
write, or ``None`` to drop it; the manifests count the dropped ones. What it returns must still be a
record: the same ``message_id`` and ``window``, and every related name with a list (``many``) or an object
or ``null`` (``one``), and only what JSON holds (no NaN or infinity, no key that is not a string); anything
else fails the window as a :class:`TransformError`, naming the transform.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import inspect
import math
from collections.abc import Callable
from typing import Any

from es_backfill import exactjson, fieldpath
from es_backfill.config import BackfillConfig, ConfigError, RedactRule, RelatedIndex

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

    def __init__(
        self,
        rules: tuple[RedactRule, ...],
        key: bytes | None,
        transform: str | None,
        related: tuple[RelatedIndex, ...] = (),
    ) -> None:
        if any(rule.action == "hash" for rule in rules) and not key:
            raise ConfigError(["hash rules need a key: source.redaction_key_conn_id's password is empty"])
        self.rules = rules
        self.related = related
        self.key = key or b""
        self.transform_name = transform
        self.transform = load_transform(transform) if transform else None

    @classmethod
    def for_config(cls, config: BackfillConfig, key: bytes | None) -> Shaper | None:
        """The run's shaper; None when it neither redacts nor transforms."""
        source = config.source
        if not (source.redact or source.transform):
            return None
        return cls(source.redact, key, source.transform, source.related)

    def apply(self, record: dict[str, Any]) -> dict[str, Any] | None:
        for rule in self.rules:
            section = record.get(rule.section)
            changed = fieldpath.replace(section, rule.path, lambda value, rule=rule: self._redacted(value, rule))
            if changed is not section:
                record = {**record, rule.section: changed}
        if self.transform is None:
            return record
        message_id = record["message_id"]
        try:
            shaped = self.transform(_own(record))
        except Exception as err:
            raise TransformError(f"transform {self.transform_name} failed on message {message_id!r}: {err!r}") from err
        if shaped is not None:
            self._check_shape(shaped, record)
            self._check_numbers(shaped)
        return shaped

    def unwritable(self, record: dict[str, Any], err: TypeError) -> TransformError:
        """The error for a record the transform returned with a value JSON cannot hold (a set, a datetime)."""
        return TransformError(
            f"transform {self.transform_name} returned a record that cannot be written as JSON (message "
            f"{record.get('message_id')!r}): {err}; return only objects, lists, strings, numbers, booleans and null"
        )

    def _check_shape(self, shaped: Any, record: dict[str, Any]) -> None:
        """Raise :class:`TransformError` unless ``shaped`` is still a record of ``record``'s message."""
        if not isinstance(shaped, dict):
            problem = f"returned a {type(shaped).__name__}: return the record (a dict) or None to drop it"
        elif shaped.get("message_id") != record["message_id"] or shaped.get("window") != record["window"]:
            problem = "changed message_id or window, which address the record: keep them as they are"
        elif not isinstance(shaped.get("message"), dict):
            problem = "left message out or made it something else than an object: return the message as an object"
        else:
            wrong = [
                spec.name
                for spec in self.related
                if not (
                    isinstance(shaped.get(spec.name), list)
                    if spec.cardinality == "many"
                    else spec.name in shaped and isinstance(shaped[spec.name], dict | None)
                )
            ]
            if not wrong:
                return
            problem = (
                f"left {', '.join(wrong)} out or changed its kind: keep every related name, with a list for "
                "cardinality 'many' and an object or null for 'one' (empty it to remove its documents)"
            )
        raise TransformError(f"transform {self.transform_name} {problem} (message {record['message_id']!r})")

    def _check_numbers(self, shaped: dict[str, Any]) -> None:
        """Raise :class:`TransformError` if ``shaped`` holds NaN or an infinity, which JSON cannot hold (orjson
        would write null: a value lost without a word). An explicit stack: a document may nest deep."""
        stack: list[Any] = [shaped]
        seen: set[int] = set()  # a value the record holds twice is checked once (and one holding itself ends)
        while stack:
            item = stack.pop()
            if isinstance(item, dict | list | tuple):
                if id(item) in seen:
                    continue
                seen.add(id(item))
                stack.extend(item.values() if isinstance(item, dict) else item)
            elif isinstance(item, float) and not isinstance(item, exactjson.Number) and not math.isfinite(item):
                raise TransformError(
                    f"transform {self.transform_name} returned the number {item!r}, which JSON cannot hold "
                    f"(message {shaped['message_id']!r}): return a finite number, or None"
                )

    def _redacted(self, value: Any, rule: RedactRule) -> Any:
        if rule.action == "drop":
            return fieldpath.DROP
        if isinstance(value, list):  # a multi-valued field: each value on its own
            return [self._redacted(item, rule) for item in value]
        if value is None:
            return None  # nothing to hide, and null says so
        if rule.action == "hash":
            return hmac.new(self.key, redacted_bytes(value), hashlib.sha256).hexdigest()
        text = value if isinstance(value, str) else exactjson.dumps(value).decode()
        kept = rule.keep_start + rule.keep_end
        if kept >= len(text):
            return "*" * len(text)  # too short to keep anything and hide the rest
        return text[: rule.keep_start] + "*" * (len(text) - kept) + text[len(text) - rule.keep_end :]


def redacted_bytes(value: Any) -> bytes:
    """What a ``hash`` rule digests: a string's UTF-8 bytes, anything else's canonical JSON."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return exactjson.dumps(value, sort_keys=True)


def _own(node: Any) -> Any:
    """A copy of a record's objects and lists (strings and numbers are immutable, so shared)."""
    if isinstance(node, dict):
        return {key: _own(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_own(item) for item in node]
    return node
