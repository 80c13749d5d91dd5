"""
### Elasticsearch / OpenSearch → S3 backfill

Copies the messages of a date range out of Elasticsearch (7.10 to 9) or OpenSearch (1 to 3, also
Amazon OpenSearch Service with IAM SigV4), joins each message with its history, status and
audit documents, and writes the records as JSON to S3. The `elasticsearch_default` connection
says where the cluster is; the engine is detected.

* **plan** checks the conf and the cluster (engine, version and read strategy in its log), takes
  the backfill's lease (a second run of the same backfill is refused here, naming the holder; see
  `force_lease`), and splits `[start, end)` into windows.
* **extract** runs once per window (a mapped task named after its window), inside the
  `es_backfill` pool, which caps how many windows read Elasticsearch at once. A window's
  objects have fixed keys and its manifest is written last, so a failed window is retried
  by clearing its task, and a re-triggered run skips the windows already complete.
* **summarise** writes the run manifest and the output's table (``_athena.sql``), releases the lease, and fails
  if any window's written count differs from Elasticsearch's. When every window reconciles it registers the
  table in ``glue_database`` if the run names one, and emits an asset event for the output,
  `s3://{s3_bucket}/{s3_prefix}/{backfill_name}` (through the `es_backfill_output` asset alias),
  whose extra carries the run's figures.

Output: `s3://{s3_bucket}/{s3_prefix}/{backfill_name}/dt=YYYY-MM-DD/{window}/part-NNNNN.jsonl.gz`.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import pendulum
from airflow.sdk import Asset, AssetAlias, Param, dag, task
from airflow.sdk.exceptions import AirflowFailException

from es_backfill.config import (
    OUTPUT_FORMATS,
    PAGE_SIZE_MAX,
    PAGE_SIZE_MIN,
    POOL_SLOTS_MAX,
    SOURCE_SCHEMA,
    SSE_KINDS,
    BackfillConfig,
    ConfigError,
    defaults_path,
    from_params,
    load_defaults,
)

if TYPE_CHECKING:
    from es_backfill.source import Reader

log = logging.getLogger(__name__)

POOL = os.environ.get("ES_BACKFILL_POOL", "es_backfill")
# The asset of a backfill's output is known only at run time: summarise emits it through this alias.
OUTPUT_ALIAS = AssetAlias("es_backfill_output")
# First retry after this long, then doubling (tests shorten it).
RETRY_DELAY = pendulum.duration(seconds=int(os.environ.get("ES_BACKFILL_RETRY_DELAY_S", "30")))
INSTANT_PATTERN = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$"


def _config(params: dict[str, Any] | None) -> BackfillConfig:
    assert params is not None, "Airflow passes the run's params to every task"
    try:
        return from_params(params, load_defaults(defaults_path()))
    except ConfigError as err:
        raise AirflowFailException(str(err)) from err  # bad input: retrying cannot help


def _reader(config: BackfillConfig, *, retry_unreachable: bool = True) -> Reader:
    from es_backfill.hooks import ClusterUnreachable, search_reader

    try:
        return search_reader(config.source)
    except ConfigError as err:
        raise AirflowFailException(str(err)) from err  # a connection that cannot work: retrying cannot help
    except ClusterUnreachable as err:
        if retry_unreachable:
            raise  # a window's task retries later, as a flapping cluster may be back
        raise AirflowFailException(str(err)) from err  # the plan already retried for ~25s: say so once


@dag(
    dag_id="es_backfill",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    doc_md=__doc__,
    tags=["backfill", "elasticsearch", "s3"],
    default_args={"retries": 2, "retry_delay": RETRY_DELAY, "retry_exponential_backoff": True},
    params={
        # start, end and s3_bucket have no default: a trigger without them is refused, never run on an example.
        "start": Param(
            type="string",
            pattern=INSTANT_PATTERN,
            title="Start (UTC, inclusive)",
            description="Required. First instant to copy: a date (2024-03-01) or date-time (2024-03-01T06:00:00Z).",
        ),
        "end": Param(
            type="string",
            pattern=INSTANT_PATTERN,
            title="End (UTC, exclusive)",
            description="Required. First instant not copied, e.g. 2024-03-08; must be after start. The range is "
            "[start, end).",
        ),
        "window": Param(
            "1d",
            type="string",
            pattern=r"^\s*[1-9]\d*\s*[smhd]\s*$",
            title="Window size",
            description="Length of one mapped task's slice of the range: 1d, 6h, 15m, 30s.",
        ),
        # The trigger form sends an emptied field as "": these two take it as "not set".
        "query": Param(
            None,
            type=["object", "null", "string"],
            maxLength=0,
            title="Message filter",
            description='Optional Elasticsearch query DSL applied to messages, e.g. {"term": {"channel": "email"}}.',
        ),
        "backfill_name": Param(
            None,
            type=["string", "null"],
            pattern=r"^([A-Za-z0-9][A-Za-z0-9._-]{0,127})?$",
            title="Backfill name",
            description="Output folder name. Empty: derived from start, end and window, so a re-trigger "
            "of the same range resumes into the same keys.",
        ),
        "s3_bucket": Param(
            type="string",
            pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
            title="S3 bucket",
            description="Required. Bucket that receives the output (through the aws_default connection), e.g. "
            "my-team-exports.",
        ),
        "s3_prefix": Param(
            "",
            type="string",
            title="S3 prefix",
            description="Key prefix above the backfill folder; empty: the backfill folder is at the bucket's root "
            "(as the command line reads the same conf).",
        ),
        "output_format": Param(
            "jsonl.gz",
            type="string",
            enum=list(OUTPUT_FORMATS),
            title="Output format",
            description="jsonl.gz (gzip JSON Lines parts), jsonl, json (one object per message), or parquet "
            "(README: Parquet output).",
        ),
        "json_fields": Param(
            [],
            type="array",
            items={"type": "string", "minLength": 1},
            title="JSON text fields",
            description="Table fields held as JSON text, e.g. message.tags (a name with dots in backquotes: "
            "message.`a.b`). Parquet's schema needs them for fields whose values do not fit their mapping; a "
            "failed window names the entry to add.",
        ),
        "page_size": Param(
            1000,
            type="integer",
            minimum=PAGE_SIZE_MIN,
            maximum=PAGE_SIZE_MAX,
            title="Page size",
            description=f"Messages per Elasticsearch request ({PAGE_SIZE_MIN}..{PAGE_SIZE_MAX}).",
        ),
        "balance_windows": Param(
            False,
            type="boolean",
            title="Balance windows",
            description="Cut windows so each holds about as many messages (one date_histogram request).",
        ),
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run",
            description="Only plan: per-window counts and an estimate of the output size; nothing is written.",
        ),
        "force": Param(
            False,
            type="boolean",
            title="Force",
            description="Rewrite windows even when their manifest says they are complete.",
        ),
        "force_lease": Param(
            False,
            type="boolean",
            title="Force lease",
            description="Take over the output from another run of this backfill that still holds its lease. "
            "Only after checking that run is dead: two live runs would overwrite each other's windows.",
        ),
        "sse": Param(
            None,
            type=["null", "string"],
            enum=[None, "", *SSE_KINDS],
            title="Server-side encryption",
            description="Encrypt every object written: AES256 (SSE-S3) or aws:kms (SSE-KMS). Empty: the bucket's "
            "default encryption.",
        ),
        "kms_key_id": Param(
            None,
            type=["null", "string"],
            title="KMS key",
            description="With aws:kms: the key's ARN, id or alias. Empty: the account's AWS managed key (aws/s3).",
        ),
        "pool_slots": Param(
            4,
            type="integer",
            minimum=1,
            maximum=POOL_SLOTS_MAX,
            title="Pool slots (dry run estimate)",
            description=f"The size of the {POOL!r} pool, which the dry run's run-time estimate assumes.",
        ),
        "target_duration": Param(
            None,
            type=["null", "string"],
            title="Target duration (dry run)",
            description="e.g. 6h: the dry run suggests the pool size that finishes within it.",
        ),
        "glue_database": Param(
            None,
            type=["null", "string"],
            pattern=r"^[a-z0-9_]{0,255}$",
            title="Glue database",
            description="Register the output's table (README: Query the output) in this Glue Data Catalog database, "
            "which must exist. Empty: only _athena.sql is written.",
        ),
        "source": Param(
            {},
            **SOURCE_SCHEMA,
            title="Source overrides",
            description="Overrides of include/backfill_defaults.json for this run (index names, fields, "
            "related indices, connection ids, _source selection, redact rules, transform), "
            'e.g. {"messages": {"index": "messages-2024", ...}}.',
        ),
    },
)
def es_backfill():
    @task
    def plan(params: dict[str, Any] | None = None, dag_run: Any = None) -> list[dict[str, Any]]:
        from airflow.configuration import conf

        from es_backfill.hooks import glue_catalog, object_store, redaction_key
        from es_backfill.lease import Holder, LeaseHeld
        from es_backfill.plan import (
            check_bucket,
            check_catalog,
            check_cluster,
            check_shaping,
            dry_run_report,
            identify_cluster,
            plan_or_resume,
        )
        from es_backfill.summary import log_dry_run

        config = _config(params)
        # Task code cannot see pools (Airflow 3 keeps tasks off the metadata database), so say which one matters.
        log.warning(
            "Extract tasks run in pool %r, which this task cannot check: if it does not exist they wait in "
            "'scheduled' with no error. Create or resize it: python -m include.ops.airflow_admin pool --slots N ..., "
            "or on MWAA python -m include.ops.mwaa_deploy ... --pool-slots N",
            POOL,
        )
        store = object_store(config)
        with _reader(config, retry_unreachable=False) as reader:
            try:
                check_bucket(store)
                config = identify_cluster(config, reader)
                check_cluster(config, reader)
                check_shaping(config, redaction_key(config.source))
                check_catalog(config, glue_catalog(config))
                max_windows = conf.getint("core", "max_map_length")
                windows = plan_or_resume(config, reader, store, max_windows, Holder.of(dag_run))
            except (ConfigError, LeaseHeld) as err:
                raise AirflowFailException(str(err)) from err
            if config.dry_run:
                log_dry_run(dry_run_report(config, reader, windows))
                return []  # nothing to extract
        # Each window names the cluster the plan read, which its task's fingerprint covers.
        return [{**w.to_dict(), "cluster_uuid": config.cluster_uuid} for w in windows]

    @task(
        pool=POOL,
        map_index_template="{{ task.op_kwargs['window']['label'] }}",
        execution_timeout=pendulum.duration(hours=6),
        retry_exponential_backoff=True,
        max_retry_delay=pendulum.duration(minutes=10),
    )
    def extract(
        window: dict[str, Any], params: dict[str, Any] | None = None, dag_run: Any = None, ti: Any = None
    ) -> dict[str, Any]:
        from es_backfill.extract import run_window
        from es_backfill.hooks import object_store, redaction_key
        from es_backfill.lease import Holder, LeaseHeld
        from es_backfill.manifest import StalePlanError
        from es_backfill.records import MessageIdError
        from es_backfill.shape import TransformError
        from es_backfill.table import ParquetMisfit
        from es_backfill.windows import Window

        # A window planned before plans named their cluster has none: the saved plan then refuses it.
        config = _config(params).with_cluster(window.get("cluster_uuid", ""))
        store = object_store(config)
        with _reader(config) as reader:
            try:
                key = redaction_key(config.source)
                holder = Holder.of(dag_run, ti)  # the try number: a later attempt's claim stops this one
                return run_window(config, Window.from_dict(window), reader, store, holder, key).to_dict()
            except (MessageIdError, StalePlanError, LeaseHeld, ConfigError, TransformError, ParquetMisfit) as err:
                raise AirflowFailException(str(err)) from err  # retrying the same task cannot help

    # Runs once every window has finished, failed ones included, so the summary can name them.
    @task(trigger_rule="all_done_min_one_success", outlets=[OUTPUT_ALIAS])
    def summarise(
        windows: list[dict[str, Any]],
        results: list[dict[str, Any] | None],
        params: dict[str, Any] | None = None,
        outlet_events: Any = None,
        dag_run: Any = None,
    ) -> dict[str, Any] | None:
        from es_backfill.hooks import glue_catalog, object_store
        from es_backfill.lease import Holder
        from es_backfill.summary import output_asset, summarise

        config = _config(params)
        if config.dry_run:
            log.info("Dry run: nothing was written; the plan task's log shows the windows and the estimate")
            return None
        config = config.with_cluster(windows[0]["cluster_uuid"])
        # One slice reads every mapped result at once (iterating asks offset by offset until one is missing).
        done = [r for r in results[:] if r is not None]
        # Releases the lease, then raises unless every window reconciled.
        run = summarise(config, windows, done, object_store(config), Holder.of(dag_run), glue_catalog(config))
        uri, extra = output_asset(config, run)
        outlet_events[OUTPUT_ALIAS].add(Asset(uri), extra=extra)
        return run

    windows = plan()
    summarise(windows, extract.expand(window=windows))


es_backfill()
