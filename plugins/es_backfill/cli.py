"""The backfill's operations outside Airflow: ``plan`` (a dry run), ``verify`` and ``table``.

    python -m es_backfill.cli verify --conf conf.json
    python -m es_backfill.cli plan --conf '{"start": "2024-03-01", "end": "2024-03-08", "s3_bucket": "b"}'
    python -m es_backfill.cli table --conf conf.json

``--conf`` takes the same JSON as the DAG's trigger form (inline or a file). Clients
come from the Airflow connections named in the config, or from ``--es-url`` and
``--s3-endpoint-url`` (credentials then from the usual AWS environment variables).
``plan`` is always a dry run: it checks the cluster and the saved plan as the DAG's plan task
would, prints per-window counts and the estimate, and exits 2 on a bad conf.
``verify`` prints its report and exits 1 if it found a problem; it never writes. ``verify --redaction``
also proves the redaction rules on every record (no field a ``drop`` rule names, in any form; only
hashes and masks where ``hash`` and ``mask`` rules apply): the report to show whoever approves the export.
``table`` writes ``_athena.sql`` for a backfill already written (from its plan and window manifests, as
``summarise`` does), registers the table in the conf's ``glue_database`` if it names one, and prints the DDL;
it needs no cluster.
Run with ``plugins/`` on ``PYTHONPATH``; ``make verify CONF=conf.json`` does.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from botocore.exceptions import BotoCoreError, ClientError

from es_backfill.catalog import GlueCatalog
from es_backfill.config import BackfillConfig, ConfigError, defaults_path, from_params, load_defaults
from es_backfill.sink import ObjectStore
from es_backfill.source import Reader, SourceError


def _conf(text: str) -> dict[str, Any]:
    """The conf: ``text`` itself if it is a JSON object, else the file it names; ConfigError naming the file and
    the line of a mistake."""
    if text.lstrip().startswith("{"):
        where, content = "--conf", text
    else:
        where = text
        try:
            content = Path(text).read_text()
        except OSError as err:
            problem = f"--conf {text}: cannot read the file ({err.strerror}); give a JSON file or the JSON itself"
            raise ConfigError([problem]) from err
    try:
        conf = json.loads(content)
    except json.JSONDecodeError as err:
        raise ConfigError([f"{where}: not JSON at line {err.lineno}, column {err.colno}: {err.msg}"]) from err
    if not isinstance(conf, dict):
        raise ConfigError([f"{where}: the conf must be a JSON object, like the trigger form's"])
    return conf


def _reader(config: BackfillConfig, args: argparse.Namespace) -> Reader:
    """The reader; ConfigError if the cluster refuses ``GET /`` or runs an engine it cannot read."""
    from es_backfill.engines import ConnectionSettings
    from es_backfill.hooks import open_reader, search_reader

    if args.es_url:
        settings = ConnectionSettings(args.es_url.rstrip("/"), request_timeout_s=config.source.request_timeout_s)
        return open_reader(
            settings, "--es-url", max_retries=config.source.max_retries, max_in_flight=config.source.max_in_flight
        )
    return search_reader(config.source)


def _store(config: BackfillConfig, args: argparse.Namespace) -> ObjectStore:
    if args.s3_endpoint_url:
        from es_backfill.sink import S3_CLIENT_CONFIG

        s3 = _session().client("s3", endpoint_url=args.s3_endpoint_url, config=S3_CLIENT_CONFIG)
        return ObjectStore(s3, config.s3_bucket, config.encryption)
    from es_backfill.hooks import object_store

    return object_store(config)


def _catalog(config: BackfillConfig, args: argparse.Namespace) -> GlueCatalog | None:
    """The conf's ``glue_database`` (None without one): at ``--s3-endpoint-url`` when given (a server of S3 and
    Glue, as moto is), else through the conf's AWS connection."""
    if not config.glue_database:
        return None
    if not args.s3_endpoint_url:
        from es_backfill.hooks import glue_catalog

        return glue_catalog(config)
    from es_backfill.catalog import GLUE_CLIENT_CONFIG

    glue = _session().client("glue", endpoint_url=args.s3_endpoint_url, config=GLUE_CLIENT_CONFIG)
    return GlueCatalog(glue, config.glue_database)


def _session() -> Any:
    """A boto3 session of its own: credentials as the environment has them now, not as an earlier client cached
    them."""
    import boto3

    return boto3.session.Session()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="es_backfill.cli", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--conf", required=True, help="the trigger conf: JSON text or a file holding it")
    common.add_argument("--defaults", type=Path, default=defaults_path(), help="the defaults file")
    common.add_argument(
        "--es-url",
        help="a cluster URL to use without authentication, instead of the conf's Airflow connection (for local "
        "test servers; give a real cluster a connection, which carries its credentials and TLS settings)",
    )
    common.add_argument(
        "--s3-endpoint-url",
        help="an S3 endpoint instead of the conf's Airflow connection; credentials from the usual AWS environment",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{plan,verify,table}")
    commands.add_parser(
        "plan",
        parents=[common],
        help="a dry run: check the conf, the cluster and the bucket, print the windows, counts and estimates",
        description="A dry run, as the DAG's plan task would do it: checks the conf, the cluster and the bucket, "
        "and prints per-window counts and the size and time estimates. Writes nothing; exits 2 on a bad conf.",
    ).set_defaults(redaction=False)
    verify_command = commands.add_parser(
        "verify",
        parents=[common],
        help="check a finished backfill against its manifests and the cluster; never writes",
        description="Checks a finished backfill: every window's manifest and objects, the records' ids and "
        "windows, the counts against the cluster. Never writes; exits 1 if it finds a problem.",
    )
    verify_command.add_argument(
        "--redaction",
        action="store_true",
        help="also prove the redaction rules on every record: no dropped field, only hashes and masks",
    )
    commands.add_parser(
        "table",
        parents=[common],
        help="write _athena.sql for a backfill already written (and register it in the conf's glue_database)",
        description="Writes the table over a backfill already written, as the DAG's summarise task does: "
        "_athena.sql from its plan's columns and its windows' findings, and the table in the conf's glue_database "
        "if it names one. Prints the DDL. Needs no cluster; exits 2 for a bad conf, no plan with columns, or a Glue "
        "database missing or holding another backfill's table of that name, 1 if Glue refuses a request.",
    ).set_defaults(redaction=False)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with _result_only_on_stdout() as out:
        return _command(args, out)


@contextlib.contextmanager
def _result_only_on_stdout() -> Iterator[TextIO]:
    """The stream for the command's result (the DDL, verify's report): standard output, which holds nothing else
    meanwhile: what else writes to it (Airflow's log lines do) goes to standard error. A standard output that is
    not the process's (a caller's capture) is left as it is."""
    sys.stdout.flush()
    try:
        ours = sys.stdout.fileno() == 1
    except (AttributeError, OSError, io.UnsupportedOperation):
        ours = False
    if not ours:
        yield sys.stdout
        return
    saved = os.dup(1)
    result = os.fdopen(os.dup(saved), "w", encoding="utf-8")
    os.dup2(2, 1)
    try:
        yield result
    finally:
        result.close()
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _command(args: argparse.Namespace, out: TextIO) -> int:
    try:
        config = from_params(_conf(args.conf), load_defaults(args.defaults))
        store = _store(config, args)
        if args.command == "table":
            return _table(config, store, _catalog(config, args), out)
        reader = _reader(config, args)
    except (ConfigError, SourceError) as err:  # a bad conf, a cluster that cannot be read: one line, no traceback
        print(err, file=sys.stderr)
        return 2
    with reader:
        from es_backfill.plan import check_bucket

        try:
            check_bucket(store)
        except ConfigError as err:
            print(err, file=sys.stderr)
            return 2
        return _run(args.command, config, reader, store, out, args.redaction)


def _table(config: BackfillConfig, store: ObjectStore, catalog: GlueCatalog | None, out: TextIO) -> int:
    from es_backfill.plan import check_bucket, check_catalog
    from es_backfill.summary import TableRegistrationError, write_existing_table

    check_bucket(store)
    try:
        check_catalog(config, catalog)
        print(write_existing_table(config, store, catalog)["ddl"], end="", file=out)
    except (TableRegistrationError, ClientError, BotoCoreError) as err:  # Glue refused (no permission, a race)
        print(err, file=sys.stderr)
        return 1
    return 0


def _run(
    command: str, config: BackfillConfig, reader: Reader, store: ObjectStore, out: TextIO, redaction: bool = False
) -> int:
    if command == "plan":
        from es_backfill.plan import check_cluster, dry_run_report, identify_cluster, plan_or_resume
        from es_backfill.summary import log_dry_run

        try:
            config = identify_cluster(replace(config, dry_run=True), reader)
            check_cluster(config, reader)
            windows = plan_or_resume(config, reader, store, max_windows=1024)
        except ConfigError as err:
            print(err, file=sys.stderr)
            return 2
        log_dry_run(dry_run_report(config, reader, windows))
        return 0
    from es_backfill.plan import identify_cluster
    from es_backfill.verify import verify

    report = verify(identify_cluster(config, reader), reader, store, redaction=redaction)
    print(report.render(), file=out)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
