"""The output queried where it lands: a real DAG run over the fidelity corpus, read from the S3 server by DuckDB
(embedded, through s3fs) with the columns of the table the run wrote (``_athena.sql``), checked by SQL against
the documents as loaded."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Any

import duckdb
import pytest
import s3fs

from es_backfill.cli import main as cli
from es_backfill.config import column_path_text, from_params, load_defaults
from es_backfill.extract import run_window
from es_backfill.sink import ObjectStore
from es_backfill.table import AthenaTable, ParquetMisfit, duckdb_type, from_saved, widened
from es_backfill.windows import Window
from tests.integration import test_fidelity
from tests.integration.support import read_objects, reader_at, s3_client
from tests.integration.test_fidelity import DEFAULTS, ENGINES, MESSAGES, STATUS, _conf, _documents, utc
from tests.json_text import tokens

# A string holding half a surrogate pair: DuckDB's JSON reader refuses the file that holds it.
corpus = test_fidelity.corpus  # the fixture that loads the corpus into the engine

LONE_SURROGATE = re.compile(rb"\\ud[89ab][0-9a-f]{2}(?!\\ud[c-f])|(?<![0-9a-f]{2})\\ud[c-f][0-9a-f]{2}")


@pytest.fixture
def duck(s3_server):
    con = duckdb.connect()
    con.register_filesystem(
        s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=s3_server.endpoint_url,
                          client_kwargs={"region_name": "us-east-1"})
    )  # fmt: skip
    yield con
    con.close()


@pytest.fixture(scope="session")
def trino(s3_server, pytestconfig):
    """Trino over the S3 server, started once (pytest may run this module's tests in two groups, as it groups
    them by engine); its schema ``default`` holds the tables."""
    from include.dev.servers.trino import running_trino
    from tests.conftest import _announce

    with running_trino(s3_server.endpoint_url) as server:
        _announce(pytestconfig, f"Trino {server.version} at {server.url}")
        server.query("CREATE SCHEMA IF NOT EXISTS hive.default")
        yield server


def _read(con: duckdb.DuckDBPyConnection, files: list[str], columns: dict[str, str], sql: str, **options: Any) -> Any:
    """``sql`` over ``t``: the objects ``files`` read as newline-delimited JSON with ``columns`` and ``dt``."""
    listed = ", ".join(f"'{f}'" for f in files)
    extra = "".join(f", {name}={value}" for name, value in options.items())
    typed = ", ".join(f"{_literal(name)}: {_literal(kind)}" for name, kind in columns.items())
    source = f"read_json([{listed}], format='newline_delimited', hive_partitioning=true, columns={{{typed}}}{extra})"
    return con.sql(sql.replace("FROM t", f"FROM {source}")).fetchall()


@pytest.mark.parametrize("output_format", ["jsonl.gz", "json"])
@pytest.mark.parametrize("engine", ENGINES[:1], indirect=True)
def test_duckdb_and_trino_read_the_output_with_the_columns_of_its_table(
    corpus, run_backfill, s3_bucket, duck, trino, output_format
):
    """On JSON Lines and on ``output_format=json``, whose objects (one line each) the same table reads."""
    conf = _conf(s3_bucket, output_format, part_max_records=10)
    assert run_backfill(conf).state == "success"
    objects = read_objects(s3_bucket, "fid/")
    root = "fid/corpus"
    plan = json.loads(objects[f"{root}/_plan.json"])
    manifests = {k: json.loads(v) for k, v in objects.items() if k.endswith("/_manifest.json")}
    run = json.loads(objects[f"{root}/_run_manifest.json"])

    # The table the run wrote: the plan's columns, widened by what the windows found, as Athena DDL.
    misfits = sorted({tuple(p) for m in manifests.values() for p in m.get("table_misfits", [])})
    assert {("message", "sender"), ("message", "sender.email"), ("message", "raw", "secret")} <= set(misfits)
    columns = widened(from_saved(plan["table"]), misfits)
    location = f"s3://{s3_bucket}/{root}/"
    ddl = AthenaTable("corpus", location, columns, ("2024-03-01", "2024-03-02")).ddl()
    assert objects[f"{root}/_athena.sql"].decode() == ddl == run["table"]["ddl"]
    assert run["table"]["name"] == "corpus" and run["table"]["location"] == location
    assert ",`sender`:string," in ddl and "`status_id`:string" in ddl and "`audit` array<struct<" in ddl
    assert "'mapping._timestamp' = '@timestamp'" in ddl and "'mapping.sender_email' = 'sender.email'" in ddl

    data = sorted(k for k in objects if not k.rsplit("/", 1)[1].startswith("_"))
    raw = {k: gzip.decompress(v) if k.endswith(".gz") else v for k, v in objects.items() if k in data}
    refused = [k for k in data if LONE_SURROGATE.search(raw[k])]
    assert 1 <= len(refused) <= 2, refused  # the corpus has two messages with lone surrogates
    urls = {k: f"s3://{s3_bucket}/{k}" for k in data}
    types = {name: duckdb_type(kind) for name, kind in columns.items()}

    # Counts per dt equal the manifests' (the refused lines count as rows of NULLs with ignore_errors).
    per_dt = _read(duck, list(urls.values()), types, "SELECT dt, count(*) FROM t GROUP BY dt ORDER BY dt",
                   ignore_errors="true")  # fmt: skip
    with pytest.raises(duckdb.InvalidInputException, match="no low surrogate"):
        _read(duck, [urls[refused[0]]], types, "SELECT count(*) FROM t")

    # Everything else reads strictly: every value fits its column's type, each message once.
    readable = [urls[k] for k in data if k not in refused]
    query = ('SELECT message_id, status.status_id, list_transform(audit, lambda a: a.audit_id), '
             'message."@timestamp", message.sender FROM t')  # fmt: skip
    held = {_id.decode() for k in refused for _id in re.findall(rb'"message_id":"(m\d{3})","window"', raw[k])}
    _assert_read_as_loaded(per_dt, _read(duck, readable, types, query), manifests, held=held)
    assert all(window for (window,) in _read(duck, readable, types, 'SELECT "window" FROM t'))

    # Trino, Athena's engine, reads every object with the table as Glue would hold it: the same columns, SerDe and
    # SerDe properties (case.insensitive, mapping._timestamp = @timestamp, ...), through its OpenX JSON reader.
    name = f"corpus_{output_format.replace('.', '_')}"
    trino.register_glue_table(AthenaTable(name, location, columns, ("2024-03-01", "2024-03-02")).glue_input())
    _assert_read_as_loaded(*_trino_rows(trino, name, "_timestamp"), manifests)  # lone surrogates too (Java's strings)


def _assert_read_as_loaded(
    per_dt: list[Any], rows: list[Any], manifests: dict[str, Any], held: set[str] | frozenset[str] = frozenset()
) -> None:
    """The rows per ``dt`` equal the manifests' counts; ``rows`` (message id, status id, audit ids, @timestamp,
    sender) hold every message of the corpus once (but ``held``), with its related documents' ids and its values
    as loaded (``sender``, a JSON-text column, token for token)."""
    expected_dt: dict[str, int] = {}
    for m in manifests.values():
        expected_dt[m["window"]["start"][:10]] = expected_dt.get(m["window"]["start"][:10], 0) + m["messages"]
    assert [(str(day), n) for day, n in per_dt] == sorted(expected_dt.items())
    docs = _documents()
    messages = {doc_id: json.loads(text) for index, doc_id, text in docs if index == MESSAGES}
    assert sorted(r[0] for r in rows) == sorted(set(messages) - held)  # each once
    status, audit = _related(docs)
    for message_id, status_id, audit_ids, timestamp, sender in rows:
        assert status_id == status.get(message_id) and audit_ids == audit.get(message_id, []), message_id
        assert timestamp == messages[message_id].get("@timestamp"), message_id
        expected = messages[message_id].get("sender")
        assert (sender is None) == (expected is None), message_id
        if sender is not None:  # JSON text with every token of the source
            assert tokens(sender) == tokens(json.dumps(expected, ensure_ascii=False)), message_id


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _trino_rows(trino: Any, name: str, timestamp: str) -> tuple[list[Any], list[Any]]:
    """The rows per ``dt`` of the Trino table ``name``, and the rows :func:`_assert_read_as_loaded` checks."""
    table = _identifier(name)
    per_dt = trino.query("SELECT dt, count(*) FROM t GROUP BY dt ORDER BY dt".replace("FROM t", f"FROM {table}"))
    query = "SELECT message_id, status.status_id, transform(audit, a -> a.audit_id), message.TS, message.sender FROM t"
    return per_dt, trino.query(query.replace("FROM t", f"FROM {table}").replace(".TS,", f".{_identifier(timestamp)},"))


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _related(docs: list[tuple[str, str, str]]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Per message id: its current status's ``status_id``, and its audit records' ``audit_id`` in order."""
    statuses: dict[str, list[tuple[str, str]]] = {}
    audits: dict[str, list[tuple[str, str]]] = {}
    for index, _, text in docs:
        if index == MESSAGES:
            continue
        doc = json.loads(text)
        joined = doc["message_id"] if isinstance(doc["message_id"], list) else [doc["message_id"]]
        for message_id in joined:
            if index == STATUS:
                statuses.setdefault(message_id, []).append((doc["updated_at"], doc["status_id"]))
            else:
                audits.setdefault(message_id, []).append((doc["@timestamp"], doc["audit_id"]))
    return ({m: max(s)[1] for m, s in statuses.items()},
            {m: [a for _, a in sorted(found)] for m, found in audits.items()})  # fmt: skip


@pytest.mark.parametrize("engine", ENGINES[:1], indirect=True)
def test_parquet_names_every_field_that_misfits_and_with_them_as_json_fields_duckdb_and_trino_read_it_all(
    corpus, engine, run_backfill, s3_server, s3_bucket, duck, trino, caplog
):
    conf = _conf(s3_bucket, "parquet", part_max_records=10)
    assert cli(["plan", "--conf", json.dumps(conf)]) == 0  # the dry run's sample page tells first
    sampled = re.search(r"Parquet columns cannot: add (\[.*?\]) to json_fields", caplog.text)
    assert sampled and "message.sender" in json.loads(sampled.group(1))

    assert run_backfill(conf).state == "failed"
    assert not [k for k in read_objects(s3_bucket, "fid/") if k.endswith("/_manifest.json")]  # every window misfits

    # What each window's task failed with, as its log shows it (here without Airflow, to hold the exception).
    config = from_params(conf, load_defaults(Path(__file__).resolve().parents[2] / "include" / DEFAULTS))
    store = ObjectStore(s3_client(s3_server.endpoint_url), s3_bucket)
    found: set[tuple[str, ...]] = set()
    with reader_at(engine.url) as reader:
        for day in (1, 2):
            window = Window(utc(2024, 3, day), utc(2024, 3, day + 1))
            with pytest.raises(ParquetMisfit, match=r"field\(s\) hold values their Parquet columns cannot") as err:
                run_window(config.with_cluster(reader.cluster.cluster_uuid), window, reader, store)
            found |= err.value.found.keys()
            assert "Add them to the run's json_fields" in str(err.value)
    json_fields = sorted(column_path_text(path) for path in found)
    assert {"message.sender", "message.`sender.email`", "message.raw.secret", "audit.message_id"} <= set(json_fields)

    conf |= {"json_fields": json_fields, "force": True}  # a new schema: the backfill is planned again
    assert run_backfill(conf).state == "success"
    assert cli(["verify", "--conf", json.dumps(conf)]) == 0
    objects = read_objects(s3_bucket, "fid/")
    assert run_backfill(conf).state == "success"  # force: every window written again
    again = read_objects(s3_bucket, "fid/")
    parts = sorted(k for k in objects if k.endswith(".parquet"))
    assert parts == sorted(k for k in again if k.endswith(".parquet"))
    assert all(objects[k] == again[k] for k in parts)  # a rerun is byte-identical
    root = "fid/corpus"
    plan = json.loads(objects[f"{root}/_plan.json"])
    manifests = {k: json.loads(v) for k, v in objects.items() if k.endswith("/_manifest.json")}
    columns = from_saved(plan["table"])
    location = f"s3://{s3_bucket}/{root}/"
    ddl = AthenaTable("corpus", location, columns, ("2024-03-01", "2024-03-02"), parquet=True).ddl()
    assert objects[f"{root}/_athena.sql"].decode() == ddl and "\nSTORED AS PARQUET\n" in ddl
    assert ",`sender`:string," in ddl  # one of the json_fields

    files = sorted(f"s3://{s3_bucket}/{k}" for k in objects if k.endswith(".parquet"))
    assert files and all("/dt=2024-03-0" in f for f in files)
    source = f"read_parquet([{', '.join(_literal(f) for f in files)}], hive_partitioning=true)"

    def sql(query: str) -> list[Any]:
        return duck.sql(query.replace("FROM t", f"FROM {source}")).fetchall()

    rows = sql('SELECT message_id, status.status_id, list_transform(audit, lambda a: a.audit_id), '
               'message._timestamp, message.sender FROM t')  # fmt: skip
    _assert_read_as_loaded(sql("SELECT dt, count(*) FROM t GROUP BY dt ORDER BY dt"), rows, manifests)

    table = AthenaTable("corpus_parquet", location, columns, ("2024-03-01", "2024-03-02"), parquet=True)
    trino.register_glue_table(table.glue_input())  # Trino's Parquet reader, as Athena's
    _assert_read_as_loaded(*_trino_rows(trino, "corpus_parquet", "_timestamp"), manifests)


def test_trino_takes_a_one_day_projection_and_keeps_the_keys_inside_json_text_as_written(trino, s3_server, s3_bucket):
    """``case.insensitive`` matches the table's columns to keys in any case; the JSON text of a JSON-text column
    keeps every key as written."""
    line = (b'{"message_id":"m1","window":"w","message":{"@timestamp":"t","Payload":{"Gen":1,"inner":{"UP":"x"}},'
            b'"SUBJECT":"S"}}\n')  # fmt: skip
    s3_client(s3_server.endpoint_url).put_object(
        Bucket=s3_bucket, Key="one/dt=2024-03-01/w/part-00000.jsonl.gz", Body=gzip.compress(line)
    )
    columns = {"message_id": "string", "window": "string",
               "message": {"struct": {"@timestamp": "string", "payload": "json", "subject": "string"}}}  # fmt: skip
    table = AthenaTable("one_day", f"s3://{s3_bucket}/one/", columns, ("2024-03-01", "2024-03-01"))
    assert "'projection.dt.range' = '2024-03-01,2024-03-02'" in table.ddl()  # Trino refuses two equal dates
    trino.register_glue_table(table.glue_input())
    rows = trino.query("SELECT message.payload, message.subject, message._timestamp, dt FROM one_day")
    assert rows == [['{"Gen":1,"inner":{"UP":"x"}}', "S", "t", "2024-03-01"]]
