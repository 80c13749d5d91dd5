"""``make demo``: the whole backfill, end to end, on this machine.

Starts a real Elasticsearch and an S3 server (moto), seeds a week of synthetic
messages with their history, status and audit documents, runs the ``es_backfill``
DAG with ``dag.test()`` and a conf, then shows the run manifest, the objects
written and a few records. Set ``ES_URL`` / ``S3_ENDPOINT_URL`` to use servers
of your own instead, or ``DEMO_ENGINE`` (e.g. ``opensearch:2.19.6`` or
``elasticsearch:7.10.2``, any pair of ``include/dev/servers/elasticsearch.ENGINES``)
to start another engine; nothing is left running afterwards. On a cluster of yours
(``ES_URL``) the demo creates four indices named ``es-backfill-demo-<tag>-<role>`` and
writes only those (it refuses to start if one exists); it leaves them for you to look at
and prints how to delete them.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tempfile
import uuid
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from include.dev.servers.airflow_env import local_airflow_env

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "es-backfill-demo"
CONF = {"start": "2024-03-01", "end": "2024-03-08", "window": "1d", "s3_bucket": BUCKET, "s3_prefix": "demo"}
MESSAGES = int(os.environ.get("DEMO_MESSAGES", "5000"))
ENGINE = os.environ.get("DEMO_ENGINE", "")


def _airflow_env() -> None:
    os.environ.update(
        {
            **local_airflow_env(tempfile.mkdtemp(prefix="es-backfill-demo-airflow-")),
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        }
    )
    sys.path[:0] = [str(ROOT / "plugins"), str(ROOT / "dags")]
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True, timeout=600)


def main() -> None:
    # The Amazon provider 9.34 warns about an Airflow-internal deprecation on every S3 hook; it is not ours to fix.
    warnings.filterwarnings("ignore", message="ProvidersManager.hooks is deprecated")
    _airflow_env()
    from opensearchpy import OpenSearch

    from include.dev.datagen import ROLES, DatasetSpec, IndexNames, load
    from include.dev.servers.elasticsearch import elasticsearch_connection_uri, running_elasticsearch, running_engine
    from include.dev.servers.s3 import aws_connection_uri, running_s3

    engine = running_engine(*ENGINE.split(":", 1)) if ENGINE else running_elasticsearch()
    with engine as cluster, running_s3() as s3:
        os.environ["AIRFLOW_CONN_ELASTICSEARCH_DEFAULT"] = elasticsearch_connection_uri(cluster.url)
        os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = aws_connection_uri(s3.endpoint_url)

        # A node started here is empty; a cluster of yours gets indices of this run's own names.
        tag = _tag()
        names = IndexNames() if cluster.started_here else IndexNames(*(f"{tag}-{role}" for role in ROLES))
        conf = {**CONF, "source": _source_for(names)} if not cluster.started_here else CONF
        print(f"\n== Seeding {MESSAGES} messages (2024-03-01 .. 2024-03-08) into {cluster.url}, indices "
              f"{', '.join(names.of(r) for r in ROLES)}")  # fmt: skip
        # opensearch-py speaks plain JSON, which every engine of the suite accepts.
        with OpenSearch(cluster.url, timeout=60) as es:
            spec = DatasetSpec(
                messages=MESSAGES,
                start=datetime(2024, 3, 1, tzinfo=UTC),
                end=datetime(2024, 3, 8, tzinfo=UTC),
                indices=names,
            )
            print("   documents per index:", load(es, spec).as_dict())

        from airflow.dag_processing.dagbag import DagBag
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        hook = S3Hook(aws_conn_id="aws_default")
        hook.create_bucket(bucket_name=BUCKET)
        print(f"\n== Running the es_backfill DAG (dag.test) with conf {json.dumps(conf)}")
        run = DagBag(str(ROOT / "dags")).dags["es_backfill"].test(run_conf=conf)
        print(f"   DAG run finished: {run.state}")
        if not cluster.started_here:
            created = f"{cluster.url}/{','.join(names.of(r) for r in ROLES)}"
            print(f"\n== The demo's indices stay on {cluster.url}; to delete them: curl -X DELETE '{created}'")
        _show(hook, run.state)


def _tag() -> str:
    return f"es-backfill-demo-{datetime.now(UTC):%Y%m%d%H%M%S}-{uuid.uuid4().hex[:6]}"


def _source_for(names: Any) -> dict[str, Any]:
    """The defaults file's messages and related settings, pointed at ``names``."""
    from es_backfill.config import defaults_path, load_defaults

    defaults = load_defaults(defaults_path())
    return {
        "messages": {**defaults["messages"], "index": names.messages},
        "related": [{**spec, "index": names.of(spec["name"])} for spec in defaults["related"]],
    }


def _show(hook, state: str) -> None:
    client = hook.get_conn()
    keys = sorted(hook.list_keys(bucket_name=BUCKET, prefix="demo/"))
    print(f"\n== Written to s3://{BUCKET}/ ({len(keys)} objects)")
    for key in keys:
        size = client.head_object(Bucket=BUCKET, Key=key)["ContentLength"]
        print(f"   {size:>9}  {key}")
    run_manifest = next((k for k in keys if k.endswith("_run_manifest.json")), None)
    if run_manifest:
        summary = json.loads(hook.read_key(run_manifest, bucket_name=BUCKET))
        summary.pop("window_keys", None)
        print("\n== Run manifest\n" + json.dumps(summary, indent=2))
    part = next((k for k in keys if k.endswith(".jsonl.gz")), None)
    if part:
        lines = gzip.decompress(client.get_object(Bucket=BUCKET, Key=part)["Body"].read()).splitlines()
        print(f"\n== First 2 of {len(lines)} records in {part}")
        for line in lines[:2]:
            print(json.dumps(json.loads(line), indent=2, ensure_ascii=False)[:1500])
    if state != "success":
        sys.exit(f"The DAG run ended {state}")


if __name__ == "__main__":
    main()
