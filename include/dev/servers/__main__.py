"""``make servers``: a local engine and S3 server to try the command line, ``verify`` and a local Airflow against.

Starts the engine ``DEMO_ENGINE`` names (default Elasticsearch 9.5.4) and an S3 server (moto) on 127.0.0.1,
seeds a week of synthetic messages (2024-03-01 .. 2024-03-08, ``SERVERS_MESSAGES``, default 5,000) into the
node's ``messages``, ``history``, ``status`` and ``audit`` indices, creates the bucket ``es-backfill-local``,
writes the two connection files and a conf for them, prints the lines to paste into another shell, and runs
until Ctrl-C (or SIGTERM), which stops both servers. With ``ES_URL`` (a cluster of yours) it seeds nothing.
"""

from __future__ import annotations

import atexit
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
from pathlib import Path

BUCKET = "es-backfill-local"
MESSAGES = int(os.environ.get("SERVERS_MESSAGES", "5000"))


def main() -> None:
    import boto3

    from include.dev.datagen import IndexNames, seed_week
    from include.dev.servers.elasticsearch import elasticsearch_connection_uri
    from include.dev.servers.local import running_local_servers
    from include.dev.servers.s3 import REGION, TEST_ACCESS_KEY, TEST_SECRET_KEY, aws_connection_uri
    from include.dev.servers.signals import stop_on_signals

    stop_on_signals()  # SIGTERM (from a test, or kill) ends the run like Ctrl-C
    with running_local_servers() as (cluster, s3):
        if cluster.started_here:
            counts = seed_week(cluster.url, MESSAGES, IndexNames())
            print(f"Seeded 2024-03-01 .. 2024-03-08: {counts.as_dict()}")
        env = {
            "AWS_ACCESS_KEY_ID": TEST_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": TEST_SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            # Every AWS client (boto3, the CLI, Secrets Manager calls) goes to the local server.
            "AWS_ENDPOINT_URL": s3.endpoint_url,
        }
        boto3.session.Session(
            aws_access_key_id=TEST_ACCESS_KEY, aws_secret_access_key=TEST_SECRET_KEY, region_name=REGION
        ).client("s3", endpoint_url=s3.endpoint_url).create_bucket(Bucket=BUCKET)
        files = Path(tempfile.mkdtemp(prefix="es-backfill-servers-"))
        atexit.register(shutil.rmtree, files, ignore_errors=True)  # connections to servers stopped by then
        (files / "es_conn.json").write_text(elasticsearch_connection_uri(cluster.url) + "\n")
        (files / "aws_conn.json").write_text(aws_connection_uri(s3.endpoint_url) + "\n")
        (files / "conf.json").write_text(
            json.dumps({"start": "2024-03-01", "end": "2024-03-08", "s3_bucket": BUCKET}) + "\n"
        )
        exports = " ".join(f"{name}={shlex.quote(value)}" for name, value in env.items())
        print(
            f"\nReady: {cluster.engine} {cluster.version} at {cluster.url}, S3 at {s3.endpoint_url}, "
            f"bucket {BUCKET}.\nIn {files}: es_conn.json and aws_conn.json (the connections for these servers) "
            "and conf.json (their week of messages).\nPaste into another shell, in the project folder:\n\n"
            f"export {exports}\n"
            f"cp {files}/es_conn.json {files}/aws_conn.json {files}/conf.json .\n\n"
            "then follow README's Quickstart from step 3 (the dry run). Ctrl-C stops the servers.",
            flush=True,
        )
        try:
            signal.pause()
        except KeyboardInterrupt:
            print("Stopping the servers", file=sys.stderr)


if __name__ == "__main__":
    main()
