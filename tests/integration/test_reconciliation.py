"""Reconciliation: a window whose written count differs from Elasticsearch's fails the summary, by name, and
emits no asset event; once every window reconciles, the output's asset event carries the run's figures."""

from __future__ import annotations

import orjson

from include.dev.servers.elasticsearch import elasticsearch_connection_uri
from include.dev.servers.faultproxy import FaultProxy, status
from tests.integration.support import asset_events, read_objects, source_override, utc


def test_count_mismatch_fails_the_summary_without_an_asset_event_and_a_retrigger_redoes_it_and_emits_one(
    seeded, run_backfill, es_cluster, s3_bucket, monkeypatch, capfd
):
    names, _ = seeded({"messages": 200, "start": utc(2024, 3, 1), "end": utc(2024, 3, 3)})
    conf = {"start": "2024-03-01", "end": "2024-03-03", "s3_bucket": s3_bucket, "s3_prefix": "rec",
            "page_size": 100, "source": source_override(names)}  # fmt: skip
    with FaultProxy(es_cluster.url) as proxy:
        monkeypatch.setenv("AIRFLOW_CONN_ELASTICSEARCH_DEFAULT", elasticsearch_connection_uri(proxy.url))
        # Elasticsearch "counts" more messages for the second day than the window then reads,
        # as when documents arrive while a window is being copied.
        proxy.add_fault(
            lambda r: r.path.endswith("/_count") and b'"gte":"2024-03-02T00:00:00Z"' in r.body,
            status(200, {"count": 999, "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0}},
                   headers={"X-Elastic-Product": "Elasticsearch"}),
        )  # fmt: skip
        first = run_backfill(conf)
        assert first.state == "failed"
        out, err = capfd.readouterr()
        assert "1 windows wrote a different number of messages than Elasticsearch counts: 2024-03-02 00:00" in out + err
        objects = read_objects(s3_bucket, "rec/")
        run_manifest = orjson.loads(next(v for k, v in objects.items() if k.endswith("_run_manifest.json")))
        assert run_manifest["mismatched_windows"] == ["2024-03-02 00:00 → 2024-03-03 00:00"]
        output = f"s3://{s3_bucket}/rec/backfill-20240301T000000Z-20240303T000000Z-1d"
        assert asset_events(output) == []  # a run that does not reconcile announces nothing

        # The window's manifest records the disagreement, so it is not trusted as complete: a re-trigger redoes it.
        proxy.reset_log()
        second = run_backfill(conf)
        assert second.state == "success"
        # Only the second day's window was read again; the plan probes one point in time on each of the 4 indices.
        assert proxy.count(r"^POST /[^/]+/_pit") == 1 + 4
    run_manifest = orjson.loads(
        next(v for k, v in read_objects(s3_bucket, "rec/").items() if k.endswith("_run_manifest.json"))
    )
    assert (run_manifest["written"], run_manifest["skipped"], run_manifest["mismatched_windows"]) == (1, 1, [])
    (event,) = asset_events(output)
    assert event["run_id"] == second.run_id and event["aliases"] == ["es_backfill_output"]
    extra = event["extra"]
    assert (extra["windows"], extra["written"], extra["skipped"], extra["failed"]) == (2, 1, 1, 0)
    assert extra["messages"] == extra["es_count"] == 200
    assert extra["related"] == run_manifest["related"] and extra["bytes"] == run_manifest["bytes"] > 0
    assert extra["run_manifest"] == f"{output}/_run_manifest.json"
