"""The table a backfill's output is queried as (Athena and the Glue Data Catalog, Trino, DuckDB).

Its columns are ``message_id``, ``window``, ``message`` and one per related index (a struct for
``cardinality: one``, an array of structs for ``many``), partitioned by ``dt``. ``plan`` types them from
the index mappings (:func:`from_mappings`) and saves the types in ``_plan.json``, so every run of a
backfill has the same table. A type is ``"string"``, ``"bigint"``, ``"int"``, ``"smallint"``,
``"tinyint"``, ``"double"``, ``"boolean"``, ``"json"`` (a string holding the value's JSON text), a
``{"struct": {name: type}}`` or an ``{"array": type}``. Dates are strings (the engines accept many
formats); ``enabled: false`` objects, ``flattened``, ``unsigned_long``, geo, range and any other type
are ``json``; an object mapped without properties is ``json``; aliases and multi-fields are not in
``_source`` and get no column. The run's ``json_fields`` make the fields they name ``json`` too
(:func:`widened`); Parquet's schema is these columns (:mod:`es_backfill.parquet`).

A mapping says what the engine indexes, not what ``_source`` holds: any field may hold an array, a
number a mapping coerced from a string, keys written with dots (``"a.b": 1``, which the engines map
as ``a`` → ``b``) or fields a ``dynamic: false`` object does not map. So each window checks its
records against the types (:class:`Misfits`): a value that does not fit its type (an array where the
mapping has one value, ``"5"`` in a ``long``, an integer past the column's range) makes that field
``json``, and a key that its object's type does not name is added to that object as ``json``. A string
column reads any value (a string as itself, anything else as its JSON text), so it never misfits. The
window's manifest keeps what it found, sorted (the same data finds the same things), and the table a
run writes (:class:`AthenaTable`) applies every window's findings: no value reads as a silent null and no
row fails a query. A struct whose field names differ only in case is ``json`` too (Athena's names are
case-insensitive). Athena allows only letters, digits and ``_`` in struct field names: others get a name of
those (``@timestamp`` is ``_timestamp``) and a SerDe ``mapping.`` property that reads the key as written
(:class:`AthenaNames`); in DDL every struct field name is quoted with backticks. A column whose type
would be longer than the Glue Data Catalog takes (:data:`GLUE_TYPE_LIMIT` characters: thousands of fields)
is ``json`` as a whole.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from es_backfill.config import BackfillConfig, column_path_text
from es_backfill.exactjson import Number, has_lone_surrogate

Type = str | dict[str, Any]
Path = tuple[str, ...]

_LEAVES = {
    **dict.fromkeys(
        ["keyword", "constant_keyword", "wildcard", "text", "match_only_text", "search_as_you_type", "ip",
         "version", "date", "date_nanos"],
        "string",
    ),
    "long": "bigint", "integer": "int", "short": "smallint", "byte": "tinyint",
    **dict.fromkeys(["double", "float", "half_float", "scaled_float"], "double"),
    "boolean": "boolean",
}  # fmt: skip
log = logging.getLogger(__name__)

_RANGES = {"bigint": 63, "int": 31, "smallint": 15, "tinyint": 7}
_LONGEST_INTEGER = len(str(2**63))  # digits: an integer with more fits no integer column
_NOT_IN_SOURCE = {"alias"}
_ATHENA = {"string": "string", "json": "string", "bigint": "bigint", "int": "int", "smallint": "smallint",
           "tinyint": "tinyint", "double": "double", "boolean": "boolean"}  # fmt: skip
_DUCKDB = {"string": "VARCHAR", "json": "VARCHAR", "bigint": "BIGINT", "int": "INTEGER", "smallint": "SMALLINT",
           "tinyint": "TINYINT", "double": "DOUBLE", "boolean": "BOOLEAN"}  # fmt: skip


def from_mappings(
    messages: list[dict[str, Any]], related: Sequence[tuple[str, str, list[dict[str, Any]]]]
) -> dict[str, Type]:
    """The columns, from the mappings of every index the messages pattern matches and, per related index, its
    name, cardinality and mappings. A field that indices of one pattern type differently is ``json``, but for
    integers of different widths (the widest) and objects (their fields merged)."""
    columns: dict[str, Type] = {"message_id": "string", "window": "string", "message": _merged(messages)}
    for name, cardinality, mappings in related:
        document = _merged(mappings)
        columns[name] = document if cardinality == "one" else {"array": document}
    return within_glue_limits(columns)


def within_glue_limits(columns: dict[str, Type]) -> dict[str, Type]:
    """``columns``, each whose type would be longer than the Glue Data Catalog takes made ``json`` (logged)."""
    names = AthenaNames(columns)
    fitting = dict(columns)
    for name, kind in columns.items():
        length = len(athena_type(kind, names, ddl=False))
        if length > GLUE_TYPE_LIMIT:
            log.warning("The column %s would have a type of %s characters, more than the Glue Data Catalog's %s: "
                        "it is JSON text", name, length, GLUE_TYPE_LIMIT)  # fmt: skip
            fitting[name] = "json"
    return fitting


GLUE_TYPE_LIMIT = 131072  # a column's type, in the Glue Data Catalog's API


def _merged(mappings: list[dict[str, Any]]) -> Type:
    # An index with no fields mapped yet holds no documents that have any (or its fields are unmapped ones,
    # which each window finds): it does not make the others' columns json.
    types = [_type_of({"properties": m["properties"]}) for m in mappings if m.get("properties")] or ["json"]
    merged = types[0]
    for other in types[1:]:
        merged = _union(merged, other)
    return merged


def _type_of(mapping: dict[str, Any]) -> Type:
    kind = mapping.get("type")
    if kind is None or kind in ("object", "nested"):
        if mapping.get("enabled") is False or not mapping.get("properties"):
            return "json"
        fields = {
            name: _type_of(sub) for name, sub in mapping["properties"].items() if sub.get("type") not in _NOT_IN_SOURCE
        }
        struct = _struct(fields)
        return {"array": struct} if kind == "nested" and struct != "json" else struct
    return _LEAVES.get(kind, "json")


def _union(a: Type, b: Type) -> Type:
    if a == b:
        return a
    if isinstance(a, str) and isinstance(b, str) and a in _RANGES and b in _RANGES:
        return a if _RANGES[a] > _RANGES[b] else b  # long in one index, integer in another: bigint
    if isinstance(a, dict) and isinstance(b, dict) and "struct" in a and "struct" in b:
        names = [*a["struct"], *(n for n in b["struct"] if n not in a["struct"])]
        return _struct({n: _union(a["struct"].get(n, b["struct"].get(n)), b["struct"].get(n, a["struct"].get(n)))
                        for n in names})  # fmt: skip
    if isinstance(a, dict) and isinstance(b, dict) and "array" in a and "array" in b:
        return {"array": _union(a["array"], b["array"])}
    return "json"


def _struct(fields: dict[str, Type]) -> Type:
    """A struct of ``fields``; ``json`` if it has none, or two whose names differ only in case."""
    return "json" if not fields or case_collides(fields) else {"struct": fields}


def case_collides(fields: dict[str, Type]) -> bool:
    """Whether two of a struct's field names differ only in case: Athena's and Parquet readers' names are
    case-insensitive, so such a struct (which a widening can make) is read as JSON text."""
    return len({name.lower() for name in fields}) < len(fields)


def to_saved(columns: dict[str, Type]) -> list[list[Any]]:
    """``columns`` as ``_plan.json`` keeps them: lists of ``[name, type]`` pairs (a struct's fields too), so their
    order survives a JSON writer that sorts keys."""
    return [[name, _saved_type(kind)] for name, kind in columns.items()]


def _saved_type(kind: Type) -> Any:
    if isinstance(kind, str):
        return kind
    if "array" in kind:
        return {"array": _saved_type(kind["array"])}
    return {"struct": to_saved(kind["struct"])}


def from_saved(saved: list[list[Any]]) -> dict[str, Type]:
    """The columns :func:`to_saved` kept."""
    return {name: _loaded_type(kind) for name, kind in saved}


def _loaded_type(kind: Any) -> Type:
    if isinstance(kind, str):
        return kind
    if "array" in kind:
        return {"array": _loaded_type(kind["array"])}
    return {"struct": from_saved(kind["struct"])}


class Misfits:
    """What a window's records hold that the columns' types do not fit: the path of each such field (struct
    field names; arrays are looked through), found once each. Records are checked after redaction and the
    transform, as written. The types are compiled first so that a record's string fields (most of them, which
    always fit) cost one set difference per object, not a step each."""

    def __init__(self, columns: dict[str, Type]) -> None:
        self.paths: set[Path] = set()
        self._root = _compile({"struct": columns}, ())

    def check(self, record: dict[str, Any]) -> None:
        self._value(record, self._root)

    def found(self) -> list[list[str]]:
        """The paths found, sorted: what a window manifest keeps."""
        return [list(path) for path in sorted(self.paths)]

    def _value(self, value: Any, node: _Node) -> None:
        kind, path, _, _, element = node
        if kind == "struct":
            if isinstance(value, dict):
                self._struct(value, node)
            else:
                self.paths.add(path)
        elif kind == "array":
            if not isinstance(value, list):
                self.paths.add(path)
            elif element[0] == "struct":  # the common case (nested, related documents), without a call per item
                for item in value:
                    if isinstance(item, dict):
                        self._struct(item, element)
                    elif item is not None:
                        self.paths.add(path)
            elif element[0] not in ("json", "string"):
                for item in value:
                    if item is not None and path not in self.paths:
                        self._value(item, element)
        elif kind not in ("json", "string") and not fits(value, kind):  # a string column reads anything
            self.paths.add(path)

    def _struct(self, value: dict[str, Any], node: _Node) -> None:
        _, path, known, typed, _ = node
        if not known.issuperset(value):
            self.paths.update((*path, name) for name in value.keys() - known)
        for name, child in typed:
            item = value.get(name)
            if item is not None and child[1] not in self.paths:
                self._value(item, child)


# A compiled type: (kind, path, the struct's field names, its fields that can misfit, an array's element).
_Node = tuple[str, Path, frozenset[str], tuple[tuple[str, Any], ...], Any]


def _compile(kind: Type, path: Path) -> _Node:
    if isinstance(kind, str):
        return (kind, path, frozenset(), (), None)
    if "array" in kind:
        return ("array", path, frozenset(), (), _compile(kind["array"], path))
    fields = kind["struct"]
    typed = tuple((name, _compile(t, (*path, name))) for name, t in fields.items() if t not in ("json", "string"))
    return ("struct", path, frozenset(fields), typed, None)


def fits(value: Any, kind: str) -> bool:
    """Whether ``value`` (not None) is one of the values a column of the leaf type ``kind`` holds."""
    if kind == "boolean":
        return isinstance(value, bool)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if kind == "double":
        return math.isfinite(value) if isinstance(value, float) else abs(value) < 2**1023
    if isinstance(value, float):
        digits = value.text.lstrip("-") if isinstance(value, Number) else ""
        if not digits.isdigit() or len(digits) > _LONGEST_INTEGER:
            return False  # a double, or an integer too long for any integer column (or for Python's int())
        value = int(value.text)  # an exactjson Number is a float: the integer -0 is one (compared exactly)
    bits = _RANGES[kind]
    return -(2**bits) <= value < 2**bits


class Misfit(ValueError):
    """A record holds a value its Parquet column cannot: ``path`` is the field's, the message says what."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        super().__init__(problem)


class ParquetMisfit(ValueError):
    """What a window's records hold that their Parquet columns cannot: ``found`` has each such field's path
    and what the first message found held there. Unless ``fixable`` is false (no column can hold it: a key a
    transform added that the table cannot have, or a value JSON cannot hold), ``json_fields`` fixes it."""

    def __init__(self, where: str, found: dict[Path, str], *, fixable: bool = True) -> None:
        self.found = found
        self.fixable = fixable
        fields = [column_path_text(path) for path in found]
        fix = (
            f"Add them to the run's json_fields to store them as JSON text ({json.dumps(fields)}); that changes the "
            "backfill's schema, so re-trigger with force: true (the whole backfill is written again)"
            if fixable
            else "No json_fields entry can hold it: change the transform (top-level keys message_id, window and dt "
            "and names differing only in case from a column are the table's own)"
        )
        text = (
            f"{where}: {len(found)} field(s) hold values their Parquet columns cannot ({'; '.join(found.values())}). "
            f"{fix}. The window has no manifest; what it wrote is replaced when it runs again"
        )
        super().__init__(text.encode("utf-8", "backslashreplace").decode())  # a lone surrogate, escaped for logs


def widened(columns: dict[str, Type], misfits: Iterable[Sequence[str]]) -> dict[str, Type]:
    """``columns`` with each misfit path made ``json`` (added to its struct if the struct lacks it). A name no
    DDL can hold (one with a lone surrogate) makes the struct holding it ``json`` instead; a top-level key that
    cannot be a column (``dt``, which a transform may add beside the partition column, ...) is left out."""
    out = _copy(columns)
    taken = {name.lower(): name for name in columns}
    for whole in misfits:
        unnameable = [i for i, name in enumerate(whole) if has_lone_surrogate(name)]
        path = whole[: unnameable[0]] if unnameable else whole
        if not path or (len(path) == 1 and _not_a_column(path[0], taken)):
            continue
        fields: Any = out
        for name in path[:-1]:
            fields = _fields_of(fields.get(name))
            if not isinstance(fields, dict):
                break  # a struct above the field is json already
        else:
            fields[path[-1]] = "json"
            if len(path) == 1:
                taken.setdefault(path[0].lower(), path[0])  # a second key differing only in case cannot be one
    return out


PARTITION = "dt"
_OWN = {"message_id", "window", PARTITION}  # top-level names whose type no record decides


def _not_a_column(name: str, taken: dict[str, str]) -> bool:
    """Whether a top-level key ``name`` cannot be (or become) a JSON-text column: ``message_id``, ``window`` and
    ``dt`` are the table's own, and a name that differs only in case from a column would read as that column."""
    return name.lower() in _OWN or taken.get(name.lower(), name) != name


def _fields_of(node: Any) -> Any:
    """The fields of a struct type, or of the struct an array type holds; None for a leaf."""
    while isinstance(node, dict) and "array" in node:
        node = node["array"]
    return node["struct"] if isinstance(node, dict) else None


def _copy(columns: dict[str, Type]) -> dict[str, Type]:
    return {name: _copy_type(kind) for name, kind in columns.items()}


def _copy_type(kind: Type) -> Type:
    if isinstance(kind, dict):
        return {"struct": _copy(kind["struct"])} if "struct" in kind else {"array": _copy_type(kind["array"])}
    return kind


class AthenaNames:
    """Names for struct fields in Athena's DDL, which allows only letters, digits and ``_`` in complex types:
    ``@timestamp`` becomes ``_timestamp``, unique in the table, and a SerDe ``mapping.`` property reads the key
    as written (lower-cased, as the SerDe compares keys case-insensitively)."""

    def __init__(self, columns: dict[str, Type]) -> None:
        self.mappings: dict[str, str] = {}
        self._taken = {name.lower() for name in _all_names(columns)}

    def of(self, name: str) -> str:
        if _PLAIN.fullmatch(name):
            return name
        for safe, original in self.mappings.items():
            if original == name.lower():
                return safe
        safe = _UNSAFE.sub("_", name).lower()  # the SerDe looks mapping. keys up lower-cased
        while safe.lower() in self._taken:
            safe += "_"
        self._taken.add(safe.lower())
        self.mappings[safe] = name.lower()
        return safe


_PLAIN = re.compile(r"[A-Za-z0-9_]+")
_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def _all_names(columns: dict[str, Type]) -> Iterable[str]:
    for name, kind in columns.items():
        yield name
        fields = _fields_of(kind)
        if isinstance(fields, dict):
            yield from _all_names(fields)


def athena_type(kind: Type, names: AthenaNames, *, ddl: bool = True) -> str:
    """The type in Athena's (Hive's) DDL, its struct fields named by ``names``, reserved words quoted (``ddl``;
    the Glue Data Catalog stores types unquoted)."""
    if isinstance(kind, str):
        return _ATHENA[kind]
    if "array" in kind:
        return f"array<{athena_type(kind['array'], names, ddl=ddl)}>"
    fields = kind["struct"]
    if case_collides(fields):
        return "string"
    return "struct<" + ",".join(f"{_field(names.of(name), ddl)}:{athena_type(t, names, ddl=ddl)}"
                                for name, t in fields.items()) + ">"  # fmt: skip


def _field(name: str, ddl: bool) -> str:
    # In DDL every struct field is quoted: Hive's grammar takes no unquoted name starting with _ or all digits.
    return f"`{name}`" if ddl else name


def duckdb_type(kind: Type) -> str:
    """The type in DuckDB's ``read_json(columns=...)`` (whose struct fields match keys case-sensitively)."""
    if isinstance(kind, str):
        return _DUCKDB[kind]
    if "array" in kind:
        return f"{duckdb_type(kind['array'])}[]"
    if case_collides(kind["struct"]):
        return "VARCHAR"
    return "STRUCT(" + ", ".join(f'"{name.replace(chr(34), chr(34) * 2)}" {duckdb_type(t)}'
                                 for name, t in kind["struct"].items()) + ")"  # fmt: skip


def _backquoted(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def table_location(config: BackfillConfig) -> str:
    """The table's location: the backfill's root, as a folder."""
    return f"s3://{config.s3_bucket}/{config.root_prefix}/"


def table_name(backfill_name: str) -> str:
    """A name Athena and Glue accept (lower-case letters, digits and ``_``) for the backfill's table."""
    name = re.sub(r"[^a-z0-9_]+", "_", backfill_name.lower()).strip("_")
    return name if name and not name[0].isdigit() else f"backfill_{name}"


@dataclass(frozen=True)
class Storage:
    """How a table's files are read: the Glue Data Catalog's classification, formats and SerDe."""

    classification: str
    input_format: str
    output_format: str
    serde: str


JSON_STORAGE = Storage(
    "json",
    "org.apache.hadoop.mapred.TextInputFormat",
    "org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat",
    "org.openx.data.jsonserde.JsonSerDe",
)
PARQUET_STORAGE = Storage(
    "parquet",
    "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat",
    "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat",
    "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe",
)


OWNER = "es_backfill.location"  # the table property naming the backfill root a table reads


@dataclass(frozen=True)
class AthenaTable:
    """The table over a backfill's output: what ``_athena.sql`` creates and what the Glue Data Catalog holds.

    JSON Lines (gzip or not) or one JSON object per file under ``location`` (``s3://bucket/root/``), or Parquet
    files (``parquet``), partitioned by ``dt`` with partition projection over ``days`` (first, last), so no
    ``MSCK REPAIR TABLE`` is needed. Objects whose names start with ``_`` (manifests) are not read."""

    name: str
    location: str
    columns: dict[str, Type]
    days: tuple[str, str]
    parquet: bool = False

    @property
    def storage(self) -> Storage:
        return PARQUET_STORAGE if self.parquet else JSON_STORAGE

    def serde_properties(self, names: AthenaNames) -> dict[str, str]:
        """The JSON SerDe's settings; Parquet needs none (its files name struct fields as the table does)."""
        if self.parquet:
            return {}
        return {"ignore.malformed.json": "false", "case.insensitive": "true",
                **{f"mapping.{safe}": original for safe, original in names.mappings.items()}}  # fmt: skip

    def properties(self) -> dict[str, str]:
        """The table's properties: partition projection over the plan's days, and the backfill root it reads
        (:data:`OWNER`: a Glue table that has it is the backfill's own, to update)."""
        return {
            "projection.enabled": "true",
            "projection.dt.type": "date",
            "projection.dt.format": "yyyy-MM-dd",
            "projection.dt.range": f"{self.days[0]},{_after(self.days[0], self.days[1])}",
            "projection.dt.interval": "1",
            "projection.dt.interval.unit": "DAYS",
            "storage.location.template": f"{self.location}dt=${{dt}}/",
            OWNER: self.location,
        }

    def ddl(self) -> str:
        """``CREATE EXTERNAL TABLE IF NOT EXISTS``, for Athena's query editor."""
        names = AthenaNames(self.columns)
        lines = ",\n".join(f"  {_backquoted(c)} {athena_type(kind, names)}" for c, kind in self.columns.items())
        storage = (
            "STORED AS PARQUET\n"
            if self.parquet
            else f"ROW FORMAT SERDE {_quoted(JSON_STORAGE.serde)}\n"
            f"WITH SERDEPROPERTIES (\n{_pairs(self.serde_properties(names))}\n)\n"
            f"STORED AS INPUTFORMAT {_quoted(JSON_STORAGE.input_format)}\n"
            f"OUTPUTFORMAT {_quoted(JSON_STORAGE.output_format)}\n"
        )
        return (
            f"CREATE EXTERNAL TABLE IF NOT EXISTS {_backquoted(self.name)} (\n{lines}\n)\n"
            "PARTITIONED BY (`dt` string)\n"
            f"{storage}"
            f"LOCATION {_quoted(self.location)}\n"
            f"TBLPROPERTIES (\n{_pairs(self.properties())}\n);\n"
        )

    def glue_input(self) -> dict[str, Any]:
        """The same table as the Glue Data Catalog's ``TableInput``."""
        names = AthenaNames(self.columns)
        columns = [{"Name": c, "Type": athena_type(kind, names, ddl=False)} for c, kind in self.columns.items()]
        return {
            "Name": self.name,
            "TableType": "EXTERNAL_TABLE",
            "Parameters": {
                "classification": self.storage.classification,
                "EXTERNAL": "TRUE",
                **self.properties(),
            },
            "PartitionKeys": [{"Name": "dt", "Type": "string"}],
            "StorageDescriptor": {
                "Columns": columns,
                "Location": self.location,
                "InputFormat": self.storage.input_format,
                "OutputFormat": self.storage.output_format,
                "SerdeInfo": {"SerializationLibrary": self.storage.serde, "Parameters": self.serde_properties(names)},
            },
        }


def _after(first: str, last: str) -> str:
    """``last``, or for a range of one day the day after it: the engine (Trino's check, which Athena's engine
    shares) refuses a projection range whose two dates are not sequential."""
    if last > first:
        return last
    return (date.fromisoformat(first) + timedelta(days=1)).isoformat()


def _pairs(properties: dict[str, str]) -> str:
    return ",\n".join(f"  {_quoted(key)} = {_quoted(value)}" for key, value in properties.items())


def _quoted(text: str) -> str:
    """A string literal of Hive's DDL."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
