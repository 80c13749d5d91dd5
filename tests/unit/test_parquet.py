"""Parquet output: the backfill's schema from the table's columns, the rule for each value that does not fit it,
bounded row groups and parts, and the same bytes for the same records (a fake store, a seam we own)."""

from __future__ import annotations

import io

import pyarrow.parquet as pq
import pytest

from es_backfill import exactjson
from es_backfill.config import column_path
from es_backfill.parquet import ParquetMisfit, ParquetWriter, RowEncoder, arrow_schema, read_records
from es_backfill.table import from_mappings, widened

MESSAGES = {
    "properties": {
        "@timestamp": {"type": "date"},
        "size": {"type": "long"},
        "score": {"type": "double"},
        "seen": {"type": "boolean"},
        "tags": {"type": "keyword"},
        "sender": {"properties": {"name": {"type": "keyword"}, "email": {"type": "keyword"}}},
        "payload": {"type": "object", "enabled": False},
        "parts": {"type": "nested", "properties": {"n": {"type": "byte"}}},
    }
}
HISTORY = {"properties": {"message_id": {"type": "keyword"}, "state": {"type": "keyword"}, "at": {"type": "date"}}}
COLUMNS = from_mappings([MESSAGES], [("history", "many", [HISTORY]), ("status", "one", [HISTORY])])


class MemoryStore:
    """Keeps what is put (parts stay below one multipart piece here)."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put(self, key: str, data: bytes, content_type: str) -> str:
        self.objects[key] = data
        return f'"{len(self.objects)}"'


def record(n: int, **message) -> dict:
    return {
        "message_id": f"m{n}",
        "window": "w",
        "message": {"@timestamp": "2024-03-01T00:00:00Z", "size": n, **message},
        "history": [{"message_id": f"m{n}", "state": "sent", "at": "2024-03-01"}],
        "status": None,
    }


def write(records: list[dict], columns=COLUMNS, max_records: int = 1000) -> MemoryStore:
    store = MemoryStore()
    writer = ParquetWriter(store, "w", columns, max_records, 2**30, lambda: None, "Window w")  # type: ignore[arg-type]
    for item in records:
        writer.write(item["message_id"], item)
    writer.close()
    return store


def read(data: bytes, columns=COLUMNS) -> list[dict]:
    return list(read_records(io.BytesIO(data), columns))


def test_records_that_fit_read_back_as_written_and_enabled_false_objects_as_json_text():
    awkward = exactjson.loads(b'{"big": 89014103211118510720, "x": 1.10, "s": "\\ud83d", "a.b": [null, {}]}')
    records = [
        record(1, score=exactjson.Number("1.5"), seen=True, tags="a", sender={"name": "Ann"}, payload=awkward,
               parts=[{"n": 1}, None, {"n": -128}]),
        record(2, size=exactjson.Number("-0"), score=3, payload="just text"),
    ]  # fmt: skip
    (data,) = write(records).objects.values()
    back = read(data)
    assert back[0]["message"]["payload"] == awkward
    assert exactjson.dumps(back[0]["message"]["payload"]) == exactjson.dumps(awkward)  # every digit and escape
    assert back[0]["message"]["parts"] == [{"n": 1}, None, {"n": -128}]
    assert back[1]["message"]["size"] == 0 and back[1]["message"]["score"] == 3.0
    assert back[1]["message"]["payload"] == "just text"
    assert {k: v for k, v in back[0].items() if k != "message"} == {
        k: v for k, v in records[0].items() if k not in ("message", "status")
    }
    raw = pq.read_table(io.BytesIO(data)).to_pylist()
    assert raw[1]["message"]["payload"] == '"just text"'  # JSON text: a string is quoted
    assert "_timestamp" in raw[0]["message"] and back[0]["message"]["@timestamp"] == "2024-03-01T00:00:00Z"


def test_the_schema_names_struct_fields_as_athena_does():
    schema = arrow_schema(COLUMNS)
    assert schema.names == ["message_id", "window", "message", "history", "status"]
    assert schema.field("message").type.field(0).name == "_timestamp"
    assert str(schema.field("history").type) == "list<item: struct<message_id: string, state: string, at: string>>"


@pytest.mark.parametrize(
    ("message", "field", "what"),
    [
        ({"tags": ["a", "b"]}, "message.tags", "a list where the Parquet schema has string"),
        ({"size": "5"}, "message.size", "a string where the Parquet schema has bigint"),
        ({"size": 2**63}, "message.size", "the number 9223372036854775808 where the Parquet schema has bigint"),
        ({"size": exactjson.loads(b"1" * 4301)}, "message.size", "the number 1111"),  # past Python's int()
        ({"score": 2**53 + 1}, "message.score", "where the Parquet schema has double"),
        ({"score": exactjson.Number("1e400")}, "message.score", "the number 1e400"),
        ({"parts": [{"n": 128}]}, "message.parts.n", "the number 128 where the Parquet schema has tinyint"),
        ({"parts": {"n": 1}}, "message.parts", "an object where the Parquet schema has a list"),
        ({"sender": "Ann"}, "message.sender", "a string where the Parquet schema has a struct"),
        ({"seen": 1}, "message.seen", "the number 1 where the Parquet schema has boolean"),
        ({"tags": "\ud83d"}, "message.tags", "a string with a lone surrogate"),
        ({"sender.email": "x@example.com"}, "message.`sender.email`", "is not a field of the struct message"),
        ({"unmapped": {"deep": 1}}, "message.unmapped", "is not a field of the struct message"),
    ],
)
def test_a_value_that_does_not_fit_fails_naming_the_message_field_and_setting_and_json_fields_fixes_it(
    message, field, what
):
    bad = record(7, **message)
    with pytest.raises(ParquetMisfit) as raised:
        write([record(1), bad])
    text = str(raised.value)
    assert text.startswith(f"Window w: 1 field(s) hold values their Parquet columns cannot (message 'm7': {field} ")
    assert what in text and f'json_fields to store them as JSON text (["{field}"])' in text and "force: true" in text
    assert raised.value.found.keys() == {column_path(field)}

    columns = widened(COLUMNS, [column_path(field)])
    (data,) = write([record(1), bad], columns).objects.values()
    assert read(data, columns)[1] == {k: v for k, v in bad.items() if v is not None}


def test_a_top_level_key_a_transform_adds_is_named_too():
    with pytest.raises(ParquetMisfit, match=r"message 'm1': dt is not a field of the table"):
        write([{**record(1), "dt": "2024-03-01"}])


def test_a_window_that_misfits_writes_nothing_more_and_names_every_field_that_misfits(monkeypatch):
    monkeypatch.setattr("es_backfill.parquet.ROW_GROUP_ROWS", 2)
    records = [record(n) for n in range(5)] + [
        record(5, tags=["a"], sender={"name": "A", "email": 5}),
        record(6, tags=["b"], unmapped=1),
        *(record(n) for n in range(7, 12)),
        record(12, parts=[{"n": 1}, {"n": "x"}]),
    ]
    store = MemoryStore()
    writer = ParquetWriter(store, "w", COLUMNS, 4, 2**30, lambda: None, "Window w")  # type: ignore[arg-type]
    for item in records:
        writer.write(item["message_id"], item)
    with pytest.raises(ParquetMisfit) as raised:
        writer.close()
    writer.abort()
    assert list(raised.value.found) == [
        ("message", "parts", "n"), ("message", "sender", "email"), ("message", "tags"), ("message", "unmapped")
    ]  # fmt: skip
    assert raised.value.found[("message", "tags")].startswith("message 'm5': message.tags holds a list")
    assert list(store.objects) == ["w/part-00000.parquet"]  # the one finished before; the window has no manifest


def test_what_json_text_cannot_hold_either_fails_at_once():
    with pytest.raises(ParquetMisfit, match=r"message\.payload holds what JSON cannot"):
        write([record(1, payload={"when": object()})])


def test_the_same_records_give_the_same_bytes_in_bounded_row_groups_and_parts(monkeypatch):
    monkeypatch.setattr("es_backfill.parquet.ROW_GROUP_ROWS", 4)
    records = [record(n, tags=f"t{n}") for n in range(25)]
    first, second = write(records, max_records=10).objects, write(records, max_records=10).objects
    assert first == second
    assert list(first) == ["w/part-00000.parquet", "w/part-00001.parquet", "w/part-00002.parquet"]
    metadata = pq.ParquetFile(io.BytesIO(first["w/part-00000.parquet"])).metadata
    assert (metadata.num_rows, metadata.num_row_groups) == (10, 3)
    assert metadata.row_group(0).column(0).compression == "ZSTD"
    assert [r["message_id"] for data in first.values() for r in read(data)] == [f"m{n}" for n in range(25)]


def test_a_file_of_another_schema_is_not_read_as_the_backfills():
    (data,) = write([record(1)]).objects.values()
    other = widened(COLUMNS, [("message", "size")])
    with pytest.raises(ValueError, match="schema is not the backfill's"):
        read(data, other)


def test_the_encoder_counts_the_bytes_of_the_values_it_encoded():
    encoder = RowEncoder(COLUMNS)
    encoder.encode(record(1, tags="x" * 1000))
    assert 1000 < encoder.size < 1200


def test_a_struct_that_json_fields_give_two_names_differing_in_case_is_json_text_as_in_the_ddl():
    columns = widened(COLUMNS, [("message", "sender", "Name")])
    assert str(arrow_schema(columns).field("message").type.field("sender").type) == "string"
    sender = {"name": "a", "Name": "b"}
    (data,) = write([record(1, sender=sender)], columns).objects.values()
    assert read(data, columns)[0]["message"]["sender"] == sender
    assert pq.read_table(io.BytesIO(data)).to_pylist()[0]["message"]["sender"] == '{"name":"a","Name":"b"}'


def test_integers_are_stored_with_every_digit_in_integer_and_double_columns():
    big = exactjson.loads(b'{"size": 9223372036854775807, "score": 100000000000000000000, "n": -0}')
    records = [
        record(1, size=exactjson.Number("9007199254740993"), score=2**53 + 2, parts=[{"n": exactjson.Number("-0")}]),
        record(2, size=big["size"], score=big["score"], parts=[{"n": big["n"]}]),
        record(3, score=2**1023),
    ]
    (data,) = write(records).objects.values()
    back = [r["message"] for r in read(data)]
    assert back[0]["size"] == 9007199254740993 and back[0]["score"] == float(2**53 + 2)
    assert back[1]["size"] == 2**63 - 1 and back[1]["score"] == 1e20 and back[1]["parts"] == [{"n": 0}]
    assert back[2]["score"] == float(2**1023)


def test_a_null_under_an_unmapped_key_is_null_as_a_missing_key_is():
    (data,) = write([record(1, never_mapped=None, sender={"name": None, "other": None})]).objects.values()
    assert read(data)[0]["message"] == {"@timestamp": "2024-03-01T00:00:00Z", "size": 1, "sender": {}}


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"Message": {"x": 1}}, "Message is not a field of the table"),
        ({"DT": "2024-03-01"}, "DT is not a field of the table"),
        ({"extra": 1, "Extra": 2}, "Extra is not a field of the table"),  # one of two differing in case can be
        ({"message_id": 7}, "message_id holds the number 7"),
        ({"message": {"payload": {"when": {1, 2}}}}, "message.payload holds what JSON cannot"),
        ({"message": {"sender": {1: "x"}}}, "message.sender has a key that is not a string: 1"),
    ],
)
def test_what_no_json_fields_entry_can_hold_fails_at_once_saying_to_change_the_transform(extra, named):
    with pytest.raises(ParquetMisfit) as raised:
        write([record(1) | extra])
    assert not raised.value.fixable and named in str(raised.value)
    assert "No json_fields entry can hold it: change the transform" in str(raised.value)


def test_a_misfit_names_a_key_with_a_lone_surrogate_in_a_message_logs_can_write():
    with pytest.raises(ParquetMisfit) as raised:
        write([record(1, sender={"\ud800x": 1})])
    assert "message.sender.\\ud800x is not a field" in str(raised.value)
    str(raised.value).encode()  # UTF-8, as a log handler writes it


def test_a_corrupt_file_is_reported_as_unreadable():
    (data,) = write([record(1)]).objects.values()
    for at in (4, len(data) // 2, len(data) - 20):
        broken = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]
        with pytest.raises(ValueError):
            read(broken)
