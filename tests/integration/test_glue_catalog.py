"""The output's table registered in the Glue Data Catalog (``glue_database``), against moto's Glue backend in
server mode (the same server as S3) reached through the Amazon provider's ``GlueCatalogHook``: created, updated
by a rerun, and never put over another backfill's table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import orjson
import pytest
from botocore.exceptions import ClientError

from es_backfill.catalog import GlueCatalog
from es_backfill.cli import main as cli
from es_backfill.config import from_params, load_defaults
from es_backfill.manifest import write_plan
from es_backfill.sink import ObjectStore
from es_backfill.summary import ReconciliationError, TableRegistrationError, summarise, write_existing_table
from es_backfill.table import AthenaTable, from_mappings, from_saved, widened
from es_backfill.windows import Window
from tests.integration.support import read_objects, s3_client, source_override, utc


@pytest.fixture
def glue(s3_server):
    client = boto3.client("glue", endpoint_url=s3_server.endpoint_url, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
    client.create_database(DatabaseInput={"Name": "exports"})
    yield client
    client.delete_database(Name="exports")


def _conf(names, bucket: str, backfill_name: str, **extra):
    return {"start": "2024-03-01", "end": "2024-03-03", "s3_bucket": bucket, "s3_prefix": "glue",
            "backfill_name": backfill_name, "glue_database": "exports", "source": source_override(names),
            **extra}  # fmt: skip


def test_the_run_registers_its_table_a_rerun_and_the_cli_update_it_and_another_backfill_of_that_name_is_refused(
    seeded, run_backfill, s3_server, s3_bucket, glue, capfd
):
    names, _ = seeded({"messages": 60, "start": utc(2024, 3, 1), "end": utc(2024, 3, 3)})
    assert run_backfill(_conf(names, s3_bucket, "orders-2024")).state == "success"
    objects = read_objects(s3_bucket, "glue/orders-2024/")
    run = orjson.loads(objects["glue/orders-2024/_run_manifest.json"])
    assert run["table"]["glue_table"] == "exports.orders_2024"
    location = f"s3://{s3_bucket}/glue/orders-2024/"
    table = glue.get_table(DatabaseName="exports", Name="orders_2024")["Table"]
    plan = orjson.loads(objects["glue/orders-2024/_plan.json"])
    misfits = [path for k, v in objects.items() if k.endswith("/_manifest.json")
               for path in orjson.loads(v).get("table_misfits", [])]  # fmt: skip
    columns = widened(from_saved(plan["table"]), sorted(misfits))
    expected = AthenaTable("orders_2024", location, columns, ("2024-03-01", "2024-03-02"))
    wanted = expected.glue_input()
    assert table["StorageDescriptor"]["Columns"] == wanted["StorageDescriptor"]["Columns"]
    assert table["StorageDescriptor"]["Location"] == location
    assert table["StorageDescriptor"]["SerdeInfo"] == wanted["StorageDescriptor"]["SerdeInfo"]
    assert table["PartitionKeys"] == [{"Name": "dt", "Type": "string"}]
    assert table["Parameters"] == wanted["Parameters"]
    assert table["Parameters"]["projection.dt.range"] == "2024-03-01,2024-03-02"
    assert run["table"]["ddl"] == objects["glue/orders-2024/_athena.sql"].decode() == expected.ddl()

    # A rerun (a day more, in Parquet) updates the table it registered. The generator's lists where the mappings
    # have one value or one object are what its data needs in json_fields (README: Parquet output).
    fields = ["message.recipients", "message.tags", "status.changes"]
    parquet = _conf(names, s3_bucket, "orders-2024", end="2024-03-04", force=True, output_format="parquet",
                    json_fields=fields)  # fmt: skip
    assert run_backfill(parquet).state == "success"
    table = glue.get_table(DatabaseName="exports", Name="orders_2024")["Table"]
    assert table["Parameters"]["projection.dt.range"] == "2024-03-01,2024-03-03"
    assert table["Parameters"]["classification"] == "parquet"
    key = "glue/orders-2024/_athena.sql"
    ddl = read_objects(s3_bucket, key)[key].decode()
    assert "\nSTORED AS PARQUET\n" in ddl

    # The CLI writes and registers the table of a backfill already written, with no cluster.
    s3_client(s3_server.endpoint_url).delete_object(Bucket=s3_bucket, Key=key)
    glue.delete_table(DatabaseName="exports", Name="orders_2024")
    capfd.readouterr()
    assert cli(["table", "--conf", json.dumps(parquet)]) == 0
    assert capfd.readouterr().out.endswith(ddl)  # after the hooks' log lines, in this process
    assert read_objects(s3_bucket, key)[key].decode() == ddl
    again = glue.get_table(DatabaseName="exports", Name="orders_2024")["Table"]
    assert (again["StorageDescriptor"], again["Parameters"]) == (table["StorageDescriptor"], table["Parameters"])
    assert cli(["table", "--conf", json.dumps(parquet | {"backfill_name": "never-run"})]) == 2
    assert "glue/never-run/ holds no plan with table columns" in capfd.readouterr().err

    # Another backfill whose table takes the same name is refused at plan, before it writes anything.
    capfd.readouterr()
    assert run_backfill(_conf(names, s3_bucket, "orders_2024")).state == "failed"
    out, err = capfd.readouterr()
    assert (f"Glue table exports.orders_2024 exists and is backfill {location} (it reads {location}): it is left "
            "as it is. Use another backfill_name") in out + err  # fmt: skip
    assert read_objects(s3_bucket, "glue/orders_2024/") == {}
    assert glue.get_table(DatabaseName="exports", Name="orders_2024")["Table"]["Parameters"] == table["Parameters"]


def test_a_missing_glue_database_fails_the_plan_naming_it(seeded_small, run_backfill, s3_bucket, capfd):
    conf = _conf(seeded_small, s3_bucket, "nodb") | {"glue_database": "no_such_db"}
    assert run_backfill(conf).state == "failed"
    out, err = capfd.readouterr()
    assert "glue_database 'no_such_db' does not exist in the Glue Data Catalog: create it" in out + err
    assert read_objects(s3_bucket, "glue/") == {}


ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = load_defaults(ROOT / "include" / "backfill_defaults.json")


def _config(bucket: str, **conf):
    params = {"start": "2024-03-01", "end": "2024-03-03", "s3_bucket": bucket, "backfill_name": "orders", **conf}
    return from_params(params, DEFAULTS)


def _planned(s3_server, bucket: str, **conf):
    """A backfill of two windows planned (its _plan.json written, as plan writes it) and its store."""
    config = _config(bucket, **conf)
    store = ObjectStore(s3_client(s3_server.endpoint_url), bucket)
    windows = [Window(utc(2024, 3, 1), utc(2024, 3, 2)), Window(utc(2024, 3, 2), utc(2024, 3, 3))]
    columns = from_mappings([{"properties": {"size": {"type": "long"}}}], [])
    write_plan(store, config, windows, {"engine": "elasticsearch"}, columns)
    return config, store, [w.to_dict() for w in windows]


def _result(window, messages: int) -> dict:
    return {"window": window, "status": "written", "es_count": 2, "messages": messages, "related": {},
            "objects": 1, "bytes": 10}  # fmt: skip


def test_a_table_glue_refuses_fails_the_run_after_its_manifest_is_written_saying_so(s3_server, s3_bucket, glue):
    config, store, windows = _planned(s3_server, s3_bucket, glue_database="exports")
    glue.create_table(DatabaseName="exports", TableInput={"Name": "orders", "Parameters": {}})  # made by hand since
    with pytest.raises(TableRegistrationError, match=r"The Glue table exports.orders could not be registered: Glue "
                       r"table exports.orders exists and is not es-backfill's"):  # fmt: skip
        summarise(config, windows, [_result(w, 2) for w in windows], store, catalog=GlueCatalog(glue, "exports"))
    objects = read_objects(s3_bucket, "orders/")
    run = orjson.loads(objects["orders/_run_manifest.json"])
    assert run["messages"] == 4 and "glue_table" not in run["table"]
    assert "exists and is not es-backfill's" in run["table"]["glue_error"]
    assert objects["orders/_athena.sql"].decode() == run["table"]["ddl"]


def test_a_run_that_does_not_reconcile_says_so_and_leaves_the_glue_table_alone(s3_server, s3_bucket, glue):
    config, store, windows = _planned(s3_server, s3_bucket, glue_database="exports")
    with pytest.raises(ReconciliationError, match="1 windows wrote a different number of messages"):
        summarise(config, windows, [_result(windows[0], 2), _result(windows[1], 1)], store,
                  catalog=GlueCatalog(glue, "exports"))  # fmt: skip
    assert glue.get_tables(DatabaseName="exports")["TableList"] == []
    assert orjson.loads(read_objects(s3_bucket, "orders/")["orders/_run_manifest.json"])["mismatched_windows"]


def test_the_table_of_an_existing_backfill_reads_the_format_it_was_written_in_whatever_the_conf_says(
    s3_server, s3_bucket
):
    _, store, _ = _planned(s3_server, s3_bucket, output_format="parquet")
    described = write_existing_table(_config(s3_bucket), store)  # a conf without output_format: jsonl.gz
    assert "\nSTORED AS PARQUET\n" in described["ddl"]
    assert read_objects(s3_bucket, "orders/_athena.sql")["orders/_athena.sql"].decode() == described["ddl"]


class CreatedMeanwhile:
    """The Glue client, but another backfill's run creates the table between our look and our create."""

    def __init__(self, client) -> None:
        self._client = client
        self.exceptions = client.exceptions

    def __getattr__(self, name: str):
        return getattr(self._client, name)

    def create_table(self, **request):
        owner = {"es_backfill.location": "s3://other/backfill/"}
        self._client.create_table(DatabaseName="exports", TableInput={"Name": "orders", "Parameters": owner})
        return self._client.create_table(**request)


def test_a_table_another_backfill_created_since_the_plan_is_named_not_a_bare_already_exists(s3_server, s3_bucket, glue):
    config, store, windows = _planned(s3_server, s3_bucket, glue_database="exports")
    with pytest.raises(TableRegistrationError, match=r"exports.orders exists and is backfill s3://other/backfill/"):
        summarise(config, windows, [_result(w, 2) for w in windows], store,
                  catalog=GlueCatalog(CreatedMeanwhile(glue), "exports"))  # fmt: skip


def test_a_table_made_from_the_pasted_ddl_is_the_backfills_own_and_updated(s3_server, s3_bucket, glue):
    config, store, windows = _planned(s3_server, s3_bucket, glue_database="exports")
    pasted = AthenaTable("orders", f"s3://{s3_bucket}/orders/", {"message_id": "string"}, ("2024-03-01", "2024-03-01"))
    assert "'es_backfill.location'" in pasted.ddl()
    glue.create_table(DatabaseName="exports", TableInput=pasted.glue_input())  # as Athena stores the DDL's table
    run = summarise(config, windows, [_result(w, 2) for w in windows], store, catalog=GlueCatalog(glue, "exports"))
    assert run["table"]["glue_table"] == "exports.orders"
    updated = glue.get_table(DatabaseName="exports", Name="orders")["Table"]
    assert updated["Parameters"]["projection.dt.range"] == "2024-03-01,2024-03-02"
    assert [c["Name"] for c in updated["StorageDescriptor"]["Columns"]] == ["message_id", "window", "message"]


class DeniedGetDatabase(CreatedMeanwhile):
    """The Glue client of a role without glue:GetDatabase."""

    def get_database(self, **request):
        raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "not allowed"}}, "GetDatabase")


@pytest.mark.parametrize(
    ("client", "said", "written"),
    [
        (CreatedMeanwhile, "The Glue table exports.orders could not be registered: Glue table exports.orders exists "
         "and is backfill s3://other/backfill/", True),
        (DeniedGetDatabase, "An error occurred (AccessDeniedException) when calling the GetDatabase operation: not "
         "allowed", False),
    ],
)  # fmt: skip
def test_the_command_line_says_what_glue_refused_without_a_traceback_and_exits_1(
    client, said, written, s3_server, s3_bucket, glue, monkeypatch, capfd
):
    _planned(s3_server, s3_bucket, glue_database="exports")
    monkeypatch.setattr("es_backfill.cli._catalog", lambda *_: GlueCatalog(client(glue), "exports"))
    conf = {"start": "2024-03-01", "end": "2024-03-03", "s3_bucket": s3_bucket, "backfill_name": "orders",
            "glue_database": "exports"}  # fmt: skip
    capfd.readouterr()
    assert cli(["table", "--conf", json.dumps(conf)]) == 1
    out, err = capfd.readouterr()
    assert said in err and "Traceback" not in err and "CREATE EXTERNAL TABLE" not in out
    assert ("orders/_athena.sql" in read_objects(s3_bucket, "orders/")) is written  # registering comes after


def test_the_command_line_prints_only_the_ddl_on_standard_output_so_it_can_be_saved(s3_server, s3_bucket):
    """Run as a user runs it (its own process, standard output to a file): Airflow's log lines go elsewhere."""
    _planned(s3_server, s3_bucket)
    conf = {"start": "2024-03-01", "end": "2024-03-03", "s3_bucket": s3_bucket, "backfill_name": "orders"}
    env = {**os.environ, "PYTHONPATH": str(ROOT / "plugins")}
    done = subprocess.run([sys.executable, "-m", "es_backfill.cli", "table", "--conf", json.dumps(conf)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == read_objects(s3_bucket, "orders/_athena.sql")["orders/_athena.sql"].decode()
    assert "Wrote the table orders" in done.stderr  # the log lines, on standard error
