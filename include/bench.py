"""Benchmark: the backfill pipeline against a naive per-message script, on real servers.

What it measures, in one run:

1. It starts a real Elasticsearch node and a moto S3 server (or uses ``ES_URL`` /
   ``S3_ENDPOINT_URL``), creates a fresh bucket, and seeds ``--messages`` generated
   messages over 7 days, with their history, status and audit documents, into fresh
   indices, then waits for the merges the bulk load started. Seeding is timed and
   reported on its own; it is not part of the figures. The default of 110,000 messages
   keeps the pipeline part near 25-30 s on a 2-core machine.
2. **pipeline**: ``es_backfill.extract.run_window`` over every 1-day window, one after
   the other, as the DAG's mapped tasks would run them: point in time + ``search_after``
   pages of ``--page-size`` messages, one batched ``terms`` lookup per related index and
   page, ``jsonl.gz`` parts on S3, a manifest per window. Every message of the range.
3. **naive**: what a hurried script does: the scroll API over the messages of the range,
   then for each message one ``term`` search per related index and one ``put_object``
   of a JSON document. It is tens of times slower (about 50-75x on a 2-core machine), so
   it runs on the first ``--naive-messages`` messages only; compare rates, not seconds.

Each contender runs in its own child process (``python -m include.bench --role ...``)
so its peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``, read in the child) is its own.
Linux carries a parent's peak into ``ru_maxrss`` across fork + exec, so the orchestrating
process stays small (seeding runs in a child too) and each contender also reports
``VmHWM`` from ``/proc/self/status`` as a cross-check.
Every Elasticsearch request is counted (the pipeline's reader counts each attempt;
the naive script's calls go through a counter), and every S3 HTTP request is counted
with a botocore ``before-send`` hook. The table shows messages, seconds, records/s,
requests in total and per 1,000 messages, related documents per message (both sides do
the same join) and peak RSS, then the ratios. Targets are printed as information only:
the exit status is non-zero only when something fails.

Run it from the project root::

    .venv/bin/python -m include.bench [--messages N] [--naive-messages M] [--page-size P]

Both contenders share this machine with Elasticsearch and the S3 server, so the figures
describe this machine; the ratios are what carries over.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
# Airflow puts the plugins folder on sys.path for the DAG; a plain `python -m` run has to do it itself.
if str(ROOT / "plugins") not in sys.path:
    sys.path.insert(0, str(ROOT / "plugins"))

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULTS_FILE = ROOT / "include" / "backfill_defaults.json"
START = datetime(2024, 3, 1, tzinfo=UTC)
DAYS = 7
DEFAULT_MESSAGES = 110_000
DEFAULT_NAIVE_MESSAGES = 2_000
DEFAULT_PAGE_SIZE = 5_000
MAX_WINDOWS = 1024  # Airflow's default [core] max_map_length
NAIVE_SCROLL_SIZE = 1_000  # helpers.scan's default page size
NAIVE_RELATED_SIZE = 100  # "surely no message has more than 100 of those"
REGION = "us-east-1"
DUMMY_CREDENTIALS = "testing"  # moto accepts anything; these only have to be present
TARGET_SPEEDUP = 20.0
TARGET_REQUESTS_PER_1000 = 5.0
SEED_CHUNK_SIZE = 5_000
CHILD_TIMEOUT_S = 6 * 3600
MERGE_WAIT_S = 600
CONTENDERS = ("pipeline", "naive")


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
    es_requests: dict[str, int]
    s3_requests: dict[str, int]
    related_docs: int
    objects: int
    rss_before_kib: int
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


def _source_override(defaults: Mapping[str, Any], indices: Mapping[str, str]) -> dict[str, Any]:
    """The defaults file's ``messages`` and ``related`` settings, pointed at the seeded indices."""
    related = []
    for item in defaults["related"]:
        if item["name"] not in indices:
            raise ValueError(f"related index {item['name']!r} of {DEFAULTS_FILE} is not one the generator seeds")
        related.append({**item, "index": indices[item["name"]]})
    return {"messages": {**defaults["messages"], "index": indices["messages"]}, "related": related}


# --- contender: the pipeline -------------------------------------------------------------------


def run_pipeline(job: Job) -> Result:
    """Every window of the range through ``run_window``, sequentially, as the DAG's tasks would."""
    from es_backfill.config import from_params, load_defaults
    from es_backfill.engines import ConnectionSettings, connect
    from es_backfill.extract import run_window
    from es_backfill.sink import S3_CLIENT_CONFIG, ObjectStore
    from es_backfill.windows import split

    defaults = load_defaults(DEFAULTS_FILE)
    params = {
        "start": job.start,
        "end": job.end,
        "window": "1d",
        "s3_bucket": job.bucket,
        "s3_prefix": "pipeline",
        "page_size": job.page_size,
        "output_format": "jsonl.gz",
        "source": _source_override(defaults, job.indices),
    }
    config = from_params(params, defaults)
    windows = split(config.start, config.end, config.window, max_windows=MAX_WINDOWS)
    s3 = _s3_client(job.s3_url, S3_CLIENT_CONFIG)
    s3_counts = _count_s3_requests(s3)
    store = ObjectStore(s3, config.s3_bucket)
    rss_before = _peak_rss_kib()
    with connect(ConnectionSettings(job.es_url), max_retries=config.source.max_retries) as reader:
        cpu_before, started = _cpu_seconds(), time.perf_counter()
        results = [run_window(config, window, reader, store) for window in windows]
        seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu_before
    problems = [r.window["label"] for r in results if r.status != "written" or r.messages != r.es_count]
    if problems:
        raise RuntimeError(f"pipeline windows not written in full: {', '.join(problems)}")
    return Result(
        role="pipeline",
        messages=sum(r.messages for r in results),
        seconds=seconds,
        es_requests=dict(reader.requests),
        s3_requests=dict(s3_counts),
        related_docs=sum(sum(r.related.values()) for r in results),
        objects=sum(r.objects for r in results),
        rss_before_kib=rss_before,
        peak_rss_kib=_peak_rss_kib(),
        cpu_seconds=cpu,
        notes={"windows": len(windows), "bytes": sum(r.bytes for r in results)},
    )


# --- contender: the naive script ---------------------------------------------------------------


def run_naive(job: Job) -> Result:
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
        role="naive",
        messages=done,
        seconds=seconds,
        es_requests=dict(es_counts),
        s3_requests=dict(s3_counts),
        related_docs=related_docs,
        objects=done,
        rss_before_kib=rss_before,
        peak_rss_kib=_peak_rss_kib(),
        cpu_seconds=cpu,
        notes={"related_indices": len(related), "scroll_size": NAIVE_SCROLL_SIZE},
    )


# --- seeding and clean-up (child processes too, so the orchestrator stays small) ---------------


def seed(job: Job) -> dict[str, Any]:
    """Create the bucket, load the dataset into fresh indices; report the ES version and counts."""
    from elasticsearch import Elasticsearch

    from include.datagen import DatasetSpec, IndexNames, load

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


def child_main(role: str, job: Job, result_file: Path) -> None:
    """Entry point of a child process: run ``role``, write what it reports as JSON."""
    if role in CONTENDERS:
        log.info("Running the %s contender", role)
        result = run_pipeline(job) if role == "pipeline" else run_naive(job)
        result.notes["vm_hwm_kib"] = _vm_hwm_kib()
        log.info(
            "%s: %s messages in %.1fs, %s ES requests, ru_maxrss %s KiB, VmHWM %s KiB",
            role, result.messages, result.seconds, result.es_total, result.peak_rss_kib, result.notes["vm_hwm_kib"],
        )  # fmt: skip
        report: dict[str, Any] = asdict(result)
    else:
        report = seed(job) if role == "seed" else cleanup(job)
    result_file.write_text(json.dumps(report))


def run_child(role: str, job: Job) -> dict[str, Any]:
    """Run ``role`` in a fresh interpreter and return what it reports.

    A process started with fork/vfork + exec inherits its parent's peak RSS in ``ru_maxrss``
    (Linux keeps the larger of the two across exec). The orchestrator therefore never imports
    the clients nor holds data: seeding runs in a child as well, and the contenders' figures
    are their own. Each contender also reports ``VmHWM`` (reset by exec) as a cross-check.
    """
    with tempfile.TemporaryDirectory(prefix="es-backfill-bench-") as tmp:
        result_file = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "include.bench", "--role", role, "--job", json.dumps(asdict(job))]
        cmd += ["--result-file", str(result_file)]
        log.info("Starting child process: %s", role)
        completed = subprocess.run(cmd, cwd=ROOT, check=False, timeout=CHILD_TIMEOUT_S)
        if completed.returncode != 0 or not result_file.is_file():
            raise RuntimeError(f"the {role} child process failed (exit status {completed.returncode}); see its log")
        return json.loads(result_file.read_text())


# --- orchestration and report ------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    es_url: str
    es_version: str
    es_started_here: bool
    s3_url: str
    s3_started_here: bool
    messages: int
    related_docs: int
    seed_seconds: float
    start: datetime
    end: datetime
    page_size: int
    orchestrator_peak_rss_kib: int


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


def _rss_check(result: Result) -> str:
    hwm = result.notes.get("vm_hwm_kib")
    if hwm is None:
        return f"{result.role}: VmHWM unavailable"
    # ru_maxrss can only exceed VmHWM when it carries a parent's peak from before exec.
    verdict = "agree" if result.peak_rss_kib <= hwm else "DIFFER (ru_maxrss inherited a parent's peak)"
    return f"{result.role}: ru_maxrss {result.peak_rss_kib / 1024:,.1f} MiB, VmHWM {hwm / 1024:,.1f} MiB, {verdict}"


def report(setup: Setup, pipeline: Result, naive: Result) -> str:
    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    es_where = "started here" if setup.es_started_here else "from ES_URL"
    s3_where = "moto, started here" if setup.s3_started_here else "from S3_ENDPOINT_URL"
    lines = [
        "",
        "=== es-backfill benchmark ===",
        f"Elasticsearch {setup.es_version} at {setup.es_url} ({es_where}); S3 at {setup.s3_url} ({s3_where})",
        f"Machine: {cores} cores ({usable} usable), {_cpu_model()}; Python {sys.version.split()[0]}; "
        "Elasticsearch, S3 and the contender share these cores",
        f"Dataset: {_fmt(setup.messages)} messages over {DAYS} days "
        f"[{setup.start:%Y-%m-%d}, {setup.end:%Y-%m-%d}) + {_fmt(setup.related_docs)} related documents; "
        f"seeded in {setup.seed_seconds:.1f}s (not part of the figures)",
        f"pipeline: run_window over all {pipeline.notes.get('windows', '?')} windows of 1d, one after the other; "
        f"page_size {setup.page_size}, jsonl.gz parts, a manifest per window",
        f"naive:    scroll (size {naive.notes.get('scroll_size', '?')}) + "
        f"{naive.notes.get('related_indices', '?')} term searches + 1 put_object per message, "
        f"run on the FIRST {_fmt(naive.messages)} MESSAGES ONLY (it is far slower): compare rates, not seconds",
        "",
    ]
    rows: list[tuple[str, str, str]] = [
        ("messages processed", _fmt(pipeline.messages), _fmt(naive.messages)),
        ("seconds", _fmt(pipeline.seconds, 1), _fmt(naive.seconds, 1)),
        ("records/s", _fmt(pipeline.rate, 1), _fmt(naive.rate, 1)),
        ("CPU seconds in the contender", _fmt(pipeline.cpu_seconds, 1), _fmt(naive.cpu_seconds, 1)),
        ("ES requests", _fmt(pipeline.es_total), _fmt(naive.es_total)),
        (
            "ES requests per 1,000 messages",
            _fmt(pipeline.per_1000(pipeline.es_total), 2),
            _fmt(naive.per_1000(naive.es_total), 2),
        ),
        ("S3 requests", _fmt(pipeline.s3_total), _fmt(naive.s3_total)),
        (
            "S3 requests per 1,000 messages",
            _fmt(pipeline.per_1000(pipeline.s3_total), 2),
            _fmt(naive.per_1000(naive.s3_total), 2),
        ),
        ("S3 data objects written", _fmt(pipeline.objects), _fmt(naive.objects)),
        (
            "related docs per message",
            _fmt(pipeline.related_docs / max(pipeline.messages, 1), 2),
            _fmt(naive.related_docs / max(naive.messages, 1), 2),
        ),
        ("peak RSS MiB", _fmt(pipeline.peak_rss_kib / 1024, 1), _fmt(naive.peak_rss_kib / 1024, 1)),
        ("  peak before work MiB", _fmt(pipeline.rss_before_kib / 1024, 1), _fmt(naive.rss_before_kib / 1024, 1)),
    ]
    width = max(len(r[0]) for r in rows)
    lines.append(f"{'':<{width}}  {'pipeline':>14}  {'naive':>14}")
    lines += [f"{name:<{width}}  {p:>14}  {n:>14}" for name, p, n in rows]
    speedup = pipeline.rate / naive.rate if naive.rate else float("inf")
    pipe_per_1000 = pipeline.per_1000(pipeline.es_total)
    naive_per_1000 = naive.per_1000(naive.es_total)
    fewer = naive_per_1000 / pipe_per_1000 if pipe_per_1000 else float("inf")
    speedup_met = "met" if speedup >= TARGET_SPEEDUP else "NOT met"
    requests_met = "met" if pipe_per_1000 <= TARGET_REQUESTS_PER_1000 else "NOT met"
    lines += [
        "",
        f"{'pipeline/naive records/s:':<47}{speedup:,.1f}x  (target >= {TARGET_SPEEDUP:g}x: {speedup_met})",
        f"{'naive/pipeline ES requests per 1,000 messages:':<47}{fewer:,.1f}x",
        f"{'pipeline ES requests per 1,000 messages:':<47}{pipe_per_1000:.2f}  "
        f"(target <= {TARGET_REQUESTS_PER_1000:g}: {requests_met})",
        "",
        "ES requests by kind:",
        f"  pipeline: {_by_kind(pipeline.es_requests)}",
        f"  naive:    {_by_kind(naive.es_requests)}",
        "S3 requests by operation:",
        f"  pipeline: {_by_kind(pipeline.s3_requests)}",
        f"  naive:    {_by_kind(naive.s3_requests)}",
        "Peak RSS is getrusage(RUSAGE_SELF).ru_maxrss in each contender's own process; cross-check with /proc VmHWM:",
        f"  {_rss_check(pipeline)}",
        f"  {_rss_check(naive)}",
        f"  (orchestrator peak, a floor every child inherits: {setup.orchestrator_peak_rss_kib / 1024:,.1f} MiB)",
    ]
    return "\n".join(lines)


def main_bench(messages: int, naive_messages: int, page_size: int) -> None:
    # Only light modules here: whatever this process holds, its children's ru_maxrss starts from.
    from include.datagen import ROLES as DATAGEN_ROLES
    from include.devservers.elasticsearch import running_elasticsearch
    from include.devservers.s3 import running_s3

    tag = uuid.uuid4().hex[:8]
    start, end = START, START + timedelta(days=DAYS)
    with running_elasticsearch() as cluster, running_s3() as s3_server:
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
        # Servers started here vanish with their data; from external ones we remove what we made.
        external = not (cluster.started_here and s3_server.started_here)
        try:
            seeded = run_child("seed", job)
            results = {role: Result(**run_child(role, job)) for role in CONTENDERS}
        except BaseException:
            if external:
                try:
                    run_child("cleanup", job)
                except Exception as err:  # the first error is the one to report
                    log.warning("Could not remove the benchmark's indices and bucket %s: %s", job.bucket, err)
            raise
        if external:
            run_child("cleanup", job)
    counts = seeded["counts"]
    setup = Setup(
        es_url=cluster.url,
        es_version=seeded["es_version"],
        es_started_here=cluster.started_here,
        s3_url=s3_server.endpoint_url,
        s3_started_here=s3_server.started_here,
        messages=counts["messages"],
        related_docs=sum(n for role, n in counts.items() if role != "messages"),
        seed_seconds=seeded["seconds"],
        start=start,
        end=end,
        page_size=page_size,
        orchestrator_peak_rss_kib=_peak_rss_kib(),
    )
    print(report(setup, results["pipeline"], results["naive"]), flush=True)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    from es_backfill.config import PAGE_SIZE_MAX, PAGE_SIZE_MIN  # a light module: stdlib only

    parser = argparse.ArgumentParser(
        prog="python -m include.bench",
        description="Benchmark the es-backfill pipeline against a naive per-message script.",
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
        help=f"the pipeline's page_size, {PAGE_SIZE_MIN}..{PAGE_SIZE_MAX} (default {DEFAULT_PAGE_SIZE})",
    )
    # Internal: how the benchmark runs seeding and each contender in a child process.
    parser.add_argument("--role", choices=("seed", *CONTENDERS, "cleanup"), help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not PAGE_SIZE_MIN <= args.page_size <= PAGE_SIZE_MAX:
        parser.error(f"--page-size must be within {PAGE_SIZE_MIN}..{PAGE_SIZE_MAX} (the pipeline's bounds)")
    if args.role and not (args.job and args.result_file):
        parser.error("--role needs --job and --result-file")

    tag = f"[{args.role}] " if args.role else ""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {tag}%(levelname)s %(name)s: %(message)s")
    for noisy in ("elastic_transport", "botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        if args.role:
            child_main(args.role, Job(**json.loads(args.job)), args.result_file)
        else:
            main_bench(args.messages, args.naive_messages, args.page_size)
    except Exception:
        log.exception("Benchmark failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
