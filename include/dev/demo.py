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

import atexit
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from include.dev.servers.airflow_env import local_airflow_env
from include.dev.servers.signals import airflow_in_process, stop_on_signals

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "es-backfill-demo"
CONF = {"start": "2024-03-01", "end": "2024-03-08", "window": "1d", "s3_bucket": BUCKET, "s3_prefix": "demo"}
MESSAGES = int(os.environ.get("DEMO_MESSAGES", "5000"))


def _airflow_env() -> None:
    home = tempfile.mkdtemp(prefix="es-backfill-demo-airflow-")
    atexit.register(shutil.rmtree, home, ignore_errors=True)  # its database and logs: nothing to look at after
    os.environ.update(
        {
            **local_airflow_env(home),
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
            # dag.test() records the output's asset event through the alias the way a scheduler does: Airflow
            # first warns that the asset is not known yet, then creates it. Nothing for a user to do.
            "AIRFLOW__LOGGING__NAMESPACE_LEVELS": "airflow.assets.manager=ERROR",
        }
    )
    sys.path[:0] = [str(ROOT / "plugins"), str(ROOT / "dags")]
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True, timeout=600)


def _quiet_airflow_internals() -> None:
    """Hide warnings about Airflow's own internals, which a user cannot act on: the Amazon provider 9.34's use of a
    deprecated ProvidersManager API, and pathspec's deprecation of the pattern class Airflow reads .airflowignore
    files with. After Airflow's import, whose own filter would otherwise come first."""
    import airflow.configuration  # noqa: F401 - installs Airflow's warning filters, which ours must precede

    warnings.filterwarnings("ignore", message="ProvidersManager.hooks is deprecated")
    warnings.filterwarnings("ignore", message=r"GitWildMatchPattern \('gitwildmatch'\) is deprecated")


def main() -> None:
    stop_on_signals()  # a SIGTERM stops the servers as Ctrl-C does
    _airflow_env()
    _quiet_airflow_internals()
    from include.dev.datagen import ROLES, IndexNames, seed_week
    from include.dev.servers.elasticsearch import elasticsearch_connection_uri
    from include.dev.servers.local import running_local_servers
    from include.dev.servers.s3 import aws_connection_uri

    with running_local_servers() as (cluster, s3):
        os.environ["AIRFLOW_CONN_ELASTICSEARCH_DEFAULT"] = elasticsearch_connection_uri(cluster.url)
        os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = aws_connection_uri(s3.endpoint_url)

        # A node started here is empty; a cluster of yours gets indices of this run's own names.
        tag = _tag()
        names = IndexNames() if cluster.started_here else IndexNames(*(f"{tag}-{role}" for role in ROLES))
        conf = {**CONF, "source": _source_for(names)} if not cluster.started_here else CONF
        print(f"\n== Seeding {MESSAGES} messages (2024-03-01 .. 2024-03-08) into {cluster.url}, indices "
              f"{', '.join(names.of(r) for r in ROLES)}")  # fmt: skip
        print("   documents per index:", seed_week(cluster.url, MESSAGES, names).as_dict())

        from airflow.dag_processing.dagbag import DagBag
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        hook = S3Hook(aws_conn_id="aws_default")
        hook.create_bucket(bucket_name=BUCKET)
        print(f"\n== Running the es_backfill DAG (dag.test) with conf {json.dumps(conf)}")
        with airflow_in_process():  # Ctrl-C or a SIGTERM still stops the demo and its servers
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
    run_manifest = next((k for k in keys if k.endswith("_run_manifest.json")), None)
    if run_manifest:
        summary = json.loads(hook.read_key(run_manifest, bucket_name=BUCKET))
        print("\n== The run, from its manifest " + run_manifest)
        for label, value in _summary_lines(summary):
            print(f"   {label:<18} {value}")
    parts = [k for k in keys if k.rsplit("/", 1)[-1].startswith("part-")]
    manifests = [k for k in keys if k.endswith("/_manifest.json")]
    print(
        f"\n== {len(keys)} objects in s3://{BUCKET}/demo/: {len(parts)} data parts, {len(manifests)} window "
        f"manifests, {len(keys) - len(parts) - len(manifests)} for the whole backfill (plan, run manifest, table)"
    )
    for key in keys:
        size = client.head_object(Bucket=BUCKET, Key=key)["ContentLength"]
        print(f"   {size:>9} bytes  {key}")
    part = next(iter(parts), None)
    if part:
        lines = gzip.decompress(client.get_object(Bucket=BUCKET, Key=part)["Body"].read()).splitlines()
        print(f"\n== The first 2 of {len(lines)} records in {part} (long values shortened here, not in the file)")
        for line in lines[:2]:
            print(json.dumps(shortened(json.loads(line)), indent=2, ensure_ascii=False))
    ddl = next((k for k in keys if k.endswith("/_athena.sql")), None)
    if ddl:
        print(f"\n== The table over the output, for Athena (README: Query the output), from {ddl}")
        print(hook.read_key(ddl, bucket_name=BUCKET))
    if state != "success":
        sys.exit(f"The DAG run ended {state}")


def _summary_lines(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """The run manifest's figures, each with a label that says what it counts."""
    related = ", ".join(f"{name} {count}" for name, count in sorted(summary["related"].items()))
    return [
        ("windows", f"{summary['windows']} (written {summary['written']}, skipped {summary['skipped']}, "
                    f"failed {summary['failed']})"),
        ("messages", f"{summary['messages']} (the cluster counts {summary['es_count']} in the range)"),
        ("related documents", related or "none"),
        ("data parts", f"{summary['objects']} objects, {summary['bytes']} bytes"),
    ]  # fmt: skip


def shortened(value: Any, chars: int = 60, items: int = 3) -> Any:
    """``value`` with strings longer than ``chars`` and lists longer than ``items`` cut short, as values: the
    result is still whole JSON, each cut saying how much it left out."""
    if isinstance(value, str) and len(value) > chars:
        return f"{value[:chars]}… (+{len(value) - chars} characters)"
    if isinstance(value, list):
        kept = [shortened(item, chars, items) for item in value[:items]]
        return [*kept, f"… (+{len(value) - items} more)"] if len(value) > items else kept
    if isinstance(value, dict):
        return {key: shortened(item, chars, items) for key, item in value.items()}
    return value


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("\nInterrupted: the demo's servers are stopped", file=sys.stderr)
        sys.exit(130)
