"""``make demo`` against a cluster of the user's own (``ES_URL``): indices named like the defaults' (messages,
history, status, audit), holding somebody's data, are left exactly as they were; the demo writes only indices it
creates, under its own tagged names, and completes. What it prints can be trusted: whole records, labelled
counts, the table over the output as README shows it, and no warning a user cannot act on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("messages", "history", "status", "audit")


def test_the_demo_on_your_cluster_leaves_indices_of_the_default_names_untouched(es_client, es_cluster):
    for role in ROLES:
        es_client.options(ignore_status=404).indices.delete(index=role)
        es_client.index(index=role, id="precious", document={"owner": "production", "role": role}, refresh=True)
    before = {role: es_client.search(index=role)["hits"]["hits"] for role in ROLES}
    env = {**os.environ, "ES_URL": es_cluster.url, "DEMO_MESSAGES": "300", "PYTHONPATH": str(ROOT)}
    for name in [k for k in env if k.startswith("AIRFLOW")]:  # the demo makes its own Airflow home
        env.pop(name)
    result = subprocess.run(
        [sys.executable, "-m", "include.dev.demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "DAG run finished: success" in result.stdout
    assert {role: es_client.search(index=role)["hits"]["hits"] for role in ROLES} == before
    created = sorted(i for i in es_client.indices.get(index="es-backfill-demo-*") if i.endswith(ROLES))
    assert len(created) == 4 and "curl -X DELETE" in result.stdout
    es_client.indices.delete(index=",".join(created))
    output = result.stdout + result.stderr
    warnings = [line for line in output.splitlines() if "warning" in line.lower()]
    assert all(OUR_POOL_WARNING in line for line in warnings), warnings
    assert "   windows            7 (written 7, skipped 0, failed 0)" in result.stdout
    assert "17 objects in s3://es-backfill-demo/demo/: 7 data parts, 7 window manifests, 3 for" in result.stdout
    records = _printed_records(result.stdout)
    assert len(records) == 2 and all(set(r) == {"message_id", "window", "message", *ROLES[1:]} for r in records)
    ddl = result.stdout.split(TABLE_HEADING, 1)[1].split("\n", 1)[1].split(");\n", 1)[0] + ");\n"
    assert ddl.startswith("CREATE EXTERNAL TABLE IF NOT EXISTS `backfill_20240301t000000z_20240308t000000z_1d`")
    assert f"```sql\n{ddl}```" in (ROOT / "README.md").read_text()  # README shows the demo's table as it is


OUR_POOL_WARNING = "Extract tasks run in pool 'es_backfill', which this task cannot check"
TABLE_HEADING = "== The table over the output"


def _printed_records(stdout: str) -> list[dict]:
    """The records the demo prints after its heading, each a whole JSON object."""
    text = stdout[stdout.index("== The first 2 of") : stdout.index(TABLE_HEADING)].split("\n", 1)[1]
    decoder, records = json.JSONDecoder(), []
    while text.strip():
        record, end = decoder.raw_decode(text.lstrip())
        records.append(record)
        text = text.lstrip()[end:]
    return records
