"""A newcomer's mistakes stop once, with a message saying what to do: no traceback, nothing written, no retry.

The command line (``plan`` and ``verify``) and the DAG's ``plan`` task, against the suite's real cluster and S3
server: a bucket that does not exist, no AWS credentials, a connection that is not defined, a cluster that does
not answer, a conf file that is missing or not JSON, and a query the cluster rejects (its own reason shown).
"""

from __future__ import annotations

import json

import pytest

from es_backfill.cli import main as cli
from include.dev.servers.ports import free_port
from tests.integration.support import read_objects, source_override


@pytest.fixture
def conf(seeded_small, s3_bucket, es_connection):
    return {"start": "2024-03-01", "end": "2024-03-04", "s3_bucket": s3_bucket, "s3_prefix": "mistakes",
            "source": source_override(seeded_small) | {"max_retries": 1}}  # fmt: skip


def _cli(capsys, *args: str) -> tuple[int, str]:
    code = cli(list(args))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


@pytest.mark.parametrize("command", ["plan", "verify"])
def test_a_bucket_that_does_not_exist(conf, command, capsys):
    code, err = _cli(capsys, command, "--conf", json.dumps(conf | {"s3_bucket": "no-such-bucket-here"}))
    assert code == 2 and "s3_bucket: bucket 'no-such-bucket-here' does not exist: create it, or fix s3_bucket" in err


def test_no_aws_credentials_for_the_command_line(conf, s3_server, monkeypatch, tmp_path, capsys):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    code, err = _cli(capsys, "verify", "--conf", json.dumps(conf), "--s3-endpoint-url", s3_server.endpoint_url)
    assert code == 2 and "no AWS credentials were found" in err and "AWS_ACCESS_KEY_ID" in err
    assert read_objects(conf["s3_bucket"], "") == {}  # nothing written


def test_a_connection_that_is_not_defined(conf, capsys):
    conf["source"]["es_conn_id"] = "no_such_connection"
    code, err = _cli(capsys, "verify", "--conf", json.dumps(conf))
    assert code == 2 and "connection 'no_such_connection' is not defined: create it" in err
    assert read_objects(conf["s3_bucket"], "") == {}  # nothing written


def test_a_cluster_that_does_not_answer_is_named_after_the_retries(conf, capsys):
    url = f"http://127.0.0.1:{free_port()}"
    code, err = _cli(capsys, "plan", "--conf", json.dumps(conf), "--es-url", url)
    assert code == 2 and f"--es-url: {url} did not answer GET / (info still failing after 2 attempts" in err
    assert "check the URL and port" in err
    assert read_objects(conf["s3_bucket"], "") == {}  # nothing written


def test_a_conf_file_that_is_missing_or_not_json_is_named_with_the_line(tmp_path, capsys):
    code, err = _cli(capsys, "plan", "--conf", str(tmp_path / "conf.json"))
    assert code == 2 and f"--conf {tmp_path / 'conf.json'}: cannot read the file (No such file or directory)" in err
    (tmp_path / "conf.json").write_text('{\n  "start": "2024-03-01",\n  "end": 2024-03-04\n}\n')
    code, err = _cli(capsys, "plan", "--conf", str(tmp_path / "conf.json"))
    assert code == 2 and f"{tmp_path / 'conf.json'}: not JSON at line 3, column" in err


def test_a_query_the_cluster_rejects_shows_the_clusters_reason(conf, capsys):
    code, err = _cli(capsys, "plan", "--conf", json.dumps(conf | {"query": {"match_al": {}}}))
    assert code == 2 and "the cluster rejected the query: parsing_exception: Failed to parse (caused by " in err
    assert "unknown field [match_al]" in err  # the cluster's own words for what is wrong
    assert read_objects(conf["s3_bucket"], "") == {}  # nothing written


def test_the_plan_task_stops_once_on_a_missing_bucket_without_retries(conf, run_backfill):
    run = run_backfill(conf | {"s3_bucket": "no-such-bucket-here"})
    assert run.state == "failed"
    plan = next(ti for ti in run.get_task_instances() if ti.task_id == "plan")
    assert plan.state == "failed" and plan.try_number == 1  # AirflowFailException: not retried
    assert read_objects(conf["s3_bucket"], "") == {}  # nothing written anywhere
