"""The DAG under a real scheduler: the pool caps concurrent windows, clearing one map index recovers a run,
the UI names the mapped tasks after their windows, only the run that reconciles announces its output as
an asset event (REST API and the asset's page in the UI), and of two runs of one backfill only one writes.

Airflow (api-server, scheduler, dag-processor, LocalExecutor, PostgreSQL: ``scheduler_stack``, shared with
``test_worker_faults``) runs as users run it; the test drives it only through the REST API and a headless
browser.
"""

from __future__ import annotations

import json
from datetime import datetime
from urllib.parse import quote

import pytest

from include.dev.servers.faultproxy import delay, es_error
from tests.integration.support import (
    ARTIFACTS,
    decode_records,
    expected_records,
    read_objects,
    ready_for_runs,
    render_ui_page,
    source_override,
    utc,
    window_objects,
)

POOL_SLOTS = 2
FAILING_WINDOW = "2024-03-01T18:00:00Z"


@pytest.fixture
def stack(scheduler_stack):
    yield scheduler_stack.airflow, scheduler_stack.es_proxy
    scheduler_stack.es_proxy.clear_faults()


def _intervals(task_instances):
    return [(datetime.fromisoformat(t["start_date"]), datetime.fromisoformat(t["end_date"])) for t in task_instances]


def _max_overlap(intervals) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def test_pool_caps_windows_and_clearing_the_failed_map_index_completes_the_run(stack, seeded, s3_bucket):
    airflow, es_proxy = stack
    names, docs = seeded({"messages": 480, "start": utc(2024, 3, 1), "end": utc(2024, 3, 3)})
    ready_for_runs(airflow, POOL_SLOTS)
    assert airflow.api("GET", "/pools/es_backfill")["slots"] == POOL_SLOTS

    # Each window holds its point in time open a while, so concurrent windows overlap measurably;
    # one window's count keeps failing until we clear it.
    es_proxy.add_fault(r"^POST /m_[^/]+/_pit", delay(1.0), times=None)
    es_proxy.add_fault(
        lambda r: r.path.endswith("/_count") and f'"gte":"{FAILING_WINDOW}"'.encode() in r.body,
        es_error(400, "illegal_argument_exception", "injected"),
        times=None,
    )
    conf = {"start": "2024-03-01", "end": "2024-03-03", "window": "6h", "s3_bucket": s3_bucket, "s3_prefix": "sched",
            "page_size": 100, "source": source_override(names) | {"max_retries": 0}}  # fmt: skip
    run_id = airflow.api("POST", "/dags/es_backfill/dagRuns", {"logical_date": None, "conf": conf})["dag_run_id"]
    run_path = f"/dags/es_backfill/dagRuns/{quote(run_id)}"
    state = airflow.wait_for("the run to finish", lambda: _finished(airflow, run_path), timeout=600)
    assert state == "failed"
    output_uri = f"s3://{s3_bucket}/sched/backfill-20240301T000000Z-20240303T000000Z-6h"
    assert _assets(airflow, output_uri) == []  # a failed run announces no output

    extract = _extract_instances(airflow, run_path)
    assert len(extract) == 8
    assert [t["state"] for t in extract].count("failed") == 1
    failed = next(t for t in extract if t["state"] == "failed")
    assert failed["rendered_map_index"] == "2024-03-01 18:00 → 2024-03-02 00:00"
    assert {t["rendered_map_index"] for t in extract} >= {"2024-03-01 00:00 → 2024-03-01 06:00"}
    assert _max_overlap(_intervals(extract)) == POOL_SLOTS  # windows did run side by side, never more than the pool

    # Clear just that map index (and the summary downstream) through the REST API.
    es_proxy.clear_faults()
    cleared = airflow.api(
        "POST",
        "/dags/es_backfill/clearTaskInstances",
        {"dry_run": False, "dag_run_id": run_id, "task_ids": [["extract", failed["map_index"]]],
         "include_downstream": True, "only_failed": False},
    )  # fmt: skip
    assert {(t["task_id"], t["map_index"]) for t in cleared["task_instances"]} == {
        ("extract", failed["map_index"]),
        ("summarise", -1),
    }
    state = airflow.wait_for("the cleared run to finish", lambda: _finished(airflow, run_path), timeout=300)
    assert state == "success"
    after = _extract_instances(airflow, run_path)
    assert all(t["state"] == "success" for t in after)
    untouched = {t["map_index"]: t["try_number"] for t in extract if t["map_index"] != failed["map_index"]}
    assert {t["map_index"]: t["try_number"] for t in after if t["map_index"] in untouched} == untouched

    records = decode_records(read_objects(s3_bucket, "sched/"))
    assert sorted(r["message_id"] for r in records) == sorted(expected_records(docs))

    (asset,) = _assets(airflow, output_uri)
    events = airflow.api("GET", f"/assets/events?asset_id={asset['id']}")["asset_events"]
    assert [(e["source_dag_id"], e["source_run_id"], e["source_task_id"]) for e in events] == [
        ("es_backfill", run_id, "summarise")
    ]
    extra = events[0]["extra"]
    assert (extra["windows"], extra["written"], extra["failed"], extra["messages"]) == (8, 8, 0, len(records))
    assert extra["run_manifest"] == f"{output_uri}/_run_manifest.json"

    labels = [t["rendered_map_index"] for t in after]
    dom = render_ui_page(airflow, f"/dags/es_backfill/runs/{quote(run_id)}/tasks/extract/mapped", "ui-mapped-extract")
    missing = [label for label in labels if label not in dom]
    assert not missing, f"the UI does not show windows {missing}; see {ARTIFACTS}"
    dom = render_ui_page(airflow, f"/assets/{asset['id']}", "ui-asset")
    assert output_uri in dom, f"the asset's page does not show {output_uri}; see {ARTIFACTS}"


def test_emptied_form_fields_reach_the_dag_as_not_set(stack, seeded, s3_bucket):
    airflow, _ = stack
    names, docs = seeded({"messages": 40, "start": utc(2024, 3, 1), "end": utc(2024, 3, 2)})
    ready_for_runs(airflow, POOL_SLOTS)
    # What the trigger form sends for a name and a filter left empty: "" (the REST API the form posts to).
    conf = {"start": "2024-03-01", "end": "2024-03-02", "s3_bucket": s3_bucket, "s3_prefix": "form",
            "backfill_name": "", "query": "", "source": source_override(names)}  # fmt: skip
    run_id = airflow.api("POST", "/dags/es_backfill/dagRuns", {"logical_date": None, "conf": conf})["dag_run_id"]
    run_path = f"/dags/es_backfill/dagRuns/{quote(run_id)}"
    assert airflow.wait_for("the run to finish", lambda: _finished(airflow, run_path), timeout=300) == "success"
    objects = read_objects(s3_bucket, "form/")
    assert objects and all(k.startswith("form/backfill-20240301T000000Z-20240302T000000Z-1d/") for k in objects)
    assert sorted(r["message_id"] for r in decode_records(objects)) == sorted(expected_records(docs))  # no filter


def test_of_two_runs_of_one_backfill_the_second_is_refused_and_two_backfills_run_side_by_side(stack, seeded, s3_bucket):
    airflow, es_proxy = stack
    names, docs = seeded({"messages": 160, "start": utc(2024, 3, 1), "end": utc(2024, 3, 3)})
    ready_for_runs(airflow, POOL_SLOTS)
    es_proxy.clear_faults()
    es_proxy.add_fault(r"^POST /m_[^/]+/_pit", delay(1.0), times=None)  # runs last long enough to overlap
    conf = {"start": "2024-03-01", "end": "2024-03-03", "window": "12h", "s3_bucket": s3_bucket,
            "page_size": 100, "source": source_override(names)}  # fmt: skip

    def trigger(**overrides) -> str:
        body = {"logical_date": None, "conf": conf | overrides}
        return airflow.api("POST", "/dags/es_backfill/dagRuns", body)["dag_run_id"]

    def states(run_ids: list[str]) -> dict[str, str]:
        paths = {run_id: f"/dags/es_backfill/dagRuns/{quote(run_id)}" for run_id in run_ids}
        return {run_id: airflow.wait_for(f"run {run_id}", lambda p=p: _finished(airflow, p), timeout=300)
                for run_id, p in paths.items()}  # fmt: skip

    # The same backfill twice at once: one run takes the lease in plan, the other is refused there.
    same = states([trigger(s3_prefix="twice"), trigger(s3_prefix="twice")])
    assert sorted(same.values()) == ["failed", "success"]
    refused = next(run_id for run_id, state in same.items() if state == "failed")
    winner = next(run_id for run_id, state in same.items() if state == "success")
    run_path = f"/dags/es_backfill/dagRuns/{quote(refused)}"
    plan_ti = airflow.api("GET", f"{run_path}/taskInstances/plan")
    assert (plan_ti["state"], plan_ti["try_number"]) == ("failed", 1)  # refused at once, not retried
    log = json.dumps(airflow.api("GET", f"{run_path}/taskInstances/plan/logs/1?full_content=true"))
    assert f"run '{winner}'" in log and "another run owns the output of backfill" in log
    assert all(t["state"] == "upstream_failed" for t in _extract_instances(airflow, run_path))

    # What the winner wrote is what one run alone writes; the lease is gone with the run.
    assert list(states([trigger(s3_prefix="once")]).values()) == ["success"]
    assert window_objects(s3_bucket, "twice/") == window_objects(s3_bucket, "once/")
    assert not any(key.endswith("/_lease.json") for key in read_objects(s3_bucket, "twice/"))

    # Two different backfills at once: both complete.
    side = states(
        [trigger(s3_prefix="side", backfill_name="side-a"), trigger(s3_prefix="side", backfill_name="side-b")]
    )
    assert list(side.values()) == ["success", "success"]
    for name in ("side-a", "side-b"):
        records = decode_records(read_objects(s3_bucket, f"side/{name}/"))
        assert sorted(r["message_id"] for r in records) == sorted(expected_records(docs))


def _finished(airflow, run_path: str) -> str | None:
    state = airflow.api("GET", run_path)["state"]
    return state if state in {"success", "failed"} else None


def _extract_instances(airflow, run_path: str) -> list[dict]:
    listing = airflow.api("GET", f"{run_path}/taskInstances?task_id=extract&limit=100")
    return sorted(listing["task_instances"], key=lambda t: t["map_index"])


def _assets(airflow, uri: str) -> list[dict]:
    return [
        a
        for a in airflow.api("GET", f"/assets?only_active=false&uri_pattern={quote(uri)}")["assets"]
        if a["uri"] == uri
    ]


def test_one_conf_file_names_one_root_through_the_rest_api_dag_test_cli_plan_and_verify(
    stack, seeded, s3_bucket, run_backfill, tmp_path, caplog
):
    from es_backfill.cli import main as cli
    from include.dev.servers.airflow_stack import AirflowStackError

    airflow, _ = stack
    names, _ = seeded({"messages": 40, "start": utc(2024, 3, 1), "end": utc(2024, 3, 2)})
    ready_for_runs(airflow, POOL_SLOTS)
    # No s3_prefix and no backfill_name: every reader of this file must fall back the same way.
    conf_file = tmp_path / "conf.json"
    conf_file.write_text(json.dumps({"start": "2024-03-01", "end": "2024-03-02", "s3_bucket": s3_bucket,
                                     "source": source_override(names)}))  # fmt: skip
    conf = json.loads(conf_file.read_text())
    for required in ("s3_bucket", "start", "end"):  # never run on an example value
        with pytest.raises(AirflowStackError, match=required):
            without = {key: value for key, value in conf.items() if key != required}
            airflow.api("POST", "/dags/es_backfill/dagRuns", {"logical_date": None, "conf": without})
    run_id = airflow.api("POST", "/dags/es_backfill/dagRuns", {"logical_date": None, "conf": conf})["dag_run_id"]
    run_path = f"/dags/es_backfill/dagRuns/{quote(run_id)}"
    assert airflow.wait_for("the run to finish", lambda: _finished(airflow, run_path), timeout=300) == "success"
    root = "backfill-20240301T000000Z-20240302T000000Z-1d/"
    written = {k: v for k, v in read_objects(s3_bucket, "").items() if "/dt=" in k}
    assert written and all(key.startswith(root) for key in read_objects(s3_bucket, ""))
    run = run_backfill(json.loads(conf_file.read_text()))  # dag.test: resumes into the same root, skipping all
    assert run.state == "success"
    assert {k: v for k, v in read_objects(s3_bucket, "").items() if "/dt=" in k} == written
    with caplog.at_level("INFO"):
        assert cli(["plan", "--conf", str(conf_file)]) == 0
        assert cli(["verify", "--conf", str(conf_file)]) == 0
    assert "Resuming backfill backfill-20240301T000000Z-20240302T000000Z-1d with its 1 planned windows" in caplog.text
    assert "verified 1 windows: 1 ok, 0 with problems" in caplog.text
