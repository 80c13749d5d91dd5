"""Benchmark: the backfill pipeline against a raw-HTTP ceiling, elasticdump and a naive script.

What it measures, in one run, on the same seeded data:

1. It starts a real Elasticsearch node and a moto S3 server (or uses ``ES_URL`` /
   ``S3_ENDPOINT_URL``), creates a fresh bucket, and seeds ``--messages`` generated
   messages over 7 days, with their history, status and audit documents, into fresh
   indices, then waits for the merges the bulk load started. Seeding is timed and
   reported on its own; it is not part of the figures.
2. **pipeline**: ``es_backfill.extract.run_window`` over every window of ``1008m`` (7 days / 10),
   one after the other, as the DAG's mapped tasks would run them, with the reader
   ``es_backfill.engines.connect`` makes (``max_in_flight`` from the defaults file): point in
   time + ``search_after`` pages of ``--page-size`` messages, batched ``terms`` lookups per
   related index and page, ``jsonl.gz`` parts on S3, a manifest per window. Every message of
   the range. The reader reports the most requests it had in flight at once.
3. **ceiling**: the Elasticsearch requests the pipeline sends for the same windows, with the same
   bodies and parameters: ``GET /``; per window the
   count, the missing-id check, a point in time, its pages, per page the ``terms`` lookups per
   related index, a full answer split where it ends (``es_backfill.enrich.complete_ids``), as the
   pipeline does; the points in time closed. Sent
   back to back over ONE keep-alive connection (urllib3, ``maxsize=1``) and parsed with
   ``orjson.loads`` only for the next ``search_after`` key and the page's message ids. No
   records, nothing written: what the pipeline's requests cost by themselves, one at a time.
4. **elasticdump** (6.125.1, which ``make bench`` installs under ``.tools/elasticdump``): the four
   indices the pipeline reads dumped one after the other to local files (``--type=data``,
   ``--limit`` = ``--page-size``, a scroll), timed as a whole; the lines written must equal the
   seeded counts. It reads the same documents but joins nothing and writes no S3 objects.
5. **naive**: what a hurried script does: the scroll API over the messages of the range,
   then for each message one ``term`` search per related index and one ``put_object``
   of a JSON document. It is tens of times slower, so it runs on the first
   ``--naive-messages`` messages only; compare rates, not seconds.
6. **latency**: the pipeline and the ceiling again (``pipeline_latency``, ``ceiling_latency``),
   through ``include.dev.servers.faultproxy.FaultProxy`` (run by the orchestrating process)
   delaying every Elasticsearch request by 20 ms before forwarding it. The proxy's log also
   shows whether the ceiling sent the pipeline's requests (method, path and parameters).
7. **memory**: the pipeline over ONE window of the whole range, ``7d``, 10x the default window
   (``pipeline_big``): its peak RSS against the default window's.

Each contender runs in its own child process (``python -m include.dev.bench --role ...``)
so its peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``, read in the child) is its own;
elasticdump's is that of its largest ``node`` process (``RUSAGE_CHILDREN``).
Linux carries a parent's peak into ``ru_maxrss`` across fork + exec, so the orchestrating
process stays small (seeding runs in a child too) and each Python contender also reports
``VmHWM`` from ``/proc/self/status`` as a cross-check.
Every Elasticsearch request of the Python contenders is counted (the pipeline's reader counts
each attempt, the ceiling and the naive script count what they send; elasticdump's are not
counted, its log gives the batches it got), and every S3 HTTP request is counted with a
botocore ``before-send`` hook. The table shows messages, seconds, records/s, requests in total
and per 1,000 messages, related documents per message and peak RSS; the ratios follow, one a
line. Targets are printed as information only: the exit status is non-zero only when
something fails: a contender, or a check of the counts (the contenders that read the whole
range read every seeded message; elasticdump's lines equal the seeded counts), printed last.

One untimed pipeline pass warms the JVM first; then ``--rounds`` rounds (default 3) each run every
contender once, the order rotated by one each round, the node's caches cleared before each
(``POST /_cache/clear``) and its CPU time read before and after (``include.dev.nodecpu``: in all and
by thread group). The table shows each contender's median run; each ratio is computed within each round
and reported as its median with the min-max; the node's and the task's CPU per 1,000 messages too.

Run it from the project root (``make bench`` installs elasticdump first)::

    .venv/bin/python -m include.dev.bench [--messages N] [--naive-messages M] [--page-size P] [--rounds R]
                                          [--shared-cores] [--profile DIR]

With ``--profile DIR``, py-spy (in the dev lock) samples the pipeline and the ceiling in every round and writes
their collapsed stacks to ``DIR/<role>-<round>.txt``, read with flamegraph.pl or speedscope.

By default Elasticsearch and the S3 server run on half the cores and each contender on the other half
(``sched_setaffinity``), as a cluster on its own machines and a task on a worker would; with
``--shared-cores`` they all share every core. The figures describe this machine; the ratios are what
carries over.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from include.dev.nodecpu import NodeMeter, clear_caches

ROOT = Path(__file__).resolve().parents[2]
# Airflow puts the plugins folder on sys.path for the DAG; a plain `python -m` run has to do it itself.
if str(ROOT / "plugins") not in sys.path:
    sys.path.insert(0, str(ROOT / "plugins"))

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULTS_FILE = ROOT / "include" / "backfill_defaults.json"
START = datetime(2024, 3, 1, tzinfo=UTC)
DAYS = 7
BIG_WINDOW_FACTOR = 10
# The default window is a tenth of the range, so the range as one window is exactly 10x larger.
WINDOW = f"{DAYS * 24 * 60 // BIG_WINDOW_FACTOR}m"  # 1008m
BIG_WINDOW = f"{DAYS}d"
LATENCY_S = 0.020  # what the fault proxy adds to every Elasticsearch request in the latency scenario
DEFAULT_MESSAGES = 110_000
DEFAULT_NAIVE_MESSAGES = 2_000
DEFAULT_PAGE_SIZE = 5_000
DEFAULT_ROUNDS = 3
MAX_WINDOWS = 1024  # Airflow's default [core] max_map_length
NAIVE_SCROLL_SIZE = 1_000  # helpers.scan's default page size
NAIVE_RELATED_SIZE = 100  # "surely no message has more than 100 of those"
REGION = "us-east-1"
DUMMY_CREDENTIALS = "testing"  # moto accepts anything; these only have to be present
ELASTICDUMP_VERSION = "6.125.1"  # the one the Makefile's bench target installs
ELASTICDUMP = ROOT / ".tools" / "elasticdump" / "node_modules" / ".bin" / "elasticdump"  # or $ELASTICDUMP
TARGET_SPEEDUP = 20.0
TARGET_REQUESTS_PER_1000 = 5.0
TARGET_RSS_GROWTH = 1.1
SEED_CHUNK_SIZE = 5_000
CHILD_TIMEOUT_S = 6 * 3600
MERGE_WAIT_S = 600
# What a narrow _source selection keeps per index (ceiling_narrow): ids, times and one field each.
NARROW_FIELDS = {
    "messages": ["message_id", "@timestamp", "channel"],
    "history": ["message_id", "@timestamp", "event_id", "event"],
    "status": ["message_id", "updated_at", "status"],
    "audit": ["message_id", "@timestamp", "audit_id", "action"],
}
NARROW_ROLE = "ceiling_narrow"
# Run in this order, each in its own child process; the latency ones through the fault proxy.
CONTENDERS = ("pipeline", "ceiling", "elasticdump", "naive", "pipeline_big", "pipeline_parquet")
# The generator's lists where the mappings have one value (recipients, tags) or one object (status.changes):
# Parquet holds them as JSON text (README: Parquet output).
PARQUET_JSON_FIELDS = ["message.recipients", "message.tags", "status.changes"]
LATENCY_CONTENDERS = ("pipeline_latency", "ceiling_latency")
ROLES = (*CONTENDERS, *LATENCY_CONTENDERS, NARROW_ROLE)
PROFILED = ("pipeline", "ceiling")  # the Python contenders whose own CPU --profile samples
NOT_MEASURED = "—"


@dataclass(frozen=True)
class Job:
    """Everything a child process needs; passed to it as JSON."""

    es_url: str
    s3_url: str
    bucket: str
    indices: dict[str, str]  # datagen role -> index name
    start: str
    end: str
    messages: int
    page_size: int
    naive_messages: int
    window: str = WINDOW
    narrow: bool = False  # read only the fields NARROW_FIELDS names (the _source selection's effect)
    output_format: str = "jsonl.gz"

    @property
    def start_dt(self) -> datetime:
        return datetime.fromisoformat(self.start)

    @property
    def end_dt(self) -> datetime:
        return datetime.fromisoformat(self.end)


@dataclass
class Result:
    """What a contender's child process reports back."""

    role: str
    messages: int
    seconds: float
    es_requests: dict[str, int]  # empty: not counted (elasticdump)
    s3_requests: dict[str, int]
    related_docs: int
    objects: int
    rss_before_kib: int | None  # None: not measurable (elasticdump runs in processes of its own)
    peak_rss_kib: int
    cpu_seconds: float
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    @property
    def es_total(self) -> int:
        return sum(self.es_requests.values())

    @property
    def s3_total(self) -> int:
        return sum(self.s3_requests.values())

    def per_1000(self, requests: int) -> float:
        return requests * 1000 / self.messages if self.messages else 0.0


# --- shared helpers ---------------------------------------------------------------------------


def _peak_rss_kib() -> int:
    # Linux reports ru_maxrss in KiB.
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _vm_hwm_kib() -> int | None:
    """The kernel's high-water mark of this process's resident set, to cross-check ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _s3_client(endpoint_url: str, config: Any = None) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=REGION,
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", DUMMY_CREDENTIALS),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", DUMMY_CREDENTIALS),
        config=config,
    )


def _count_s3_requests(client: Any) -> Counter[str]:
    """Count every HTTP request the client sends (retries included), by operation."""
    counts: Counter[str] = Counter()

    def on_send(event_name: str, **_: Any) -> None:
        counts[event_name.rsplit(".", 1)[-1]] += 1

    client.meta.events.register("before-send.s3", on_send)
    return counts


def _source_override(defaults: Mapping[str, Any], indices: Mapping[str, str], narrow: bool = False) -> dict[str, Any]:
    """The defaults file's ``messages`` and ``related`` settings, pointed at the seeded indices; with ``narrow``,
    a ``_source`` selection of NARROW_FIELDS per index."""
    related = []
    for item in defaults["related"]:
        if item["name"] not in indices:
            raise ValueError(f"related index {item['name']!r} of {DEFAULTS_FILE} is not one the generator seeds")
        selection = {"source_fields": NARROW_FIELDS[item["name"]]} if narrow else {}
        related.append({**item, "index": indices[item["name"]], **selection})
    messages = {**defaults["messages"], "index": indices["messages"]}
    if narrow:
        messages["source_fields"] = NARROW_FIELDS["messages"]
    return {"messages": messages, "related": related}


def _plan(job: Job, prefix: str) -> tuple[Any, list[Any]]:
    """The run's configuration (the defaults file, pointed at the seeded indices) and its windows of
    ``job.window``. Each pipeline run writes under its own ``prefix``: a window already written would be skipped."""
    from es_backfill.config import from_params, load_defaults
    from es_backfill.windows import split

    defaults = load_defaults(DEFAULTS_FILE)
    params = {
        "start": job.start,
        "end": job.end,
        "window": job.window,
        "s3_bucket": job.bucket,
        "s3_prefix": prefix,
        "page_size": job.page_size,
        "output_format": job.output_format,
        "source": _source_override(defaults, job.indices, narrow=job.narrow),
    }
    if job.output_format == "parquet":
        params["json_fields"] = PARQUET_JSON_FIELDS
    config = from_params(params, defaults)
    return config, split(config.start, config.end, config.window, max_windows=MAX_WINDOWS)


# --- contender: the pipeline -------------------------------------------------------------------


def run_pipeline(job: Job, role: str) -> Result:
    """Every window of the range through ``run_window``, sequentially, as the DAG's tasks would."""
    from es_backfill import manifest
    from es_backfill.engines import ConnectionSettings, connect
    from es_backfill.extract import run_window
    from es_backfill.lease import Holder
    from es_backfill.plan import dry_run_report, output_columns
    from es_backfill.sink import S3_CLIENT_CONFIG, ObjectStore

    config, windows = _plan(job, prefix=f"{role}-{uuid.uuid4().hex[:8]}")  # each run its own, as rounds repeat it
    s3 = _s3_client(job.s3_url, S3_CLIENT_CONFIG)
    s3_counts = _count_s3_requests(s3)
    store = ObjectStore(s3, config.s3_bucket)
    rss_before = _peak_rss_kib()
    limits = {"max_retries": config.source.max_retries, "max_in_flight": config.source.max_in_flight}
    estimate = None
    if role == "pipeline":  # what the dry run predicts for this run (one slot: windows one after the other)
        with connect(ConnectionSettings(job.es_url), **limits) as sampler:
            estimate = dry_run_report(replace(config, pool_slots=1), sampler, windows)["estimated_seconds"]
    with connect(ConnectionSettings(job.es_url), **limits) as reader:
        if config.output_format == "parquet":  # its schema comes from the saved plan, as the DAG's plan saves it
            columns = output_columns(config, reader)
            manifest.write_plan(store, config, windows, reader.cluster.to_dict(), columns)
        cpu_before, started = _cpu_seconds(), time.perf_counter()
        holder = Holder(f"bench-{role}", "")  # as a DAG run's tasks do, each window renews the lease
        results = [run_window(config, window, reader, store, holder) for window in windows]
        seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu_before
    problems = [r.window["label"] for r in results if r.status != "written" or r.messages != r.es_count]
    if problems:
        raise RuntimeError(f"pipeline windows not written in full: {', '.join(problems)}")
    return Result(
        role=role,
        messages=sum(r.messages for r in results),
        seconds=seconds,
        es_requests=dict(reader.requests),
        s3_requests=dict(s3_counts),
        related_docs=sum(sum(r.related.values()) for r in results),
        objects=sum(r.objects for r in results),
        rss_before_kib=rss_before,
        peak_rss_kib=_peak_rss_kib(),
        cpu_seconds=cpu,
        notes={
            "windows": len(windows),
            "window": job.window,
            "bytes": sum(r.bytes for r in results),
            "peak_in_flight": reader.peak_in_flight,
            "max_in_flight": reader.max_in_flight,
            "estimated_seconds": estimate,
        },
    )


# --- contender: the ceiling --------------------------------------------------------------------


class _OneConnection:
    """Elasticsearch over ONE keep-alive HTTP connection: requests sent one at a time, counted by kind under
    the pipeline reader's names, answers parsed with ``orjson.loads`` and nothing more."""

    def __init__(self, url: str, timeout_s: float) -> None:
        import urllib3

        self.pool = urllib3.connection_from_url(url, maxsize=1, block=True, retries=False, timeout=timeout_s)
        self.requests: Counter[str] = Counter()
        self.bytes_read = 0  # response bodies, as the cluster sent them

    def send(self, name: str, method: str, path: str, body: Any = None) -> Any:
        import orjson

        self.requests[name] += 1
        payload = None if body is None else orjson.dumps(body)
        response = self.pool.request(method, path, body=payload, headers={"Content-Type": "application/json"})
        if response.status >= 300:
            raise RuntimeError(f"{method} {path} answered HTTP {response.status}: {response.data[:500]!r}")
        self.bytes_read += len(response.data)
        return orjson.loads(response.data)

    def search(self, index: str | None, body: dict[str, Any]) -> dict[str, Any]:
        """One search, sent as the pipeline's reader sends it: partial results refused."""
        path = f"/{index}/_search" if index else "/_search"
        return self.send("search", "POST", f"{path}?allow_partial_search_results=false", body)

    @contextmanager
    def point_in_time(self, index: str, keep_alive: str) -> Iterator[dict[str, str]]:
        """``{"id", "keep_alive"}`` of a point in time on ``index``, closed on exit."""
        opened = self.send("open_point_in_time", "POST", f"/{index}/_pit?keep_alive={keep_alive}")
        pit = {"id": opened["id"], "keep_alive": keep_alive}
        try:
            yield pit
        finally:
            self.send("close_point_in_time", "DELETE", "/_pit", {"id": pit["id"]})

    def pages(
        self,
        pit: dict[str, str],
        query: dict[str, Any],
        sort: list[Any],
        size: int,
        source: Any = True,
        docvalues: list[str] | None = None,
    ) -> Iterator[list[dict[str, Any]]]:
        """``search_after`` pages in ``pit``, sorted by ``sort`` + ``_shard_doc``, until a short one."""
        search_after = None
        while True:
            body = {"query": query, "_source": source, "sort": [*sort, "_shard_doc"], "size": size}
            body |= {"docvalue_fields": docvalues} if docvalues else {}
            body |= {"pit": pit, "track_total_hits": False}
            if search_after is not None:
                body["search_after"] = search_after
            response = self.search(None, body)
            pit["id"] = response.get("pit_id", pit["id"])
            hits = response["hits"]["hits"]
            if hits:
                search_after = hits[-1]["sort"]
                yield hits
            if len(hits) < size:
                return


class _CeilingLookup:
    """The requests of ``enrich.RelatedLookup`` for one window, one after the other: per related index one
    ``terms`` search with ``_fetch_one``'s body; a batch that fills it is read again in pages of a point in
    time of that index, opened on first need and closed on exit. Counts the hits, nothing more."""

    def __init__(self, es: _OneConnection, related: Any, keep_alive: str, page_size: int) -> None:
        self.es, self.related, self.keep_alive, self.page_size = es, related, keep_alive, page_size
        self._stack = ExitStack()
        self._pits: dict[str, dict[str, str]] = {}

    def __enter__(self) -> _CeilingLookup:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()

    def fetch(self, message_ids: list[str]) -> int:
        from es_backfill.enrich import complete_ids

        found = 0
        for spec in self.related if message_ids else ():
            sort = [{spec.join_field: "asc"}, *({f: "asc"} for f in spec.sort)]
            body = {"sort": sort, "size": self.page_size, "track_total_hits": False}
            source = spec.source_filter()
            docvalues = None if source is True else [spec.join_field]  # as enrich reads the join field
            if docvalues:
                body |= {"_source": source, "docvalue_fields": docvalues}
            remaining = list(dict.fromkeys(message_ids))
            while remaining:  # as enrich does: ids a full answer holds completely are not asked for again
                query = {"bool": {"filter": [{"terms": {spec.join_field: remaining}}]}}
                hits = self.es.search(spec.index, {**body, "query": query})["hits"]["hits"]
                done, remaining = complete_ids(hits, remaining, self.page_size)
                if not done:
                    if spec.name not in self._pits:
                        self._pits[spec.name] = self._stack.enter_context(
                            self.es.point_in_time(spec.index, self.keep_alive)
                        )
                    pages = self.es.pages(self._pits[spec.name], query, sort, self.page_size, source, docvalues)
                    found += sum(len(page) for page in pages)
                    break
                found += sum(1 for hit in hits if hit["sort"][0] in done)
        return found


def run_ceiling(job: Job, role: str) -> Result:
    """The pipeline's Elasticsearch requests for the same windows, back to back over one connection;
    parsed only for ``search_after`` keys and message ids; nothing built, nothing written."""
    from es_backfill.extract import message_query
    from es_backfill.records import MessageIds

    config, windows = _plan(job, prefix=role)
    source = config.source
    es = _OneConnection(job.es_url, source.request_timeout_s)
    es.send("info", "GET", "/")  # as connect() does, before the clock starts
    sort = [{source.timestamp_field: "asc"}, {source.id_field: "asc"}]
    fields = source.messages_source()
    messages = related_docs = 0
    rss_before = _peak_rss_kib()
    cpu_before, started = _cpu_seconds(), time.perf_counter()
    for window in windows:
        query = message_query(config, window)
        es.send("count", "POST", f"/{source.messages_index}/_count", {"query": query})
        # The pipeline's check for messages without an id (extract._refuse_messages_without_id).
        without = {"bool": {"filter": [query], "must_not": [{"exists": {"field": source.id_field}}]}}
        check = {"query": without, "size": MessageIds.EXAMPLES, "_source": False, "track_total_hits": True}
        if es.search(source.messages_index, check)["hits"]["hits"]:
            raise RuntimeError(f"window {window.label} has messages without {source.id_field!r}")
        # As in run_window: the related points in time (if any) are closed before the messages' one.
        with (
            es.point_in_time(source.messages_index, source.pit_keep_alive) as pit,
            _CeilingLookup(es, source.related, source.pit_keep_alive, source.related_page_size) as lookup,
        ):
            for page in es.pages(pit, query, sort, config.page_size, fields):
                messages += len(page)
                related_docs += lookup.fetch([str(hit["sort"][1]) for hit in page if hit["sort"][1] is not None])
    seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu_before
    return Result(
        role=role,
        messages=messages,
        seconds=seconds,
        es_requests=dict(es.requests),
        s3_requests={},
        related_docs=related_docs,
        objects=0,
        rss_before_kib=rss_before,
        peak_rss_kib=_peak_rss_kib(),
        cpu_seconds=cpu,
        # One connection, one request at a time: never more than one in flight.
        notes={
            "windows": len(windows),
            "connections": es.pool.num_connections,
            "peak_in_flight": 1,
            "bytes_read": es.bytes_read,
        },
    )


# --- contender: elasticdump --------------------------------------------------------------------


def run_elasticdump(job: Job, role: str) -> Result:
    """The four indices the pipeline reads, each dumped by elasticdump to a local file, one after the other,
    timed as a whole. Its CPU and peak RSS are those of its ``node`` processes (``RUSAGE_CHILDREN``)."""
    binary = Path(os.environ.get("ELASTICDUMP", ELASTICDUMP))
    if not binary.is_file():
        raise RuntimeError(f"{binary} is missing: `make bench` installs elasticdump {ELASTICDUMP_VERSION} there")
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    if version != ELASTICDUMP_VERSION:
        log.warning("elasticdump %s, not the %s the figures are for", version, ELASTICDUMP_VERSION)
    batches = 0
    with tempfile.TemporaryDirectory(prefix="es-backfill-bench-dump-") as tmp:
        outputs = {name: Path(tmp) / f"{name}.json" for name in job.indices}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        for name, index in job.indices.items():
            limit = f"--limit={job.page_size}"
            cmd = [binary, f"--input={job.es_url}/{index}", f"--output={outputs[name]}", "--type=data", limit]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=CHILD_TIMEOUT_S)
            if done.returncode != 0:
                raise RuntimeError(f"elasticdump failed on {index} ({done.returncode}): {done.stderr or done.stdout}")
            batches += len(re.findall(r"got [1-9]\d* objects from source", done.stdout))
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        lines = {name: _count_lines(path) for name, path in outputs.items()}
        size = sum(path.stat().st_size for path in outputs.values())
    return Result(
        role=role,
        messages=lines["messages"],
        seconds=seconds,
        es_requests={},
        s3_requests={},
        related_docs=sum(n for name, n in lines.items() if name != "messages"),
        objects=0,
        rss_before_kib=None,
        peak_rss_kib=int(after.ru_maxrss),  # the largest node process's
        cpu_seconds=after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
        notes={"lines": lines, "batches": batches, "bytes": size, "version": version, "vm_hwm_kib": None},
    )


def _count_lines(path: Path) -> int:
    with path.open("rb") as file:
        return sum(block.count(b"\n") for block in iter(lambda: file.read(1 << 20), b""))


# --- contender: the naive script ---------------------------------------------------------------


def run_naive(job: Job, role: str) -> Result:
    """Scroll the messages; per message one search per related index and one put_object."""
    from elasticsearch import Elasticsearch

    defaults = json.loads(DEFAULTS_FILE.read_text())
    id_field = defaults["messages"]["id_field"]
    timestamp_field = defaults["messages"]["timestamp_field"]
    related = [
        (item["name"], job.indices[item["name"]], item["join_field"], item.get("cardinality", "many"))
        for item in defaults["related"]
    ]
    es_counts: Counter[str] = Counter()

    def counted(name: str, fn: Callable[..., T], **kwargs: Any) -> T:
        es_counts[name] += 1
        return fn(**kwargs)

    s3 = _s3_client(job.s3_url)
    s3_counts = _count_s3_requests(s3)
    done = related_docs = 0
    rss_before = _peak_rss_kib()
    # max_retries=0 so that no request is sent that the counter does not see.
    with Elasticsearch(job.es_url, max_retries=0, request_timeout=60) as es:
        cpu_before, started = _cpu_seconds(), time.perf_counter()
        response = counted(
            "search (scroll start)",
            es.search,
            index=job.indices["messages"],
            query={"range": {timestamp_field: {"gte": job.start, "lt": job.end}}},
            scroll="2m",
            size=NAIVE_SCROLL_SIZE,
        )
        scroll_id = response["_scroll_id"]
        try:
            hits = response["hits"]["hits"]
            while hits and done < job.naive_messages:
                for hit in hits[: job.naive_messages - done]:
                    message = hit["_source"]
                    mid = message[id_field]
                    record: dict[str, Any] = {"message_id": mid, "message": message}
                    for name, index, join_field, cardinality in related:
                        found = counted(
                            "search (per message)",
                            es.search,
                            index=index,
                            query={"term": {join_field: mid}},
                            size=NAIVE_RELATED_SIZE,
                        )
                        docs = [h["_source"] for h in found["hits"]["hits"]]
                        related_docs += len(docs) if cardinality == "many" else int(bool(docs))
                        record[name] = docs if cardinality == "many" else (docs[0] if docs else None)
                    s3.put_object(
                        Bucket=job.bucket,
                        Key=f"naive/{mid}.json",
                        Body=json.dumps(record, ensure_ascii=False).encode(),
                        ContentType="application/json",
                    )
                    done += 1
                if done < job.naive_messages:
                    response = counted("scroll", es.scroll, scroll_id=scroll_id, scroll="2m")
                    scroll_id = response["_scroll_id"]
                    hits = response["hits"]["hits"]
        finally:
            counted("clear_scroll", es.clear_scroll, scroll_id=scroll_id)
        seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu_before
    if done < job.naive_messages:
        log.warning("The range holds only %s messages; the naive script processed them all", done)
    return Result(
        role=role,
        messages=done,
        seconds=seconds,
        es_requests=dict(es_counts),
        s3_requests=dict(s3_counts),
        related_docs=related_docs,
        objects=done,
        rss_before_kib=rss_before,
        peak_rss_kib=_peak_rss_kib(),
        cpu_seconds=cpu,
        notes={"related_indices": len(related), "scroll_size": NAIVE_SCROLL_SIZE, "peak_in_flight": 1},
    )


# --- seeding and clean-up (child processes too, so the orchestrator stays small) ---------------


def seed(job: Job) -> dict[str, Any]:
    """Create the bucket, load the dataset into fresh indices; report the ES version and counts."""
    from elasticsearch import Elasticsearch

    from include.dev.datagen import DatasetSpec, IndexNames, load

    names = IndexNames(**job.indices)
    _s3_client(job.s3_url).create_bucket(Bucket=job.bucket)
    with Elasticsearch(job.es_url, max_retries=0, request_timeout=300) as es:
        version = es.info()["version"]["number"]
        log.info("Seeding %s messages into %s", job.messages, names)
        started = time.perf_counter()
        spec = DatasetSpec(messages=job.messages, start=job.start_dt, end=job.end_dt, indices=names)
        counts = load(es, spec, chunk_size=SEED_CHUNK_SIZE)
        _wait_for_merges(es, list(job.indices.values()))
        seconds = time.perf_counter() - started
    log.info("Seeded %s in %.1fs", counts.as_dict(), seconds)
    return {"es_version": version, "counts": counts.as_dict(), "seconds": seconds}


def _wait_for_merges(es: Any, indices: list[str]) -> None:
    """Let the merges a bulk load leaves running finish, so they do not eat the first contender's CPU."""
    deadline = time.monotonic() + MERGE_WAIT_S
    quiet = 0
    while quiet < 3:
        stats = es.indices.stats(index=",".join(indices), metric="merge")
        quiet = quiet + 1 if stats["_all"]["total"]["merges"]["current"] == 0 else 0
        if time.monotonic() > deadline:
            log.warning("Merges still running after %ss; measuring anyway", MERGE_WAIT_S)
            return
        time.sleep(1)


def cleanup(job: Job) -> dict[str, Any]:
    """Remove our indices and bucket from servers this run did not start (and so will not stop)."""
    from elasticsearch import Elasticsearch

    s3 = _s3_client(job.s3_url)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=job.bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=job.bucket, Delete={"Objects": keys, "Quiet": True})
    s3.delete_bucket(Bucket=job.bucket)
    with Elasticsearch(job.es_url, max_retries=0, request_timeout=300) as es:
        es.options(ignore_status=404).indices.delete(index=",".join(job.indices.values()))
    return {}


# --- child processes ---------------------------------------------------------------------------


def _runner(role: str) -> Callable[[Job, str], Result]:
    """What ``role`` runs: ``pipeline_big`` and ``*_latency`` are a contender on another job (see main_bench)."""
    runners = {"pipeline": run_pipeline, "ceiling": run_ceiling, "elasticdump": run_elasticdump, "naive": run_naive}
    return runners[role.split("_", 1)[0]]


def child_main(role: str, job: Job, result_file: Path) -> None:
    """Entry point of a child process: run ``role``, write what it reports as JSON."""
    if role in ROLES:
        log.info("Running the %s contender", role)
        result = _runner(role)(job, role)
        result.notes.setdefault("vm_hwm_kib", _vm_hwm_kib())
        log.info(
            "%s: %s messages in %.1fs, %s ES requests, ru_maxrss %s KiB, VmHWM %s KiB",
            role, result.messages, result.seconds, result.es_total, result.peak_rss_kib, result.notes["vm_hwm_kib"],
        )  # fmt: skip
        report: dict[str, Any] = asdict(result)
    else:
        report = seed(job) if role == "seed" else cleanup(job)
    result_file.write_text(json.dumps(report))


def run_child(role: str, job: Job, cores: set[int] | None = None, profile: Path | None = None) -> dict[str, Any]:
    """Run ``role`` in a fresh interpreter and return what it reports.

    A process started with fork/vfork + exec inherits its parent's peak RSS in ``ru_maxrss``
    (Linux keeps the larger of the two across exec). The orchestrator therefore never imports
    the clients nor holds data: seeding runs in a child as well, and the contenders' figures
    are their own. Each contender also reports ``VmHWM`` (reset by exec) as a cross-check.
    With ``profile``, py-spy samples the child (100 Hz, active threads only) into that file as collapsed stacks.
    """
    with tempfile.TemporaryDirectory(prefix="es-backfill-bench-") as tmp:
        result_file = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "include.dev.bench", "--role", role, "--job", json.dumps(asdict(job))]
        cmd += ["--result-file", str(result_file)]
        if profile:
            cmd = [str(Path(sys.executable).with_name("py-spy")), "record", "--format", "raw", "--rate", "100",
                   "--nonblocking", "-o", str(profile), "--", *cmd]  # fmt: skip
        log.info("Starting child process: %s", role)
        pin = (lambda: os.sched_setaffinity(0, cores)) if cores else None
        completed = subprocess.run(cmd, cwd=ROOT, check=False, timeout=CHILD_TIMEOUT_S, preexec_fn=pin)
        if completed.returncode != 0 or not result_file.is_file():
            raise RuntimeError(f"the {role} child process failed (exit status {completed.returncode}); see its log")
        return json.loads(result_file.read_text())


# --- orchestration and report ------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Where the contenders run and how the node's CPU is read: with ``contender_cores`` the servers keep the
    orchestrator's cores (pinned before they start) and each contender runs on these, as a cluster on its own
    machines and a task on a worker would; ``None``: every process shares every core."""

    meter: NodeMeter
    contender_cores: set[int] | None
    profile_dir: Path | None = None

    def run(self, role: str, job: Job, number: int = 0) -> Result:
        """``role`` on a cold cache (``POST /_cache/clear`` first), with the node's CPU time it cost."""
        clear_caches(job.es_url)
        before = self.meter.usage()
        profile = self.profile_dir / f"{role}-{number + 1}.txt" if self.profile_dir and role in PROFILED else None
        result = Result(**run_child(role, job, self.contender_cores, profile))
        spent = self.meter.usage().minus(before)
        result.notes["node_cpu_s"] = spent.total_s
        result.notes["node_threads"] = spent.threads
        return result


@dataclass(frozen=True)
class Setup:
    es_url: str
    es_version: str
    es_started_here: bool
    s3_url: str
    s3_started_here: bool
    counts: dict[str, int]  # seeded documents per datagen role
    seed_seconds: float
    start: datetime
    end: datetime
    page_size: int
    orchestrator_peak_rss_kib: int
    placement: str
    node_cpu_source: str

    @property
    def messages(self) -> int:
        return self.counts["messages"]

    @property
    def related_docs(self) -> int:
        return sum(n for role, n in self.counts.items() if role != "messages")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def _fmt(value: float, decimals: int = 0) -> str:
    return f"{value:,.{decimals}f}"


def _by_kind(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {n:,}" for name, n in sorted(counts.items(), key=lambda kv: -kv[1])) or "none"


def _es_by_kind(result: Result) -> str:
    if result.es_requests:
        return _by_kind(result.es_requests)
    return f"not counted ({_fmt(result.notes.get('batches', 0))} batches received, in its log)"


def _rss_check(result: Result) -> str:
    hwm = result.notes.get("vm_hwm_kib")
    peak = f"{result.role}: ru_maxrss {result.peak_rss_kib / 1024:,.1f} MiB"
    if hwm is None:
        return f"{peak}, no VmHWM to compare"
    # ru_maxrss can only exceed VmHWM when it carries a parent's peak from before exec.
    verdict = "agree" if result.peak_rss_kib <= hwm else "DIFFER (ru_maxrss inherited a parent's peak)"
    return f"{peak}, VmHWM {hwm / 1024:,.1f} MiB, {verdict}"


LATENCY_LABEL = f"+{LATENCY_S * 1000:g} ms"
# The table's columns: role, header.
COLUMNS = (
    ("pipeline", "pipeline"),
    ("ceiling", "ceiling"),
    ("elasticdump", "elasticdump"),
    ("naive", "naive"),
    ("pipeline_latency", f"pipeline{LATENCY_LABEL.replace(' ', '')}"),
    ("ceiling_latency", f"ceiling{LATENCY_LABEL.replace(' ', '')}"),
    ("pipeline_big", f"pipeline {BIG_WINDOW}"),
    ("pipeline_parquet", "parquet"),
)
# The table's rows: label, the figure (None: not measured), decimals.
ROWS: tuple[tuple[str, Callable[[Result], float | None], int], ...] = (
    ("messages processed", lambda r: r.messages, 0),
    ("seconds", lambda r: r.seconds, 1),
    ("records/s", lambda r: r.rate, 1),
    ("CPU seconds in the contender", lambda r: r.cpu_seconds, 1),
    ("  per 1,000 messages", lambda r: r.cpu_seconds * 1000 / max(r.messages, 1), 3),
    ("CPU seconds in the node", lambda r: r.notes.get("node_cpu_s"), 1),
    ("  per 1,000 messages", lambda r: r.notes["node_cpu_s"] * 1000 / max(r.messages, 1), 3),
    ("ES requests", lambda r: r.es_total if r.es_requests else None, 0),
    ("ES requests per 1,000 messages", lambda r: r.per_1000(r.es_total) if r.es_requests else None, 2),
    ("ES requests in flight at most", lambda r: r.notes.get("peak_in_flight"), 0),
    ("S3 requests", lambda r: r.s3_total, 0),
    ("S3 requests per 1,000 messages", lambda r: r.per_1000(r.s3_total), 2),
    ("S3 data objects written", lambda r: r.objects, 0),
    ("related docs per message", lambda r: r.related_docs / max(r.messages, 1), 2),
    ("peak RSS MiB", lambda r: r.peak_rss_kib / 1024, 1),
    ("  peak before work MiB", lambda r: None if r.rss_before_kib is None else r.rss_before_kib / 1024, 1),
)


def _table(results: Mapping[str, Result]) -> list[str]:
    width = max(len(label) for label, _, _ in ROWS)
    cell = max(len(header) for _, header in COLUMNS) + 1
    lines = [f"{'':<{width}}" + "".join(f"{header:>{cell}}" for _, header in COLUMNS)]
    for label, figure, decimals in ROWS:
        values = (figure(results[role]) for role, _ in COLUMNS)
        cells = (NOT_MEASURED if value is None else _fmt(value, decimals) for value in values)
        lines.append(f"{label:<{width}}" + "".join(f"{text:>{cell}}" for text in cells))
    return lines


def _median_run(runs: list[Result]) -> Result:
    """The run of median seconds (the lower middle one for an even count)."""
    return sorted(runs, key=lambda r: r.seconds)[(len(runs) - 1) // 2]


# The ratios, each computed within a round (its contenders ran back to back): label, ratio, target.
RATIOS: tuple[tuple[str, Callable[[Mapping[str, Result]], float], float], ...] = (
    ("pipeline/ceiling", lambda r: r["ceiling"].seconds / r["pipeline"].seconds, 0.8),
    ("pipeline/elasticdump", lambda r: r["elasticdump"].seconds / r["pipeline"].seconds, 1.25),
    ("pipeline/naive", lambda r: r["pipeline"].rate / r["naive"].rate, TARGET_SPEEDUP),
    (
        f"pipeline/ceiling at {LATENCY_LABEL}",
        lambda r: r["ceiling_latency"].seconds / r["pipeline_latency"].seconds,
        0.8,
    ),
)


def _ratio_lines(rounds: list[Mapping[str, Result]]) -> tuple[list[str], list[str]]:
    """``label: median (min-max over N rounds)`` per ratio, and the target verdict of each median."""
    lines, verdicts = [], []
    for label, ratio, target in RATIOS:
        values = sorted(ratio(results) for results in rounds)
        median = statistics.median(values)
        lines.append(f"{label}: {median:.2f} ({values[0]:.2f}–{values[-1]:.2f} over {len(values)} rounds)")
        verdicts.append(f"{label} >= {target:g}: {'met' if median >= target else 'NOT met'}")
    return lines, verdicts


def report(setup: Setup, rounds: list[Mapping[str, Result]], narrow: Result) -> str:
    """The table shows each contender's median run (by seconds); the ratios are medians of per-round ratios."""
    results = {role: _median_run([r[role] for r in rounds]) for role in (*CONTENDERS, *LATENCY_CONTENDERS)}
    pipeline, ceiling, dump, naive = (results[role] for role in ("pipeline", "ceiling", "elasticdump", "naive"))
    slow_pipeline, slow_ceiling, big = (results[role] for role in (*LATENCY_CONTENDERS, "pipeline_big"))
    cores = os.cpu_count() or 0
    es_where = "started here" if setup.es_started_here else "from ES_URL"
    s3_where = "moto, started here" if setup.s3_started_here else "from S3_ENDPOINT_URL"
    windows = f"{pipeline.notes.get('windows', '?')} windows of {pipeline.notes.get('window', '?')}"
    lines = [
        "",
        "=== es-backfill benchmark ===",
        f"Elasticsearch {setup.es_version} at {setup.es_url} ({es_where}); S3 at {setup.s3_url} ({s3_where})",
        f"Machine: {cores} cores, {_cpu_model()}; Python {sys.version.split()[0]}; {setup.placement}",
        f"Node CPU: {setup.node_cpu_source}; caches cleared (POST /_cache/clear) before every contender",
        f"Dataset: {_fmt(setup.messages)} messages over {DAYS} days "
        f"[{setup.start:%Y-%m-%d}, {setup.end:%Y-%m-%d}) + {_fmt(setup.related_docs)} related documents; "
        f"seeded in {setup.seed_seconds:.1f}s (not part of the figures)",
        f"pipeline:    run_window over all {windows}, one after the other; page_size {setup.page_size}, "
        f"max_in_flight {pipeline.notes.get('max_in_flight', '?')}, jsonl.gz parts, a manifest per window",
        f"ceiling:     the pipeline's Elasticsearch requests for the same {windows}, back to back over "
        f"{ceiling.notes.get('connections', '?')} keep-alive connection, parsed only for search_after keys "
        "and message ids; nothing written",
        f"elasticdump: {dump.notes.get('version', '?')}, the {len(dump.notes.get('lines', {}))} indices to local "
        f"files one after the other, --type=data --limit={setup.page_size} (a scroll; "
        f"{_fmt(dump.notes.get('batches', 0))} batches in its log); no join, no S3",
        f"naive:       scroll (size {naive.notes.get('scroll_size', '?')}) + "
        f"{naive.notes.get('related_indices', '?')} term searches + 1 put_object per message, "
        f"run on the FIRST {_fmt(naive.messages)} MESSAGES ONLY (it is far slower): compare rates, not seconds",
        f"{LATENCY_LABEL}:      pipeline and ceiling again through a fault proxy delaying every Elasticsearch "
        "request by that much, then forwarding it",
        f"pipeline {BIG_WINDOW}: the pipeline over ONE window of the whole range, "
        f"{BIG_WINDOW_FACTOR}x the default window, for its peak RSS",
        f"Rounds: one untimed pipeline pass to warm the caches, then {len(rounds)} rounds, each running every "
        "contender once, the order rotated by one each round; the table shows each contender's median run "
        "(by seconds), the ratios below are medians of the ratios within each round, with their min–max.",
        "",
        *_table(results),
    ]
    ratio_lines, verdicts = _ratio_lines(rounds)
    pipe_per_1000 = pipeline.per_1000(pipeline.es_total)
    in_flight = max(r[role].notes["peak_in_flight"] for r in rounds for role in ("pipeline", "pipeline_big"))
    big_over_default = big.peak_rss_kib / pipeline.peak_rss_kib
    same = "yes" if pipeline.es_requests == ceiling.es_requests else "NO"
    differ = "; ".join(slow_ceiling.notes.get("not_as_pipeline", [])[:3])
    differ = differ and f"NO, e.g. {differ}"
    lines += [
        "",
        *ratio_lines,
        *_cpu_lines(rounds),
        f"requests per 1,000 messages: pipeline {pipe_per_1000:.2f}, ceiling {ceiling.per_1000(ceiling.es_total):.2f}",
        f"requests in flight at most: {in_flight} (max_in_flight {pipeline.notes['max_in_flight']}, every round)",
        f"peak RSS default window: {pipeline.peak_rss_kib / 1024:.2f} MiB",
        f"peak RSS {BIG_WINDOW_FACTOR}x window: {big.peak_rss_kib / 1024:.2f} MiB ({big_over_default:.2f}x)",
        f"dry-run estimate of the pipeline's time: {pipeline.notes['estimated_seconds']:.1f}s for "
        f"{pipeline.seconds:.1f}s measured ({pipeline.notes['estimated_seconds'] / pipeline.seconds:.2f}x)",
        *_parquet_lines(rounds),
        f"bytes read from the cluster: {ceiling.notes['bytes_read'] / 2**20:,.1f} MiB whole documents, "
        f"{narrow.notes['bytes_read'] / 2**20:,.1f} MiB with a narrow _source "
        f"({narrow.notes['bytes_read'] / ceiling.notes['bytes_read']:.2f}x; ceiling requests, "
        f"{narrow.seconds:.1f}s for {ceiling.seconds:.1f}s)",
        "",
        "pipeline/X: the pipeline's speed over X's on the same messages (X's seconds / the pipeline's; for naive, "
        "records/s over records/s).",
        f"  elasticdump dumps the same {_fmt(dump.messages + dump.related_docs)} documents without joining them, "
        f"to local files ({dump.notes.get('bytes', 0) / 2**20:,.0f} MiB), not S3.",
        f"  The ceiling sent the same Elasticsearch requests as the pipeline, kind by kind: {same}; "
        f"method, path and parameters, as the proxy saw them: {differ or 'yes'}.",
        f"  Delayed by the proxy: {slow_pipeline.notes.get('delayed', '?')} requests of pipeline{LATENCY_LABEL}, "
        f"{slow_ceiling.notes.get('delayed', '?')} of ceiling{LATENCY_LABEL}.",
        "Targets (information only, on the medians): " + "; ".join(verdicts),
        f"  ES requests per 1,000 messages <= {TARGET_REQUESTS_PER_1000:g}: "
        f"{'met' if pipe_per_1000 <= TARGET_REQUESTS_PER_1000 else 'NOT met'}; "
        f"in flight <= max_in_flight: {'met' if in_flight <= pipeline.notes['max_in_flight'] else 'NOT met'}; "
        f"peak RSS {BIG_WINDOW_FACTOR}x window <= {TARGET_RSS_GROWTH:g}x default: "
        f"{'met' if big_over_default <= TARGET_RSS_GROWTH else 'NOT met'}",
        "",
        "ES requests by kind:",
        *(f"  {role:<17} {_es_by_kind(results[role])}" for role, _ in COLUMNS),
        "S3 requests by operation:",
        *(f"  {role:<17} {_by_kind(results[role].s3_requests)}" for role, _ in COLUMNS if results[role].s3_requests),
        "Peak RSS is getrusage ru_maxrss in each contender's own process (elasticdump: its largest node "
        "process); cross-check with /proc VmHWM:",
        *(f"  {_rss_check(results[role])}" for role, _ in COLUMNS),
        f"  (orchestrator peak, a floor every child inherits: {setup.orchestrator_peak_rss_kib / 1024:,.1f} MiB)",
    ]
    return "\n".join(lines)


def _per_1000(result: Result, seconds: float) -> float:
    return seconds * 1000 / max(result.messages, 1)


def _spread(values: list[float]) -> str:
    values = sorted(values)
    return f"{statistics.median(values):.3f} ({values[0]:.3f}–{values[-1]:.3f})"


def _cpu_lines(rounds: list[Mapping[str, Result]]) -> list[str]:
    """CPU seconds per 1,000 messages, in the node and in the contender, as medians (min-max over the rounds),
    the pipeline's over elasticdump's, and where the node's time went by thread group (median round)."""
    roles = ("pipeline", "ceiling", "ceiling_latency", "elasticdump")
    node = {role: [_per_1000(r[role], r[role].notes["node_cpu_s"]) for r in rounds] for role in roles}
    task = {role: [_per_1000(r[role], r[role].cpu_seconds) for r in rounds] for role in roles}
    over = [
        _per_1000(r["pipeline"], r["pipeline"].notes["node_cpu_s"])
        / max(_per_1000(r["elasticdump"], r["elasticdump"].notes["node_cpu_s"]), 1e-9)
        for r in rounds
    ]
    task_over = [r["pipeline"].cpu_seconds / max(r["elasticdump"].cpu_seconds, 1e-9) for r in rounds]
    lines = [
        "cluster CPU per 1,000 messages (median, min–max): "
        + ", ".join(f"{role} {_spread(values)}" for role, values in node.items())
        + f"; pipeline/elasticdump {_spread(over)}",
        "task CPU per 1,000 messages (median, min–max): "
        + ", ".join(f"{role} {_spread(values)}" for role, values in task.items())
        + f"; pipeline/elasticdump {_spread(task_over)}",
        "Where the node's CPU went, by thread group (CPU seconds, the contender's median round):",
    ]
    for role in (*roles, "pipeline_latency"):
        run = _median_run([r[role] for r in rounds])
        groups = sorted(run.notes["node_threads"].items(), key=lambda kv: -kv[1])
        shown = ", ".join(f"{name} {seconds:.2f}" for name, seconds in groups[:8]) or "not known (ES_URL)"
        lines.append(f"  {role:<17} {run.notes['node_cpu_s']:.2f} in all: {shown}")
    return lines


def _parquet_lines(rounds: list[Mapping[str, Result]]) -> list[str]:
    """Parquet against jsonl.gz on the same windows: bytes written and task CPU per 1,000 messages."""
    size = {role: [r[role].notes["bytes"] * 1000 / max(r[role].messages, 1) for r in rounds]
            for role in ("pipeline", "pipeline_parquet")}  # fmt: skip
    cpu = {role: [_per_1000(r[role], r[role].cpu_seconds) for r in rounds] for role in ("pipeline", "pipeline_parquet")}
    over = [r["pipeline_parquet"].cpu_seconds / max(r["pipeline"].cpu_seconds, 1e-9) for r in rounds]
    return [
        f"parquet vs jsonl.gz, bytes written per 1,000 messages: {statistics.median(size['pipeline_parquet']):,.0f}"
        f" vs {statistics.median(size['pipeline']):,.0f} "
        f"({statistics.median(size['pipeline_parquet']) / statistics.median(size['pipeline']):.2f}x); "
        f"task CPU per 1,000 messages: parquet {_spread(cpu['pipeline_parquet'])}, jsonl.gz {_spread(cpu['pipeline'])}"
        f", parquet/jsonl.gz {_spread(over)}"
    ]


def _cores(cores: set[int] | None) -> str:
    return ",".join(map(str, sorted(cores or ())))


def _count_problems(rounds: list[Mapping[str, Result]], counts: Mapping[str, int]) -> list[str]:
    """In every round, every contender that reads the whole range read every seeded message, and elasticdump
    wrote every document."""
    problems = []
    for number, results in enumerate(rounds, start=1):
        problems += [
            f"round {number}: {role} read {result.messages:,} messages, not {counts['messages']:,}"
            for role, result in results.items()
            if role != "naive" and result.messages != counts["messages"]
        ]
        dumped = results["elasticdump"].notes["lines"]
        if dumped != dict(counts):
            problems.append(f"round {number}: elasticdump wrote {dumped} lines, not the seeded {dict(counts)}")
    return problems


def _run_with_latency(job: Job, placement: Placement) -> dict[str, Result]:
    """The latency contenders, through a fault proxy (in this process) delaying every request by LATENCY_S.
    The proxy's log also shows whether the ceiling sent the pipeline's requests: method, path and parameters."""
    from include.dev.servers.faultproxy import FaultProxy, delay

    results, seen = {}, {}
    with FaultProxy(job.es_url) as proxy:
        proxy.add_fault(".", delay(LATENCY_S), times=None)  # "." matches every request line
        for role in LATENCY_CONTENDERS:
            first = len(proxy.requests)
            results[role] = placement.run(role, replace(job, es_url=proxy.url))
            records = proxy.requests[first:]
            results[role].notes["delayed"] = sum(1 for r in records if r.injected == "delay")
            seen[role] = Counter(f"{r.method} {r.path} {sorted(parse_qsl(r.query))}" for r in records)
    pipeline, ceiling = (seen[role] for role in LATENCY_CONTENDERS)
    results["ceiling_latency"].notes["not_as_pipeline"] = sorted(((pipeline - ceiling) + (ceiling - pipeline)).keys())
    return results


def _round(job: Job, jobs: Mapping[str, Job], number: int, placement: Placement) -> dict[str, Result]:
    """Every contender once, in the order of CONTENDERS rotated by ``number``; then the latency pair."""
    order = CONTENDERS[number % len(CONTENDERS) :] + CONTENDERS[: number % len(CONTENDERS)]
    log.info("Round %s: %s, then %s", number + 1, ", ".join(order), ", ".join(LATENCY_CONTENDERS))
    results = {role: placement.run(role, jobs[role], number) for role in order}
    return results | _run_with_latency(job, placement)


def main_bench(
    messages: int,
    naive_messages: int,
    page_size: int,
    rounds: int,
    shared_cores: bool = False,
    profile_dir: Path | None = None,
) -> None:
    # Only light modules here: whatever this process holds, its children's ru_maxrss starts from.
    from include.dev.datagen import ROLES as DATAGEN_ROLES
    from include.dev.servers.elasticsearch import running_elasticsearch
    from include.dev.servers.s3 import running_s3

    tag = uuid.uuid4().hex[:8]
    start, end = START, START + timedelta(days=DAYS)
    cores = sorted(os.sched_getaffinity(0))
    contender_cores = None if shared_cores or len(cores) < 2 else set(cores[len(cores) // 2 :])
    if contender_cores:  # the servers started below inherit the other half
        os.sched_setaffinity(0, set(cores[: len(cores) // 2]))
    with running_elasticsearch() as cluster, running_s3() as s3_server:
        placement = Placement(NodeMeter(cluster.url, cluster.pid, cluster.java_home), contender_cores, profile_dir)
        job = Job(
            es_url=cluster.url,
            s3_url=s3_server.endpoint_url,
            bucket=f"es-backfill-bench-{tag}",
            indices={role: f"bench_{role}_{tag}" for role in DATAGEN_ROLES},
            start=start.isoformat(),
            end=end.isoformat(),
            messages=messages,
            page_size=page_size,
            naive_messages=naive_messages,
        )
        jobs = {role: job for role in CONTENDERS} | {
            "pipeline_big": replace(job, window=BIG_WINDOW),
            "pipeline_parquet": replace(job, output_format="parquet"),
        }
        # Servers started here vanish with their data; from external ones we remove what we made.
        external = not (cluster.started_here and s3_server.started_here)
        try:
            seeded = run_child("seed", job)
            log.info("Warm-up: one untimed pipeline pass")
            run_child("pipeline", job, contender_cores)
            measured = [_round(job, jobs, number, placement) for number in range(rounds)]
            log.info("The ceiling once more, reading a narrow _source")
            narrow = placement.run(NARROW_ROLE, replace(job, narrow=True))
        except BaseException:
            if external:
                try:
                    run_child("cleanup", job)
                except Exception as err:  # the first error is the one to report
                    log.warning("Could not remove the benchmark's indices and bucket %s: %s", job.bucket, err)
            raise
        if external:
            run_child("cleanup", job)
    setup = Setup(
        es_url=cluster.url,
        es_version=seeded["es_version"],
        es_started_here=cluster.started_here,
        s3_url=s3_server.endpoint_url,
        s3_started_here=s3_server.started_here,
        counts=seeded["counts"],
        seed_seconds=seeded["seconds"],
        start=start,
        end=end,
        page_size=page_size,
        orchestrator_peak_rss_kib=_peak_rss_kib(),
        placement=(f"Elasticsearch and S3 on core(s) {_cores(set(cores) - contender_cores)}, each contender on "
                   f"core(s) {_cores(contender_cores)} (taskset; --shared-cores to share them)") if contender_cores
        else "Elasticsearch, S3 and the contender share these cores",
        node_cpu_source=placement.meter.source,
    )  # fmt: skip
    print(report(setup, measured, narrow), flush=True)
    problems = _count_problems(measured, setup.counts)
    print(f"Counts: {'; '.join(problems) or 'every contender read every message; elasticdump wrote them all'}")
    if problems:
        raise RuntimeError(f"the counts do not match: {'; '.join(problems)}")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    from es_backfill.config import PAGE_SIZE_MAX, PAGE_SIZE_MIN  # a light module: stdlib only

    parser = argparse.ArgumentParser(
        prog="python -m include.dev.bench",
        description="Benchmark the es-backfill pipeline against a raw-HTTP ceiling, elasticdump and a naive script.",
    )
    parser.add_argument(
        "--messages", type=_positive, default=DEFAULT_MESSAGES, help=f"messages to seed (default {DEFAULT_MESSAGES})"
    )
    parser.add_argument(
        "--naive-messages",
        type=_positive,
        default=DEFAULT_NAIVE_MESSAGES,
        help=f"messages the naive script processes (default {DEFAULT_NAIVE_MESSAGES})",
    )
    parser.add_argument(
        "--page-size",
        type=_positive,
        default=DEFAULT_PAGE_SIZE,
        help=f"the pipeline's page_size (and elasticdump's --limit), {PAGE_SIZE_MIN}..{PAGE_SIZE_MAX} "
        f"(default {DEFAULT_PAGE_SIZE})",
    )
    parser.add_argument(
        "--rounds",
        type=_positive,
        default=DEFAULT_ROUNDS,
        help=f"rounds of every contender after the warm-up; medians are reported (default {DEFAULT_ROUNDS})",
    )
    parser.add_argument(
        "--shared-cores",
        action="store_true",
        help="run the servers and the contenders on all cores alike (default: the servers on half the cores, "
        "each contender on the other half)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help=f"sample {' and '.join(PROFILED)} with py-spy in every round and write their collapsed stacks to "
        "DIR/<role>-<round>.txt (flamegraph.pl and speedscope read them)",
    )
    # Internal: how the benchmark runs seeding and each contender in a child process.
    parser.add_argument("--role", choices=("seed", *ROLES, "cleanup"), help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not PAGE_SIZE_MIN <= args.page_size <= PAGE_SIZE_MAX:
        parser.error(f"--page-size must be within {PAGE_SIZE_MIN}..{PAGE_SIZE_MAX} (the pipeline's bounds)")
    if args.role and not (args.job and args.result_file):
        parser.error("--role needs --job and --result-file")

    tag = f"[{args.role}] " if args.role else ""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {tag}%(levelname)s %(name)s: %(message)s")
    for noisy in ("elastic_transport", "botocore", "boto3", "urllib3", "include.dev.servers.faultproxy"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        if args.role:
            child_main(args.role, Job(**json.loads(args.job)), args.result_file)
        else:
            if args.profile:
                args.profile.mkdir(parents=True, exist_ok=True)
            main_bench(args.messages, args.naive_messages, args.page_size, args.rounds, args.shared_cores, args.profile)
    except Exception:
        log.exception("Benchmark failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
