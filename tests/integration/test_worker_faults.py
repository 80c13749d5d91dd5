"""Faults a deployment meets, on the real scheduler: a task killed mid-part (retried, and with no retries left),
the scheduler killed and restarted, S3 unreachable past the client's retries, the cluster restarted mid-window,
and a worker paused past its heartbeat timeout that wakes up after its retry started.

Airflow (api-server, scheduler, dag-processor, LocalExecutor, PostgreSQL: ``scheduler_stack``) reads the
session's Elasticsearch node (restartable on the same data) through a fault proxy that slows every search,
so a window takes seconds and several parts, and writes to S3 through a second proxy. After each fault the
bucket is compared object by object with the output of an undisturbed run of the same backfill, whose records
are checked against the documents as loaded.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import quote

import orjson
import pytest

from include.dev.datagen import DatasetSpec, generate, load
from include.dev.servers.airflow_stack import AirflowStackError, wait_healthy
from include.dev.servers.faultproxy import delay, drop
from tests.integration.support import (
    ARTIFACTS,
    decode_records,
    expected_records,
    ready_for_runs,
    render_ui_page,
    s3_client,
    source_override,
    unique_indices,
    utc,
    window_objects,
)

RUN_TIMEOUT_S = 600
ROOT = "backfill-20240301T000000Z-20240303T000000Z-1d"
FOLDERS = ["dt=2024-03-01/20240301T000000Z_20240302T000000Z/", "dt=2024-03-02/20240302T000000Z_20240303T000000Z/"]


@pytest.fixture(scope="module")
def faults(scheduler_stack, es_cluster, es_client, s3_server):
    """The session's stack, with ~2,600 messages of ~21 KiB (two windows of 28 MiB, three parts each) seeded."""
    names = unique_indices()
    spec = DatasetSpec(messages=2600, start=utc(2024, 3, 1), end=utc(2024, 3, 3), body_words=4800, indices=names)
    load(es_client, spec, chunk_size=200)
    bucket = f"faults-{uuid.uuid4().hex[:12]}"
    s3 = s3_client(s3_server.endpoint_url)
    s3.create_bucket(Bucket=bucket)
    run = Runs(scheduler_stack.airflow, s3, bucket, names, es_cluster, scheduler_stack.es_proxy,
               scheduler_stack.s3_proxy)  # fmt: skip
    ready_for_runs(run.airflow, 2)
    # Every search takes a while, so a window spends seconds between its parts.
    run.es_proxy.add_fault(r"^POST /(\S+/)?_search", delay(0.4), times=None)
    yield run, list(generate(spec))
    run.es_proxy.clear_faults()


class Runs:
    """Triggers runs of one backfill under different prefixes and watches their windows."""

    def __init__(self, airflow, s3, bucket, names, node, es_proxy, s3_proxy) -> None:
        self.airflow, self.s3, self.bucket, self.names = airflow, s3, bucket, names
        self.node, self.es_proxy, self.s3_proxy = node, es_proxy, s3_proxy
        self.prefixes: dict[str, str] = {}

    def trigger(self, prefix: str) -> str:
        conf = {"start": "2024-03-01", "end": "2024-03-03", "window": "1d", "s3_bucket": self.bucket,
                "s3_prefix": prefix, "page_size": 100, "output_format": "jsonl",
                "source": source_override(self.names) | {"part_max_bytes": 12 * 2**20}}  # fmt: skip
        body = {"logical_date": None, "conf": conf}
        run_id = self.airflow.api("POST", "/dags/es_backfill/dagRuns", body)["dag_run_id"]
        self.prefixes[run_id] = prefix
        return run_id

    def finished(self, run_id: str) -> str:
        def state() -> str | None:
            found = self.airflow.api("GET", f"/dags/es_backfill/dagRuns/{quote(run_id)}")["state"]
            return found if found in {"success", "failed"} else None

        return self.airflow.wait_for(f"run {run_id} to finish", state, timeout=RUN_TIMEOUT_S, every=1)

    def window(self, run_id: str, map_index: int) -> dict[str, Any]:
        return self.airflow.api("GET", f"/dags/es_backfill/dagRuns/{quote(run_id)}/taskInstances/extract/{map_index}")

    def tries(self, run_id: str, map_index: int) -> list[dict[str, Any]]:
        path = f"/dags/es_backfill/dagRuns/{quote(run_id)}/taskInstances/extract/{map_index}/tries"
        return self.airflow.api("GET", path)["task_instances"]

    def log(self, run_id: str, map_index: int, try_number: int) -> str:
        path = f"/dags/es_backfill/dagRuns/{quote(run_id)}/taskInstances/extract/logs/{try_number}"
        return orjson.dumps(self.airflow.api("GET", f"{path}?full_content=true&map_index={map_index}")).decode()

    def open_uploads(self, prefix: str) -> list[str]:
        listing = self.s3.list_multipart_uploads(Bucket=self.bucket, Prefix=f"{prefix}/")
        return [u["Key"] for u in listing.get("Uploads", [])]

    def mid_part(self, prefix: str, map_index: int) -> bool:
        """The window's first part is committed and its second is an open multipart upload."""
        return f"{prefix}/{ROOT}/{FOLDERS[map_index]}part-00001.jsonl" in self.open_uploads(prefix)

    def between_parts(self, prefix: str, map_index: int) -> bool:
        """The window's first part is committed and no upload is open: the next part is still in memory."""
        first = f"{prefix}/{ROOT}/{FOLDERS[map_index]}part-00000.jsonl"
        listed = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=first).get("Contents", [])
        return bool(listed) and not self.open_uploads(prefix)

    def running_try(self, run_id: str, map_index: int, try_number: int) -> dict[str, Any] | None:
        try:
            ti = self.window(run_id, map_index)
        except AirflowStackError:  # not mapped yet: plan is still running
            return None
        return ti if ti["state"] == "running" and ti["try_number"] == try_number and ti["pid"] else None

    def try_when(self, run_id: str, map_index: int, try_number: int, moment: Callable[[str, int], bool]) -> Any:
        """The window's task instance once ``try_number`` runs and ``moment(prefix, map_index)`` holds."""
        prefix = self.prefixes[run_id]

        def check() -> dict[str, Any] | None:
            ti = self.running_try(run_id, map_index, try_number)
            return ti if ti and moment(prefix, map_index) else None

        # A retry's moment comes after the heartbeat timeout, Airflow's detection and a new task process: time
        # a loaded 2-core machine can double.
        return self.when(f"window {map_index + 1}, try {try_number}, at {moment.__name__}", check, timeout=300)

    def when(self, what: str, check: Callable[[], Any], timeout: float = 120) -> Any:
        return self.airflow.wait_for(what, check, timeout=timeout, every=0.1)

    def lease_holder(self, prefix: str) -> str:
        body = self.s3.get_object(Bucket=self.bucket, Key=f"{prefix}/{ROOT}/_lease.json")["Body"].read()
        return orjson.loads(body)["run_id"]

    def objects(self, prefix: str) -> dict[str, bytes]:
        return window_objects(self.bucket, f"{prefix}/")


@pytest.fixture(scope="module")
def undisturbed(faults) -> dict[str, bytes]:
    """The output of a run nothing disturbed, its records checked against the documents as loaded."""
    run, docs = faults
    assert run.finished(run.trigger("undisturbed")) == "success"
    objects = run.objects("undisturbed")
    records = decode_records({key: data for key, data in objects.items() if "/dt=" in key})
    expected = expected_records(docs)
    assert len(records) == len(expected) == 2600
    assert all(record["message"] == expected[record["message_id"]]["message"] for record in records)
    assert all(record["history"] == expected[record["message_id"]]["history"] for record in records)
    assert len([key for key in objects if key.endswith(".jsonl")]) == 6  # three parts a window
    return objects


def _stat(pid: int) -> list[str]:
    """``/proc/<pid>/stat`` after the command name: state, parent pid, ...; empty once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return []


def _kill(pid: int, sig: int = signal.SIGKILL) -> None:
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        assert b"airflow" in cmdline.read(), f"pid {pid} is not an Airflow task process"
    os.kill(pid, sig)


def _overlapping_tries(tries: list[dict[str, Any]]) -> list[tuple[int, int]]:
    spans = sorted(
        (datetime.fromisoformat(t["start_date"]), datetime.fromisoformat(t["end_date"]), t["try_number"])
        for t in tries
        if t["start_date"] and t["end_date"]
    )
    return [(a[2], b[2]) for a, b in itertools.pairwise(spans) if b[0] < a[1]]


def test_a_task_killed_mid_part_is_retried_and_one_killed_past_its_retries_completes_once_cleared(faults, undisturbed):
    run, _ = faults
    run_id = run.trigger("killed")
    # Each kill lands while the window's second part is an open multipart upload. The first window is killed
    # once, and its retry completes it; the last on every try (the DAG gives extract 2 retries), so the run fails.
    kills = {0: [1], 1: [1, 2, 3]}  # map index: the tries still to kill

    def kill_the_next_due() -> bool:
        for map_index, tries in kills.items():
            ti = run.running_try(run_id, map_index, tries[0]) if tries else None
            if ti and run.mid_part("killed", map_index):
                _kill(ti["pid"])
                tries.pop(0)
                assert run.lease_holder("killed") == run_id  # the run keeps the lease through the kills
        return not any(kills.values())

    run.when("every kill", kill_the_next_due, timeout=300)
    assert run.finished(run_id) == "failed"
    assert (run.window(run_id, 0)["state"], run.window(run_id, 0)["try_number"]) == ("success", 2)
    assert (run.window(run_id, 1)["state"], run.window(run_id, 1)["try_number"]) == ("failed", 3)
    assert not any(key.endswith(f"{FOLDERS[1]}_manifest.json") for key in run.objects("killed"))
    # What the user sees: the mapped windows, the retried one by its name, the killed one failed. Airflow 3.3.1
    # shows that one by its map index only: the task sends its name when it starts, but the supervisor reports
    # the kill with no name, which the API server stores over it. A later success names it again.
    page = f"/dags/es_backfill/runs/{quote(run_id)}/tasks/extract/mapped"
    dom = render_ui_page(run.airflow, page, "ui-killed-window")
    assert "2024-03-01 00:00 → 2024-03-02 00:00" in dom, f"see {ARTIFACTS}/ui-killed-window.png"
    assert run.window(run_id, 1)["rendered_map_index"] == "1"  # the REST API too

    cleared = run.airflow.api(
        "POST",
        "/dags/es_backfill/clearTaskInstances",
        {"dry_run": False, "dag_run_id": run_id, "task_ids": [["extract", 1]], "include_downstream": True,
         "only_failed": False},
    )  # fmt: skip
    assert {(t["task_id"], t["map_index"]) for t in cleared["task_instances"]} == {("extract", 1), ("summarise", -1)}
    assert run.finished(run_id) == "success"
    assert run.window(run_id, 1)["rendered_map_index"] == "2024-03-02 00:00 → 2024-03-03 00:00"
    assert run.open_uploads("killed") == []  # the killed tries' uploads were aborted by the tries after them
    assert run.objects("killed") == undisturbed


def test_the_scheduler_killed_and_restarted_while_windows_run(faults, undisturbed):
    run, _ = faults
    run_id = run.trigger("scheduler")
    run.when("a window mid-part", lambda: run.mid_part("scheduler", 0) or run.mid_part("scheduler", 1))
    run.airflow.kill("scheduler")
    time.sleep(5)
    run.airflow.start("scheduler")
    wait_healthy(run.airflow)
    assert run.finished(run_id) == "success"
    for map_index in (0, 1):
        assert _overlapping_tries(run.tries(run_id, map_index)) == []  # no window ran twice at once
    assert run.objects("scheduler") == undisturbed


def test_s3_unreachable_past_the_clients_retries_fails_the_window_cleanly_and_its_retry_completes_it(
    faults, undisturbed
):
    run, _ = faults
    run_id = run.trigger("outage")
    run.try_when(run_id, 0, 1, run.mid_part)
    run.s3_proxy.add_fault(lambda request: True, drop(), times=None)  # every S3 connection dropped
    try:
        run.when("the window's first try to give up", lambda: run.window(run_id, 0)["try_number"] > 1
                 or run.window(run_id, 0)["state"] != "running", timeout=300)  # fmt: skip
    finally:
        run.s3_proxy.clear_faults()
    assert not any(key.endswith(f"{FOLDERS[0]}_manifest.json") for key in run.objects("outage"))
    assert run.finished(run_id) == "success"
    assert run.window(run_id, 0)["try_number"] >= 2
    assert run.open_uploads("outage") == []
    assert run.objects("outage") == undisturbed


def test_the_cluster_restarted_mid_window(faults, undisturbed):
    run, _ = faults
    run_id = run.trigger("restart")
    run.try_when(run_id, 0, 1, run.mid_part)
    run.node.restart()  # its points in time are gone with it
    assert run.finished(run_id) == "success"
    assert run.open_uploads("restart") == []
    assert run.objects("restart") == undisturbed


def test_a_worker_paused_past_its_heartbeat_timeout_writes_nothing_over_its_retry(faults, undisturbed):
    run, _ = faults
    run_id = run.trigger("paused")
    # Paused between parts, it wakes with lines in memory and goes on to write its next part.
    paused = run.try_when(run_id, 0, 1, run.between_parts)
    task_pid = paused["pid"]
    supervisor_pid = int(_stat(task_pid)[1])
    _kill(supervisor_pid, signal.SIGSTOP)  # the worker as a whole stops: no heartbeat, no writes
    _kill(task_pid, signal.SIGSTOP)
    try:
        retry = run.try_when(run_id, 0, 2, run.mid_part)  # Airflow gave try 1 up; try 2 claimed the window
        assert retry["pid"] != task_pid
        # The task wakes while its supervisor, which would kill it at its next heartbeat, still sleeps: as a worker
        # cut off from the API server but not from S3 would, it goes on writing until it checks its claim.
        os.kill(task_pid, signal.SIGCONT)
        assert run.finished(run_id) == "success"
    finally:
        for pid in (task_pid, supervisor_pid):
            if _stat(pid):
                os.kill(pid, signal.SIGCONT)
    run.when("try 1 to log why it stopped", lambda: "try 1 stops writing" in run.log(run_id, 0, 1), timeout=60)
    assert run.open_uploads("paused") == []
    assert run.objects("paused") == undisturbed  # nothing of try 1's, and no lease taken again after the run
