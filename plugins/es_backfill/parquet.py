"""Parquet output (``output_format=parquet``): one schema per backfill, from the columns ``plan`` saved.

The schema is the table's (:mod:`es_backfill.table`, with the run's ``json_fields`` as JSON text):
``string`` and ``json`` are Parquet strings, ``bigint``/``int``/``smallint``/``tinyint`` signed integers of
64/32/16/8 bits, ``double`` doubles, ``boolean`` booleans, structs and lists as such. Struct fields are named
as Athena names them (:class:`~es_backfill.table.AthenaNames`: ``@timestamp`` is stored as ``_timestamp``);
:class:`RowDecoder` gives the names back as written. Every window's files have this schema, whatever their
documents hold. The rules for a value (after redaction and the transform):

* ``null`` is null, and so is a key that is missing (or unmapped, holding null: the engines map no field
  that only ever held null).
* A ``json`` column holds the value's JSON text whatever it is (a string as ``"text"``, quoted), written as
  the JSON formats write it: every number's digits, every key in its form, a lone surrogate escaped.
* Anything else must fit its type: a string column takes strings (without lone surrogates, which Parquet's
  UTF-8 cannot hold), an integer column integers in its range (with every digit; the integer ``-0`` is 0), a
  double column finite numbers and the integers a double holds exactly (``2**53 + 2``, ``10**20``; not
  ``2**53 + 1``), a boolean column booleans, a struct objects whose keys it has, a list lists. Otherwise the
  window writes nothing more, checks the rest of its records and fails (:class:`ParquetMisfit`) naming every
  field that misfits, a message for each, and the ``json_fields`` entries that make those fields JSON text:
  an array where the mapping has one value, ``"5"`` in a ``long``, a field a ``dynamic: false`` object does
  not map, a key written with dots (``"a.b"``, which is not the struct's ``a``). Never a silent null.
  What no entry can fix fails at once, saying so: a top-level key a transform adds that the table cannot
  have (``dt``, ``message_id`` or ``window`` of another type, a name differing only in case from a column),
  a value JSON cannot hold, a key that is not a string.
* A double is a value: ``1.10`` is stored as 1.1. The JSON formats keep every number's spelling.

Files are ``part-NNNNN.parquet``, cut at the same record and byte limits as JSON Lines parts (the size of the
values as :class:`RowEncoder` counts it: a string's characters, 8 for any other scalar), in row groups of at
most :data:`ROW_GROUP_ROWS` rows or about :data:`ROW_GROUP_BYTES` of values, so memory stays bounded;
zstd-compressed; streamed to S3 as a multipart upload. pyarrow is pinned (25.0.0, as MWAA 3.3.1 ships), so the
same records give the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from es_backfill import exactjson
from es_backfill.config import column_path_text
from es_backfill.exactjson import Number, has_lone_surrogate
from es_backfill.sink import CONTENT_TYPES, ObjectInfo, ObjectStore, PartUpload
from es_backfill.table import (
    AthenaNames,
    Misfit,
    ParquetMisfit,
    Path,
    Type,
    athena_type,
    case_collides,
    fits,
    widened,
)

ROW_GROUP_ROWS = 20_000
ROW_GROUP_BYTES = 16 * 2**20
COMPRESSION = "zstd"
_ARROW = {"string": pa.string(), "json": pa.string(), "bigint": pa.int64(), "int": pa.int32(),
          "smallint": pa.int16(), "tinyint": pa.int8(), "double": pa.float64(), "boolean": pa.bool_()}  # fmt: skip
_INTEGERS = {"bigint", "int", "smallint", "tinyint"}


def arrow_schema(columns: dict[str, Type]) -> pa.Schema:
    """The Parquet files' schema for the table's ``columns``."""
    names = AthenaNames(columns)
    return pa.schema([pa.field(name, _arrow_type(kind, names)) for name, kind in columns.items()])


def _arrow_type(kind: Type, names: AthenaNames) -> pa.DataType:
    if isinstance(kind, str):
        return _ARROW[kind]
    if "array" in kind:
        return pa.list_(_arrow_type(kind["array"], names))
    if case_collides(kind["struct"]):
        return pa.string()
    return pa.struct([pa.field(names.of(name), _arrow_type(t, names)) for name, t in kind["struct"].items()])


def _described(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string with a lone surrogate" if has_lone_surrogate(value) else "a string"
    if isinstance(value, int | float):
        return f"the number {exactjson.dumps(value).decode()[:40]}"
    return f"a {type(value).__name__}"


class RowEncoder:
    """Records into rows of :func:`arrow_schema` (raising :class:`Misfit`), compiled once per window;
    ``size`` counts the size of the values encoded since it was last reset (a string's characters, 8 for any
    other scalar)."""

    def __init__(self, columns: dict[str, Type]) -> None:
        self.columns = columns
        self.schema = arrow_schema(columns)
        self.size = 0
        self._names = AthenaNames(columns)
        self._encode = self._struct(columns, (), top=True)

    def encode(self, record: dict[str, Any]) -> dict[str, Any]:
        return self._encode(record)

    def _compile(self, kind: Type, path: Path) -> Callable[[Any], Any]:
        if isinstance(kind, str):
            return self._leaf(kind, path)
        if "struct" in kind and case_collides(kind["struct"]):
            return self._leaf("json", path)
        if "array" in kind:
            element = self._compile(kind["array"], path)

            def array(value: Any) -> list[Any]:
                if not isinstance(value, list):
                    raise self._misfit(path, value, kind)
                return [None if item is None else element(item) for item in value]

            return array
        return self._struct(kind["struct"], path)

    def _leaf(self, kind: str, path: Path) -> Callable[[Any], Any]:
        if kind == "json":

            def json_text(value: Any) -> str:
                try:
                    text = exactjson.dumps(value).decode()
                except TypeError as err:  # only a transform can put what JSON cannot hold in a record
                    raise Misfit(path, f"{column_path_text(path)} holds what JSON cannot: {err}") from err
                self.size += len(text)
                return text

            return json_text
        if kind == "string":

            def string(value: Any) -> str:
                if not isinstance(value, str) or has_lone_surrogate(value):
                    raise self._misfit(path, value, kind)
                self.size += len(value)
                return value

            return string

        def scalar(value: Any) -> Any:
            if kind == "double" and isinstance(value, int) and not isinstance(value, bool):
                try:
                    number = float(value)
                except OverflowError:
                    number = math.inf
                if number != value:  # a double would not hold the integer's digits
                    raise self._misfit(path, value, kind)
                self.size += 8
                return number
            if not fits(value, kind):
                raise self._misfit(path, value, kind)
            self.size += 8
            if kind in _INTEGERS and isinstance(value, Number):
                return int(value.text)  # the integer -0, which exactjson keeps as a Number (a float)
            return value

        return scalar

    def _struct(self, fields: dict[str, Type], path: Path, *, top: bool = False) -> Callable[[Any], Any]:
        compiled = {name: (name if top else self._names.of(name), self._compile(t, (*path, name)))
                    for name, t in fields.items()}  # fmt: skip
        kind: Type = {"struct": fields}

        def struct(value: Any) -> dict[str, Any]:
            if not isinstance(value, dict):
                raise self._misfit(path, value, kind)
            row = {}
            for key, item in value.items():
                if item is None:
                    continue  # null, as a missing key is (the engines map no field that only ever held null)
                field = compiled.get(key)
                if not isinstance(key, str):  # only a transform can make one
                    raise Misfit((*path, str(key)), f"{column_path_text(path) or 'the record'} has a key that is "
                                 f"not a string: {key!r}")  # fmt: skip
                if field is None:
                    where = f"the struct {column_path_text(path)}" if path else "the table"
                    raise Misfit((*path, key), f"{column_path_text((*path, key))} is not a field of {where}"
                                        " (a field its mapping does not have, or a key written with dots)")  # fmt: skip
                row[field[0]] = field[1](item)
            return row

        return struct

    def _misfit(self, path: Path, value: Any, kind: Type) -> Misfit:
        expected = (
            "a struct"
            if isinstance(kind, dict) and "struct" in kind
            else "a list"
            if isinstance(kind, dict)
            else athena_type(kind, self._names)
        )
        return Misfit(
            path, f"{column_path_text(path) or 'the record'} holds {_described(value)} where the Parquet schema has "
            f"{expected}",
        )  # fmt: skip


class RowDecoder:
    """Rows of :func:`arrow_schema` back into records: struct fields under their names as written, JSON text
    parsed (as :mod:`es_backfill.exactjson` does), nulls left out."""

    def __init__(self, columns: dict[str, Type]) -> None:
        names = AthenaNames(columns)
        self._decode = self._struct(columns, names, top=True)

    def decode(self, row: dict[str, Any]) -> dict[str, Any]:
        return self._decode(row)

    def _compile(self, kind: Type, names: AthenaNames) -> Callable[[Any], Any]:
        if kind == "json" or (isinstance(kind, dict) and "struct" in kind and case_collides(kind["struct"])):
            return exactjson.loads
        if isinstance(kind, str):
            return lambda value: value
        if "array" in kind:
            element = self._compile(kind["array"], names)
            return lambda value: [None if item is None else element(item) for item in value]
        return self._struct(kind["struct"], names)

    def _struct(self, fields: dict[str, Type], names: AthenaNames, *, top: bool = False) -> Callable[[Any], Any]:
        compiled = [(name, name if top else names.of(name), self._compile(t, names)) for name, t in fields.items()]

        def struct(row: dict[str, Any]) -> dict[str, Any]:
            return {name: decode(row[stored]) for name, stored, decode in compiled if row.get(stored) is not None}

        return struct


class MisfitFinder:
    """Every field of the records it checks that misfits the schema of ``columns`` (``found``: each path, and
    what the first message found held there): each record is encoded with the fields found so far as JSON
    text, until it fits."""

    def __init__(self, columns: dict[str, Type]) -> None:
        self.columns = columns
        self.found: dict[Path, str] = {}
        self._encoder = RowEncoder(columns)

    def check(self, record_id: str, record: dict[str, Any], where: str) -> None:
        while True:
            try:
                self._encoder.encode(record)
                return
            except Misfit as err:
                found = {**self.found, err.path: f"message {record_id!r}: {err}"}
                columns = widened(self.columns, found)
                if err.path in self.found or columns == self._encoder.columns:  # no json_fields entry can help
                    raise ParquetMisfit(where, {err.path: found[err.path]}, fixable=False) from err
                self.found, self._encoder = found, RowEncoder(columns)

    def json_fields(self) -> list[str]:
        """The ``json_fields`` entries that make every field found JSON text, sorted."""
        return sorted(column_path_text(path) for path in self.found)


def parquet_bytes(columns: dict[str, Type], records: list[dict[str, Any]]) -> bytes:
    """``records`` (which fit) as one Parquet file, as a part holding only them would be."""
    encoder = RowEncoder(columns)
    table = pa.Table.from_pylist([encoder.encode(record) for record in records], schema=encoder.schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression=COMPRESSION)
    return sink.getvalue().to_pybytes()


class _Stream:
    """The file pyarrow writes a part to: its bytes go on to the part's upload as they come."""

    closed = False

    def __init__(self, part: PartUpload) -> None:
        self.part = part
        self.position = 0
        self.discard = False  # the part was aborted: what pyarrow still writes goes nowhere

    def write(self, data: Any) -> int:
        if not self.discard:
            self.part.write(bytes(data), records=0)
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        """Nothing: the upload takes the bytes as they come."""


class ParquetWriter:
    """Records into ``part-NNNNN.parquet`` objects with the backfill's schema; ``where`` (the window) and
    the message id name a record that misfits; ``before_commit`` and ``etags`` as for
    :class:`~es_backfill.sink.PartWriter`."""

    def __init__(
        self,
        store: ObjectStore,
        prefix: str,
        columns: dict[str, Type],
        max_records: int,
        max_bytes: int,
        before_commit: Callable[[], None],
        where: str,
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.encoder = RowEncoder(columns)
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.before_commit = before_commit
        self.where = where
        self.objects: list[ObjectInfo] = []
        self.etags: dict[str, str] = {}
        self._rows: list[dict[str, Any]] = []
        self._part: PartUpload | None = None
        self._file: pq.ParquetWriter | None = None
        self._stream: _Stream | None = None
        self._part_records = 0
        self._part_bytes = 0
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet-writer")
        self._misfits = MisfitFinder(columns)  # once a record misfits: every field that does

    def write(self, record_id: str, record: dict[str, Any]) -> None:
        if self._misfits.found:
            self._misfits.check(record_id, record, self.where)
            return
        try:
            self._rows.append(self.encoder.encode(record))
        except Misfit:
            self.abort()  # nothing more is written: the window fails once its records are all checked
            self._misfits.check(record_id, record, self.where)
            return
        self._part_records += 1
        if len(self._rows) >= ROW_GROUP_ROWS or self.encoder.size >= ROW_GROUP_BYTES:
            self._write_row_group()
        if self._part_records >= self.max_records or self._part_bytes + self.encoder.size >= self.max_bytes:
            self._finish_part()

    def _write_row_group(self) -> None:
        if not self._rows:
            return
        if self._file is None:
            key = f"{self.prefix}/part-{len(self.objects):05d}.parquet"
            self._part = PartUpload(self.store, key, False, CONTENT_TYPES["parquet"], self._worker, self.before_commit)
            self._stream = _Stream(self._part)
            self._file = pq.ParquetWriter(self._stream, self.encoder.schema, compression=COMPRESSION)
        self._file.write_table(pa.Table.from_pylist(self._rows, schema=self.encoder.schema))
        self._rows = []
        self._part_bytes += self.encoder.size
        self.encoder.size = 0

    def _finish_part(self) -> None:
        self._write_row_group()
        if self._file is None or self._part is None:
            return
        self._file.close()  # the footer
        info = self._part.finish()  # on failure, abort() still sees the part
        self.objects.append(replace(info, records=self._part_records))
        self.etags[self._part.key] = self._part.etag
        self._part, self._file = None, None
        self._part_records = self._part_bytes = 0

    def close(self) -> list[ObjectInfo]:
        """The objects written; :class:`ParquetMisfit` naming every field that misfits, if any did."""
        if self._misfits.found:
            raise ParquetMisfit(self.where, dict(sorted(self._misfits.found.items())))
        self._finish_part()
        self._worker.shutdown()
        return self.objects

    def abort(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)
        self._rows = []
        if self._file is not None and self._stream is not None:
            self._stream.discard = True
            self._file.close()
            self._file = None
        if self._part is not None:
            part, self._part = self._part, None
            part.abort()


def read_records(file: IO[bytes], columns: dict[str, Type], batch_rows: int = 1000) -> Iterator[dict[str, Any]]:
    """The records of a Parquet file ``file`` (seekable) of the schema of ``columns``; ValueError if it has
    another schema or cannot be read."""
    try:
        parquet = pq.ParquetFile(file)
        if not parquet.schema_arrow.equals(arrow_schema(columns)):
            raise ValueError("its schema is not the backfill's")
        decoder = RowDecoder(columns)
        for batch in parquet.iter_batches(batch_size=batch_rows):
            for row in batch.to_pylist():
                yield decoder.decode(row)
    except (pa.ArrowException, OSError) as err:  # pyarrow reports a corrupt file as either
        raise ValueError(str(err)) from err
