"""The output's table: columns typed from the mappings, widened by what the records hold, as Athena and DuckDB
types."""

from __future__ import annotations

import orjson

from es_backfill import exactjson
from es_backfill.table import (
    AthenaNames,
    AthenaTable,
    Misfits,
    athena_type,
    duckdb_type,
    from_mappings,
    from_saved,
    table_name,
    to_saved,
    widened,
    within_glue_limits,
)

MESSAGES = {
    "properties": {
        "message_id": {"type": "keyword"},
        "@timestamp": {"type": "date"},
        "size": {"type": "long"},
        "score": {"type": "scaled_float", "scaling_factor": 100},
        "seen": {"type": "boolean"},
        "subject": {"type": "text", "fields": {"keyword": {"type": "keyword"}}},
        "sender": {"properties": {"name": {"type": "keyword"}, "email": {"type": "keyword"}}},
        "payload": {"type": "object", "enabled": False},
        "raw": {"type": "object", "dynamic": False, "properties": {"known": {"type": "keyword"}}},
        "parts": {"type": "nested", "properties": {"n": {"type": "integer"}}},
        "where": {"type": "geo_point"},
        "sender_name": {"type": "alias", "path": "sender.name"},
    }
}
STATUS = {"properties": {"message_id": {"type": "keyword"}, "code": {"type": "short"}}}


def _columns():
    return from_mappings([MESSAGES], [("status", "one", [STATUS]), ("audit", "many", [STATUS])])


def test_columns_are_typed_from_the_mappings_and_what_cannot_be_typed_is_json_text():
    columns = _columns()
    assert list(columns) == ["message_id", "window", "message", "status", "audit"]
    message = columns["message"]["struct"]
    assert message == {
        "message_id": "string", "@timestamp": "string", "size": "bigint", "score": "double", "seen": "boolean",
        "subject": "string", "sender": {"struct": {"name": "string", "email": "string"}}, "payload": "json",
        "raw": {"struct": {"known": "string"}}, "parts": {"array": {"struct": {"n": "int"}}}, "where": "json",
    }  # fmt: skip
    assert columns["status"] == {"struct": {"message_id": "string", "code": "smallint"}}
    assert columns["audit"] == {"array": columns["status"]}


def test_indices_of_one_pattern_that_type_a_field_differently_make_it_json():
    other = {"properties": {"size": {"type": "keyword"}, "extra": {"type": "long"}}}
    message = from_mappings([MESSAGES, other], [])["message"]["struct"]
    assert message["size"] == "json" and message["extra"] == "bigint" and message["seen"] == "boolean"


def test_values_the_mapping_does_not_type_are_found_and_widen_their_field_to_json():
    misfits = Misfits(_columns())
    records = [
        {"message_id": "m1", "window": "w", "message": {"size": 5, "sender": {"name": "a"}, "parts": [{"n": 1}]},
         "status": None, "audit": []},
        {"message_id": 7, "window": "w", "message": {"size": "5", "seen": "true", "sender": [{"name": "b"}],
         "sender.email": "x@example.com", "raw": {"known": "k", "unmapped": {"deep": 1}}, "parts": {"n": 2}},
         "status": {"code": 40000}, "audit": [{"code": 1}, {"code": exactjson.Number("1.5")}, {"code": 2, "new": 1}]},
        {"message_id": "m3", "window": "w", "message": {"size": 2**63, "score": exactjson.Number("1e400"),
         "payload": {"anything": [1]}}, "status": {"code": exactjson.Number("-0")}, "audit": None},
    ]  # fmt: skip
    for record in records:
        misfits.check(record)
    assert misfits.found() == [
        ["audit", "code"], ["audit", "new"], ["message", "parts"], ["message", "raw", "unmapped"],
        ["message", "score"], ["message", "seen"], ["message", "sender"], ["message", "sender.email"],
        ["message", "size"], ["status", "code"],
    ]  # fmt: skip
    table = widened(_columns(), misfits.found())
    message = table["message"]["struct"]
    assert message["sender"] == message["size"] == message["sender.email"] == message["parts"] == "json"
    assert message["raw"] == {"struct": {"known": "string", "unmapped": "json"}}
    assert table["audit"] == {"array": {"struct": {"message_id": "string", "code": "json", "new": "json"}}}
    assert _columns()["message"]["struct"]["size"] == "bigint"  # the plan's columns are left as they were


def test_an_integer_longer_than_python_converts_misfits_every_integer_column():
    misfits = Misfits(_columns())
    longest = exactjson.loads(b"-" + b"9" * 4301)  # past the 4,300 digits int() takes
    misfits.check({"message_id": "m", "message": {"size": longest, "score": longest}, "status": {"code": longest}})
    assert misfits.found() == [["message", "score"], ["message", "size"], ["status", "code"]]


def test_a_column_of_more_fields_than_glue_takes_in_a_type_is_json_text_and_the_others_stay_typed():
    wide = {"properties": {f"field_number_{n:05d}_of_a_wide_index": {"type": "keyword"} for n in range(4000)}}
    columns = from_mappings([MESSAGES], [("status", "one", [STATUS]), ("audit", "many", [wide])])
    assert columns["audit"] == "json" and columns["status"]["struct"]["code"] == "smallint"
    narrower = from_mappings(
        [MESSAGES], [("audit", "many", [{"properties": dict(list(wide["properties"].items())[:3000])}])]
    )
    assert len(athena_type(narrower["audit"], AthenaNames(narrower), ddl=False)) <= 131072  # kept: under the limit
    # Keys the windows find in an object its mapping does not type (dynamic: false) add fields to the table's type.
    found = [("audit", f"unmapped_key_number_{n:05d}_found_by_a_window") for n in range(4000)]
    table = within_glue_limits(widened(narrower, found))
    assert table["audit"] == "json" and narrower["audit"] != "json"


def test_an_array_of_json_values_fits_and_a_value_for_it_that_is_no_array_does_not():
    misfits = Misfits({"message_id": "string", "notes": {"array": "json"}, "tags": {"array": "string"}})
    misfits.check({"message_id": "m", "notes": [1, {"a": [2]}, "x", None], "tags": ["a", 5]})
    assert misfits.found() == []
    misfits.check({"message_id": "m", "notes": {"a": 1}, "tags": "a"})
    assert misfits.found() == [["notes"], ["tags"]]


def test_records_that_fit_find_nothing():
    misfits = Misfits(_columns())
    misfits.check({"message_id": "m", "window": "w", "message": {"size": -(2**63), "seen": False, "score": 1,
                   "parts": [{"n": -(2**31)}, None], "payload": [1, {"a": 2}], "where": "drm3btev3e86",
                   "subject": 5}, "status": {"code": exactjson.Number("-0")}, "audit": [None]})  # fmt: skip
    assert misfits.found() == []


def test_the_types_render_for_athena_and_duckdb():
    columns = widened(_columns(), [["message", "sender.email"]])
    names = AthenaNames(columns)
    assert athena_type(columns["status"], names) == "struct<`message_id`:string,`code`:smallint>"
    assert athena_type(columns["audit"], names) == "array<struct<`message_id`:string,`code`:smallint>>"
    assert duckdb_type(columns["audit"]) == 'STRUCT("message_id" VARCHAR, "code" SMALLINT)[]'
    message = athena_type(columns["message"], names)
    assert message.startswith("struct<`message_id`:string,`_timestamp`:string,`size`:bigint,")
    assert message.endswith(",`where`:string,`sender_email`:string>")  # every name quoted
    assert names.mappings == {"_timestamp": "@timestamp", "sender_email": "sender.email"}
    assert athena_type({"struct": {"Name": "string", "name": "bigint"}}, names) == "string"  # one key to Athena
    assert duckdb_type({"struct": {'a"b': "json"}}) == 'STRUCT("a""b" VARCHAR)'


def test_athena_names_stay_unique_in_the_table():
    columns = {"message": {"struct": {"_timestamp": "string", "@timestamp": "string", "a": {"struct": {
        "@timestamp": "bigint", "@Timestamp": "string"}}}}}  # fmt: skip
    names = AthenaNames(columns)
    assert athena_type(columns["message"], names) == "struct<`_timestamp`:string,`_timestamp_`:string,`a`:string>"
    assert names.of("#timestamp") == "_timestamp__"
    assert names.mappings == {"_timestamp_": "@timestamp", "_timestamp__": "#timestamp"}
    assert names.of("Content-Type") == "content_type"  # the SerDe looks mapping. keys up lower-cased
    assert athena_type({"struct": {"a": "int"}}, names, ddl=False) == "struct<a:int>"  # Glue keeps types unquoted


def test_the_ddl_projects_dt_over_the_plans_days_and_names_the_table_as_athena_allows():
    assert table_name("Orders-2024 backfill") == "orders_2024_backfill"
    assert table_name("2024") == "backfill_2024"
    columns = {"message_id": "string", "window": "string", "message": {"struct": {"@timestamp": "string"}}}
    ddl = AthenaTable("t", "s3://b/root/", columns, ("2024-03-01", "2024-03-09")).ddl()
    assert ddl.startswith("CREATE EXTERNAL TABLE IF NOT EXISTS `t` (\n  `message_id` string,\n  `window` string,\n"
                          "  `message` struct<`_timestamp`:string>\n)")  # fmt: skip
    assert "  'mapping._timestamp' = '@timestamp'\n" in ddl
    assert "'projection.dt.range' = '2024-03-01,2024-03-09'" in ddl
    assert "'storage.location.template' = 's3://b/root/dt=${dt}/'" in ddl
    assert "'ignore.malformed.json' = 'false'" in ddl and "LOCATION 's3://b/root/'" in ddl
    assert "  'es_backfill.location' = 's3://b/root/'\n);\n" in ddl  # a table made from it is the backfill's


def test_a_parquet_table_is_stored_as_parquet_with_the_same_columns_and_no_serde_settings():
    columns = {"message_id": "string", "window": "string", "message": {"struct": {"@timestamp": "string"}}}
    table = AthenaTable("t", "s3://b/root/", columns, ("2024-03-01", "2024-03-09"), parquet=True)
    ddl = table.ddl()
    assert "  `message` struct<`_timestamp`:string>\n)\nPARTITIONED BY (`dt` string)\nSTORED AS PARQUET\n" in ddl
    assert "SERDE" not in ddl and "'projection.dt.range' = '2024-03-01,2024-03-09'" in ddl
    glue = table.glue_input()
    assert glue["Parameters"]["classification"] == "parquet"
    assert glue["StorageDescriptor"]["SerdeInfo"] == {
        "SerializationLibrary": "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe",
        "Parameters": {},
    }


def test_indices_that_map_a_field_as_integers_of_different_widths_make_it_the_widest():
    narrow = {"properties": {"size": {"type": "integer"}, "n": {"type": "byte"}}}
    wide = {"properties": {"size": {"type": "long"}, "n": {"type": "short"}}}
    assert from_mappings([narrow, wide], [])["message"] == {"struct": {"size": "bigint", "n": "smallint"}}


def test_an_index_with_nothing_mapped_yet_leaves_the_others_columns_typed():
    assert from_mappings([{}, MESSAGES, {"properties": {}}], [])["message"] == _columns()["message"]
    assert from_mappings([{}], [])["message"] == "json"


def test_a_key_no_ddl_can_name_widens_the_struct_holding_it_and_a_top_level_dt_is_left_to_the_partition():
    columns = _columns()
    out = widened(columns, [("message", "sender", "\ud83d"), ("dt",), ("audit", "\udc00x")])
    assert out["message"]["struct"]["sender"] == "json" and out["audit"] == "json"
    assert "dt" not in out and out["status"] == columns["status"]
    AthenaTable("t", "s3://b/root/", out, ("2024-03-01", "2024-03-01")).ddl().encode()  # UTF-8, as written


def test_a_struct_whose_field_names_differ_only_in_case_is_json_text_in_every_reader():
    widened_struct = {"struct": {"Name": "string", "name": "json"}}
    assert athena_type(widened_struct, AthenaNames({})) == "string" and duckdb_type(widened_struct) == "VARCHAR"
    mapping = {"properties": {"Name": {"type": "keyword"}, "name": {"type": "keyword"}, "n": {"type": "long"}}}
    assert from_mappings([{"properties": {"sender": mapping}}], [])["message"] == {"struct": {"sender": "json"}}
    assert from_mappings([{"properties": {"Name": {"type": "keyword"}}}, {"properties": {"name": {"type": "keyword"}}}],
                         [])["message"] == "json"  # fmt: skip


def test_the_columns_keep_their_order_through_the_saved_plan():
    from es_backfill import manifest

    columns = _columns()
    saved = orjson.loads(manifest.dumps({"table": to_saved(columns)}))["table"]  # the plan's writer sorts keys
    assert from_saved(saved) == columns
    assert list(from_saved(saved)) == ["message_id", "window", "message", "status", "audit"]
    assert list(from_saved(saved)["message"]["struct"])[:3] == ["message_id", "@timestamp", "size"]
