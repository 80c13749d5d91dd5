"""One plan per backfill root: re-plans, the fingerprint, and what verify sees under the root.

A backfill's root (``{s3_prefix}/{backfill_name}/``) only ever holds the current plan's windows: a
re-trigger with settings that shape the output differently (or reading another cluster) is refused
unless ``force`` replaces the whole backfill; settings that do not shape the output resume it; and a
task of a replaced plan writes nothing.
"""

from __future__ import annotations

import json

import orjson
import pytest

from es_backfill.cli import main as cli
from es_backfill.config import defaults_path, from_params, load_defaults
from es_backfill.extract import run_window
from es_backfill.manifest import StalePlanError, write_plan
from es_backfill.sink import ObjectStore
from es_backfill.windows import Window
from include.dev.servers.elasticsearch import elasticsearch_connection_uri
from include.dev.servers.faultproxy import FaultProxy, es_error, status
from tests.integration.support import (
    decode_records,
    expected_records,
    read_objects,
    reader_at,
    s3_client,
    source_override,
    utc,
)

ROOT = "rp/team-backfill/"


def _conf(names, bucket, **overrides):
    conf = {"start": "2024-03-01", "end": "2024-03-03", "s3_bucket": bucket, "s3_prefix": "rp",
            "backfill_name": "team-backfill", "page_size": 100, "source": source_override(names)}  # fmt: skip
    return conf | overrides


def _window_folders(objects: dict[str, bytes]) -> set[str]:
    return {k.rsplit("/", 1)[0] for k in objects if k.endswith("/_manifest.json")}


def _run_manifest(bucket: str) -> dict:
    return orjson.loads(read_objects(bucket, ROOT)[f"{ROOT}_run_manifest.json"])


@pytest.fixture
def command(es_cluster, s3_server, monkeypatch):
    """``es_backfill.cli COMMAND --conf ...`` against the test servers; returns the exit status."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")

    def run(name: str, conf) -> int:
        return cli([name, "--conf", json.dumps(conf), "--es-url", es_cluster.url,
                    "--s3-endpoint-url", s3_server.endpoint_url])  # fmt: skip

    return run


def test_a_replan_with_other_windows_is_refused_naming_the_difference_and_changes_nothing(
    seeded, run_backfill, s3_bucket, command, capsys
):
    names, _ = seeded({"messages": 250, "start": utc(2024, 3, 1), "end": utc(2024, 3, 3)})
    assert run_backfill(_conf(names, s3_bucket)).state == "success"
    before = read_objects(s3_bucket, ROOT)

    assert run_backfill(_conf(names, s3_bucket, window="12h")).state == "failed"
    assert read_objects(s3_bucket, ROOT) == before
    # What the plan task says, from the same code on the command line (a dry run).
    capsys.readouterr()
    assert command("plan", _conf(names, s3_bucket, window="12h")) == 2
    err = capsys.readouterr().err
    assert "was planned with other settings (window '1d' -> '12h')" in err
    assert "set force: true to replace the whole backfill" in err


def test_force_with_balanced_windows_replaces_the_backfill_so_every_message_is_there_once(
    seeded, run_backfill, s3_bucket, command, es_client, es_cluster, s3_server
):
    # Skewed data, so balanced windows cut elsewhere than at midnight.
    busy = [("messages", f"busy-{i}", {"message_id": f"busy-{i}", "@timestamp": f"2024-03-01T{i % 12:02d}:{i:02d}:00Z"})
            for i in range(60)]  # fmt: skip
    names, docs = seeded({"messages": 100, "start": utc(2024, 3, 1), "end": utc(2024, 3, 3)}, busy)
    assert run_backfill(_conf(names, s3_bucket)).state == "success"
    plain = _window_folders(read_objects(s3_bucket, ROOT))

    assert run_backfill(_conf(names, s3_bucket, balance_windows=True, force=True)).state == "success"
    objects = read_objects(s3_bucket, ROOT)
    plan = orjson.loads(objects[f"{ROOT}_plan.json"])
    balanced = {f"{ROOT}dt={w['start'][:10]}/{w['key']}" for w in plan["windows"]}
    assert balanced != plain and _window_folders(objects) == balanced
    assert {"/".join(k.split("/")[:4]) for k in objects if "/dt=" in k} == balanced  # nothing left of the old windows
    records = decode_records(objects)
    assert sorted(r["message_id"] for r in records) == sorted(expected_records(docs))
    assert command("verify", _conf(names, s3_bucket, balance_windows=True)) == 0

    # A task of the first run, cleared now, must not write its window into the replaced backfill.
    old = from_params(_conf(names, s3_bucket), load_defaults(defaults_path())).with_cluster(
        es_client.info()["cluster_uuid"]
    )
    with reader_at(es_cluster.url) as reader, pytest.raises(StalePlanError, match="is not in the current plan"):
        run_window(
            old,
            Window(utc(2024, 3, 1), utc(2024, 3, 2)),
            reader,
            ObjectStore(s3_client(s3_server.endpoint_url), s3_bucket),
        )
    assert read_objects(s3_bucket, ROOT) == objects


def test_verify_reports_objects_the_plan_does_not_account_for_and_a_retrigger_removes_stale_windows(
    seeded, run_backfill, s3_bucket, command, capsys
):
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    names, _ = seeded({"messages": 100, "start": utc(2024, 3, 1), "end": utc(2024, 3, 3)})
    conf = _conf(names, s3_bucket)
    assert run_backfill(conf).state == "success"
    s3 = S3Hook(aws_conn_id="aws_default").get_conn()
    stale = f"{ROOT}dt=2024-02-01/20240201T000000Z_20240202T000000Z/part-00000.jsonl.gz"
    stray = f"{ROOT}notes.txt"
    for key in (stale, stray):
        s3.put_object(Bucket=s3_bucket, Key=key, Body=b"not of this plan")

    assert command("verify", conf) == 1
    out = capsys.readouterr().out
    assert f"backfill: unaccounted object: {stale}" in out and f"backfill: unaccounted object: {stray}" in out
    assert "verified 2 windows: 2 ok, 0 with problems" in out

    assert run_backfill(conf).state == "success"  # resumes, and removes the other plan's window
    keys = set(read_objects(s3_bucket, ROOT))
    assert stale not in keys and stray in keys  # what is not es-backfill output is left alone


def test_a_retrigger_with_other_timeouts_retries_and_keep_alive_resumes_without_rewriting(
    seeded, run_backfill, s3_bucket
):
    names, _ = seeded({"messages": 100, "start": utc(2024, 3, 1), "end": utc(2024, 3, 3)})
    assert run_backfill(_conf(names, s3_bucket)).state == "success"
    source = source_override(names) | {"max_retries": 2, "request_timeout_s": 20, "pit_keep_alive": "1m",
                                       "related_page_size": 500}  # fmt: skip
    assert run_backfill(_conf(names, s3_bucket, page_size=200, source=source)).state == "success"
    run = _run_manifest(s3_bucket)
    assert (run["written"], run["skipped"]) == (0, 2)


def test_manifests_written_from_another_cluster_are_not_trusted(
    seeded, run_backfill, es_client, es_cluster, s3_bucket, monkeypatch, command, capsys
):
    names, _ = seeded({"messages": 100, "start": utc(2024, 3, 1), "end": utc(2024, 3, 3)})
    staging = es_client.info().body | {"cluster_uuid": "staging-cluster-uuid", "cluster_name": "staging"}
    with FaultProxy(es_cluster.url) as proxy:
        proxy.add_fault(lambda r: r.method == "GET" and r.path == "/",
                        status(200, staging, headers={"X-Elastic-Product": "Elasticsearch"}), times=None)  # fmt: skip
        monkeypatch.setenv("AIRFLOW_CONN_ELASTICSEARCH_DEFAULT", elasticsearch_connection_uri(proxy.url))
        assert run_backfill(_conf(names, s3_bucket)).state == "success"  # from "staging"
    monkeypatch.setenv("AIRFLOW_CONN_ELASTICSEARCH_DEFAULT", elasticsearch_connection_uri(es_cluster.url))

    assert run_backfill(_conf(names, s3_bucket)).state == "failed"  # the same backfill, from "production"
    capsys.readouterr()
    assert command("plan", _conf(names, s3_bucket)) == 2
    real = es_client.info()["cluster_uuid"]
    assert f"cluster_uuid 'staging-cluster-uuid' -> '{real}'" in capsys.readouterr().err

    assert run_backfill(_conf(names, s3_bucket, force=True)).state == "success"
    run = _run_manifest(s3_bucket)
    assert (run["written"], run["skipped"]) == (2, 0)


def test_credentials_that_may_not_ask_which_cluster_it_is_are_told_the_privilege_to_grant(
    seeded, es_cluster, s3_server, s3_bucket, command, capsys
):
    names, _ = seeded({"messages": 10, "start": utc(2024, 3, 1), "end": utc(2024, 3, 3)})
    refused = es_error(403, "security_exception", "action [cluster:monitor/main] is unauthorized for user [backfill]")
    with FaultProxy(es_cluster.url) as proxy:
        proxy.add_fault(lambda r: r.method == "GET" and r.path == "/", refused, times=None)
        for name in ("plan", "verify"):
            code = cli([name, "--conf", json.dumps(_conf(names, s3_bucket)), "--es-url", proxy.url,
                        "--s3-endpoint-url", s3_server.endpoint_url])  # fmt: skip
            assert code == 2
            assert "grant the cluster privilege cluster:monitor/main" in capsys.readouterr().err
    assert read_objects(s3_bucket, ROOT) == {}


class ReplanDuringWrite:
    """A boto3 S3 client that, on the window's first part upload, lets another run re-plan the backfill
    (a seam we own: the real S3 server still stores every object)."""

    def __init__(self, client, replan) -> None:
        self._client, self._replan, self.done = client, replan, False

    def __getattr__(self, name):
        return getattr(self._client, name)

    def put_object(self, **kwargs):
        if "/part-" in kwargs["Key"] and not self.done:
            self.done = True
            self._replan()
        return self._client.put_object(**kwargs)


def test_a_window_replanned_away_while_it_runs_leaves_nothing_under_the_root(seeded, es_cluster, s3_server, s3_bucket):
    names, _ = seeded({"messages": 100, "start": utc(2024, 3, 1), "end": utc(2024, 3, 3)})
    defaults = load_defaults(defaults_path())
    config = from_params(_conf(names, s3_bucket), defaults)
    window = Window(utc(2024, 3, 1), utc(2024, 3, 2))
    plain = ObjectStore(s3_client(s3_server.endpoint_url), s3_bucket)
    with reader_at(es_cluster.url) as reader, pytest.raises(StalePlanError):
        source = reader.cluster.to_dict()
        write_plan(plain, config, [window, Window(utc(2024, 3, 2), utc(2024, 3, 3))], source)
        other = from_params(_conf(names, s3_bucket, window="12h"), defaults)
        store = ObjectStore(ReplanDuringWrite(plain.client, lambda: write_plan(plain, other, [], source)), s3_bucket)
        run_window(config, window, reader, store)
    assert [k for k in read_objects(s3_bucket, ROOT) if "/dt=" in k] == []
