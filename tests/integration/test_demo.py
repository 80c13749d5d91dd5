"""``make demo`` against a cluster of the user's own (``ES_URL``): indices named like the defaults' (messages,
history, status, audit), holding somebody's data, are left exactly as they were; the demo writes only indices it
creates, under its own tagged names, and completes."""

from __future__ import annotations

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
