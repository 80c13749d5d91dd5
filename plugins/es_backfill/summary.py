"""The end of a run: gather the windows' small results, reconcile, write the run manifest and the table
over the output (``_athena.sql``, see :mod:`es_backfill.table`).

Reconciliation compares, per window, the messages written with Elasticsearch's count
for the same window and query (taken when the window was extracted). A window that
failed, or whose counts differ, fails the run, named, after the run manifest and the
table are written.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from es_backfill import lease, manifest
from es_backfill.catalog import CatalogConflict, GlueCatalog
from es_backfill.config import BackfillConfig, ConfigError
from es_backfill.lease import Holder
from es_backfill.sink import ObjectStore
from es_backfill.table import AthenaTable, table_location, table_name, widened, within_glue_limits
from es_backfill.windows import Window

log = logging.getLogger(__name__)

ATHENA_QUERY_LIMIT = 262144  # bytes of a query string


class ReconciliationError(RuntimeError):
    """Some windows failed, or their written counts differ from Elasticsearch's."""


def table(results: list[dict[str, Any]]) -> str:
    header = f"{'window':<37} {'status':<8} {'es_count':>9} {'written':>9} {'objects':>7} {'bytes':>12}"
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r['window']['label']:<37} {r['status']:<8} {r['es_count']:>9} {r['messages']:>9} "
            f"{r['objects']:>7} {r['bytes']:>12}"
        )
    return "\n".join(lines)


def summarise(
    config: BackfillConfig,
    planned: list[dict[str, Any]],
    results: list[dict[str, Any]],
    store: ObjectStore,
    holder: Holder | None = None,
    catalog: GlueCatalog | None = None,
) -> dict[str, Any]:
    """Write the output's table (``_athena.sql``) and the run manifest, release ``holder``'s lease (every window
    of the run has finished), log the table of windows, and raise if a window failed or does not reconcile. A
    run that reconciles registers the table in ``catalog`` if given, and raises TableRegistrationError after the
    rest if Glue does not take it (the manifest's table says why, in ``glue_error``).

    ``planned`` are the plan's windows; a planned window without a result failed.
    """
    finished = {r["window"]["key"] for r in results}
    failed = [w for w in planned if w["key"] not in finished]
    results = sorted(
        [*results, *({"window": w, "status": "failed", "es_count": 0, "messages": 0, "related": {}, "objects": 0,
                      "bytes": 0} for w in failed)],
        key=lambda r: r["window"]["start"],
    )  # fmt: skip
    mismatched = [
        r["window"]["label"]
        for r in results
        if r["status"] != "failed" and manifest.written_and_dropped(r) != r["es_count"]
    ]
    related: Counter[str] = Counter()
    for r in results:
        related.update(r["related"])
    status = Counter(r["status"] for r in results)
    run = {
        "version": manifest.VERSION,
        "backfill_name": config.backfill_name,
        "fingerprint": config.fingerprint(),
        "cluster_uuid": config.cluster_uuid,
        "windows": len(results),
        "written": status["written"],
        "skipped": status["skipped"],
        "failed": status["failed"],
        "messages": sum(r["messages"] for r in results),
        "dropped": sum(r.get("dropped", 0) for r in results),
        "es_count": sum(r["es_count"] for r in results),
        "related": dict(sorted(related.items())),
        "objects": sum(r["objects"] for r in results),
        "bytes": sum(r["bytes"] for r in results),
        "failed_windows": [w["label"] for w in failed],
        "encryption": manifest.encryption_record(config),
        "mismatched_windows": mismatched,
        "window_keys": [r["window"]["key"] for r in results],
    }
    problems = []
    if failed:
        problems.append(f"{len(failed)} windows failed: " + ", ".join(w["label"] for w in failed))
    if mismatched:
        problems.append(
            f"{len(mismatched)} windows wrote a different number of messages than Elasticsearch counts: "
            + ", ".join(mismatched)
        )
    unregistered: TableRegistrationError | None = None
    try:
        saved = manifest.read_plan(store, config)
        athena: AthenaTable | None = None
        if saved is not None and saved.table is not None:
            misfits = [r.get("misfits", []) for r in results]
            athena, run["table"] = write_table(config, store, saved.table, planned, misfits, config.output_format)
        else:
            log.warning(
                "The plan of %s has no table columns (planned by an older version): no _athena.sql, no Glue table",
                config.backfill_name,
            )
        run_key = manifest.run_manifest_key(config)
        store.put(run_key, manifest.dumps(run))  # before Glue is asked, which may take minutes (its retries)
        if catalog is not None and athena is not None and problems:
            log.warning("The table is not registered in the Glue database %s: the run does not reconcile (it is "
                        "when a run does)", catalog.database)  # fmt: skip
        elif catalog is not None and athena is not None:
            try:
                run["table"]["glue_table"] = register_table(catalog, athena)
            except TableRegistrationError as err:
                run["table"]["glue_error"] = str(err)
                unregistered = err
            store.put(run_key, manifest.dumps(run))  # with what Glue made of it
    finally:
        if holder is not None:
            lease.release(store, config, holder)  # a retrigger, or a cleared window of this run, takes it again
    log.info("Backfill %s:\n%s", config.backfill_name, table(results))
    log.info(
        "%s windows (%s written, %s skipped, %s failed), %s messages, %s related documents, %s objects, %s bytes",
        run["windows"], run["written"], run["skipped"], run["failed"], run["messages"], sum(related.values()),
        run["objects"], run["bytes"],
    )  # fmt: skip
    if problems:
        raise ReconciliationError("; ".join(problems) + ". Clear those windows' extract tasks to rerun them.")
    if unregistered is not None:
        raise unregistered
    return {key: value for key, value in run.items() if key != "window_keys"}  # XCom stays small


class TableRegistrationError(RuntimeError):
    """Glue did not take the table; the backfill's files and ``_athena.sql`` are written."""


def write_table(
    config: BackfillConfig,
    store: ObjectStore,
    columns: dict[str, Any],
    planned: list[dict[str, Any]],
    misfits: list[list[list[str]]],
    output_format: str,
) -> tuple[AthenaTable, dict[str, Any]]:
    """Write ``_athena.sql``: the table over the output (written as ``output_format``), typed from the plan's
    columns and widened by what every window found (``misfits``); return it and its name, location, DDL and
    where the DDL is."""
    found = sorted({tuple(path) for window in misfits for path in window})
    if found:
        log.info(
            "%s fields hold values their mappings do not type (read as JSON text in the table): %s",
            len(found), ", ".join(".".join(path) for path in found[:20]),
        )  # fmt: skip
    if ("dt",) in found:
        log.warning("Records hold a top-level key dt (a transform's?), which the table does not read: its partition "
                    "column dt is the day of the folder (the UTC day its windows start)")  # fmt: skip
    days = sorted(Window.from_dict(w).day for w in planned)
    # Keys found in objects the mappings do not type add fields: the column may pass Glue's limit only now.
    typed = within_glue_limits(widened(columns, found))
    athena = AthenaTable(table_name(config.backfill_name), table_location(config), typed, (days[0], days[-1]),
                         parquet=output_format == "parquet")  # fmt: skip
    ddl = athena.ddl()
    data = ddl.encode()
    if len(data) > ATHENA_QUERY_LIMIT:
        log.warning("_athena.sql is %s bytes, more than an Athena query takes (%s): register the table with "
                    "glue_database (or the command line's table) instead of pasting it", len(data),
                    ATHENA_QUERY_LIMIT)  # fmt: skip
    key = manifest.table_ddl_key(config)
    store.put(key, data, content_type="application/sql")
    log.info("Wrote the table %s over %s: s3://%s/%s", athena.name, athena.location, config.s3_bucket, key)
    return athena, {"name": athena.name, "location": athena.location, "ddl_object": f"s3://{config.s3_bucket}/{key}",
                    "ddl": ddl}  # fmt: skip


def register_table(catalog: GlueCatalog, athena: AthenaTable) -> str:
    """Create or update ``athena`` in ``catalog``; the Glue table's ``database.name``. TableRegistrationError,
    saying what to do, if Glue refuses it (another backfill's table of that name, no permission, a limit)."""
    try:
        catalog.register(athena)
    except (CatalogConflict, ClientError, BotoCoreError) as err:
        raise TableRegistrationError(
            f"The Glue table {catalog.database}.{athena.name} could not be registered: {err}. The backfill's files "
            "and _athena.sql are written: once that is fixed, clear the summarise task or run the command line's "
            "table command (or create the table from _athena.sql)"
        ) from err
    return f"{catalog.database}.{athena.name}"


def write_existing_table(
    config: BackfillConfig, store: ObjectStore, catalog: GlueCatalog | None = None
) -> dict[str, Any]:
    """:func:`write_table` for a backfill written before (the CLI's ``table``), and :func:`register_table` if
    ``catalog`` is given: the columns and output format from its saved plan, widened by what the manifests of
    its windows found (a window without a manifest adds nothing). ConfigError if there is no plan with columns."""
    saved = manifest.read_plan(store, config)
    if saved is None or saved.table is None:
        raise ConfigError([
            f"s3://{config.s3_bucket}/{config.root_prefix}/ holds no plan with table columns (none, or one planned by "
            "an older version): check s3_bucket, s3_prefix and backfill_name, or re-plan it with force: true"
        ])  # fmt: skip
    found = [
        (manifest.read(store, manifest.window_manifest_key(config, window)) or {}).get("table_misfits", [])
        for window in saved.windows
    ]
    output_format = saved.settings.get("output_format", config.output_format)
    if output_format != config.output_format:
        log.info("The backfill was written as %s (its plan says so), not as the conf's %s: its table reads %s",
                 output_format, config.output_format, output_format)  # fmt: skip
    planned = [w.to_dict() for w in saved.windows]
    athena, described = write_table(config, store, saved.table, planned, found, output_format)
    if catalog is not None:
        described["glue_table"] = register_table(catalog, athena)
    return described


def output_asset(config: BackfillConfig, run: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The asset of a reconciled backfill: its output folder's URI, and the event's extra (the run's figures
    and where the run manifest is)."""
    uri = f"s3://{config.s3_bucket}/{config.root_prefix}"  # Airflow would drop a trailing slash
    return uri, {**run, "run_manifest": f"s3://{config.s3_bucket}/{manifest.run_manifest_key(config)}"}


def log_dry_run(report: dict[str, Any]) -> dict[str, Any]:
    """Log the plan of a dry run: per-window counts, estimated output size and run time."""
    lines = [f"{'window':<37} {'messages':>9} {'est. bytes':>12} {'est. time':>10}"]
    lines += [
        f"{r['window']:<37} {r['messages']:>9} {r['estimated_bytes']:>12} {format_seconds(r['estimated_seconds']):>10}"
        for r in report["windows"]
    ]
    log.info("Dry run, nothing written:\n%s", "\n".join(lines))
    log.info(
        "Dry run total: %s windows, %s messages, about %s bytes (%s bytes per message)",
        len(report["windows"]), report["messages"], report["estimated_bytes"], report["bytes_per_message"],
    )  # fmt: skip
    log.info(
        "Estimated run time with %s pool slots: %s (at most %s searches at once on the cluster), from one sample "
        "page of %s messages read in %.2fs",
        report["pool_slots"], format_seconds(report["estimated_seconds"]), report["max_concurrent_searches"],
        report["sample"]["messages"], report["sample"]["seconds"],
    )  # fmt: skip
    needed = report.get("json_fields_needed")
    if needed:
        log.warning(
            "The sample page's records hold values their Parquet columns cannot: add %s to json_fields (other "
            "windows may need more; a window that does fails naming them)", json.dumps(needed),
        )  # fmt: skip
    if report["target_seconds"]:
        target = format_seconds(report["target_seconds"])
        if report["suggested_pool_slots"]:
            log.info("To finish within %s: a pool of %s slot(s)", target, report["suggested_pool_slots"])
        else:
            log.info("To finish within %s: no pool size can, a window alone takes longer; use smaller windows", target)
    return report


def format_seconds(seconds: float) -> str:
    """``42s``, ``12m 05s`` or ``3h 07m``."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"
