"""The output's table registered in the Glue Data Catalog (``glue_database``), against moto's Glue backend in
server mode (the same server as S3) reached through the Amazon provider's ``GlueCatalogHook``: created, updated
by a rerun, and never put over another backfill's table."""

from __future__ import annotations

import json

import boto3
import orjson
import pytest

from es_backfill.cli import main as cli
from es_backfill.table import AthenaTable, from_saved, widened
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
    wanted = expected.glue_input({"es_backfill.location": location})
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
