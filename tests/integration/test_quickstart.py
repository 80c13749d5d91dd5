"""README's Quickstart, run as written: ``make servers`` starts the local servers and writes the files the
Quickstart's second step asks for, ``make airflow`` a real Airflow (api-server, scheduler, dag-processor), each
printing the ``export`` line the Quickstart says to paste; then every shell block of the Quickstart runs
verbatim, in order, in one shell (the dry run, Airflow's connections and pool, the Secrets Manager command, the
trigger, the watch until the run ends, ``make verify``) against them, and the bucket ends holding exactly the
seeded messages. The connection examples are read by our hook into the settings
the Quickstart says they give."""

from __future__ import annotations

import gzip
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import textwrap
import time
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pytest

from include.dev.datagen import SEED_WEEK, DatasetSpec, generate

ROOT = Path(__file__).resolve().parents[2]
SECTION = ROOT.joinpath("README.md").read_text().split("\n## Quickstart", 1)[1].split("\n## ", 1)[0]
# What the Quickstart's commands need of the project folder; the test runs them in a folder of its own.
PROJECT_ENTRIES = (".venv", ".tools", "Makefile", "requirements-dev.lock", "plugins", "include", "dags")
MESSAGES = 600
WATCH_TIMEOUT_S = 600


def fenced(language: str) -> list[str]:
    """The Quickstart's code blocks in ``language``, in order, without their list indentation."""
    return [textwrap.dedent(body) for _, body in re.findall(rf"(?ms)^( *)```{language}\n(.*?)^\1```", SECTION)]


def connection_examples() -> list[dict]:
    """The connection JSON objects of the Quickstart, comments left out."""
    (block,) = fenced("jsonc")
    text = "\n".join(line for line in block.splitlines() if not line.lstrip().startswith("//"))
    decoder, found = json.JSONDecoder(), []
    while text.strip():
        text = text.lstrip()
        obj, end = decoder.raw_decode(text)
        found.append(obj)
        text = text[end:]
    return found


def test_each_connection_example_gives_the_settings_it_promises(monkeypatch):
    from es_backfill.hooks import settings_from_connection

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example")
    settings = [
        settings_from_connection(
            "elasticsearch_default", host=c["host"], port=c["port"], schema=c["schema"], login=c.get("login"),
            password=c.get("password"), extra=c["extra"], request_timeout_s=60,
        )
        for c in connection_examples()
    ]  # fmt: skip
    cloud, self_managed, bearer, amazon = settings
    assert cloud.auth_kind == "api_key" and cloud.url == "https://my-deployment.es.eu-west-1.aws.elastic-cloud.com:443"
    assert self_managed.basic_auth == ("backfill", "...") and self_managed.ca_certs == "/usr/local/airflow/certs/ca.pem"
    assert self_managed.verify_certs and bearer.bearer_token == "..."
    assert amazon.aws is not None and (amazon.aws.region, amazon.aws.service) == ("eu-west-1", "es")


def test_the_quickstart_runs_as_written_on_the_local_servers(tmp_path, monkeypatch):
    workdir = tmp_path / "project"
    workdir.mkdir()
    for entry in PROJECT_ENTRIES:
        (workdir / entry).symlink_to(ROOT / entry)
    # The servers and Airflow get only what the Quickstart gives them, not the suite's connections.
    for name in ("AIRFLOW_CONN_ELASTICSEARCH_DEFAULT", "AIRFLOW_CONN_AWS_DEFAULT"):
        monkeypatch.delenv(name, raising=False)
    with (
        _make("servers", tmp_path / "servers.log", "Ctrl-C stops the servers") as printed,
        _make("airflow", tmp_path / "airflow.log", "Ctrl-C stops Airflow") as airflow,
    ):
        exports = dict(pair.split("=", 1) for pair in shlex.split(printed["export"]))
        subprocess.run(printed["cp"], shell=True, cwd=workdir, check=True, timeout=30)  # noqa: S602 - its own line
        airflow_exports = dict(pair.split("=", 1) for pair in shlex.split(airflow["export"]))
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")} | airflow_exports | exports
        result = subprocess.run(
            ["bash", "-c", _script()], cwd=workdir, env=env, capture_output=True, text=True, timeout=1500
        )
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        output = result.stdout + result.stderr
        assert "Dry run, nothing written" in output, output[-4000:]  # the plan printed its per-window report
        assert "verified 7 windows: 7 ok, 0 with problems" in output, output[-4000:]
        # The query step's DuckDB table: one row per dt, each message once, their counts adding up.
        rows = re.findall(r"│ (2024-03-0\d) │\s+(\d+) │\s+(\d+) │\s+(\d+) │", result.stdout)
        assert len(rows) == 7 and all(messages == ids for _, messages, ids, _ in rows), result.stdout[-3000:]
        assert sum(int(messages) for _, messages, _, _ in rows) == MESSAGES
        records = _records(exports)
        secret = boto3.client("secretsmanager", region_name="eu-west-1", endpoint_url=exports["AWS_ENDPOINT_URL"],
                              aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
        stored = secret.get_secret_value(SecretId="airflow/connections/elasticsearch_default")["SecretString"]
    assert json.loads(stored) == json.loads((workdir / "es_conn.json").read_text())
    spec = DatasetSpec(messages=MESSAGES, start=SEED_WEEK[0], end=SEED_WEEK[1])
    seeded = {doc_id: source for role, doc_id, source in generate(spec) if role == "messages"}
    assert sorted(r["message_id"] for r in records) == sorted(seeded)
    assert all(r["message"] == seeded[r["message_id"]] for r in records)


def _script() -> str:
    """The Quickstart's shell blocks as one script; the watch block is repeated until the run has ended."""
    steps = []
    for block in fenced("sh"):
        if "list-runs" in block:
            block = (
                f"for _ in $(seq {WATCH_TIMEOUT_S // 3}); do\n  runs=$({block.strip()})\n"
                '  grep -qE "success|failed" <<<"$runs" && break\n  sleep 3\ndone\n'
                'echo "$runs"\ngrep -q success <<<"$runs"\n'
            )
        steps.append(block)
    return "set -euo pipefail\n" + "\n".join(steps)


class _make:
    """``make <target>`` (``servers`` or ``airflow``) in its own process group, as README runs it in another shell:
    yields its printed ``export`` line (and ``cp`` line, if it prints one) once it says ``ready``; on exit, SIGTERM
    as from Ctrl-C's neighbour ``kill``, and every server it named must stop answering."""

    def __init__(self, target: str, log: Path, ready: str) -> None:
        self.target, self.log, self.ready = target, log, ready

    def __enter__(self) -> dict[str, str]:
        env = {**os.environ, "SERVERS_MESSAGES": str(MESSAGES)}
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(["make", self.target], cwd=ROOT, env=env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 600
        while self.ready not in (text := self.log.read_text()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                pytest.fail(f"make {self.target} did not get ready:\n{text[-3000:]}")
            time.sleep(1)
        self.urls = re.findall(r"(?:running at|Airflow at) (http://\S+)", text)
        lines = text.splitlines()
        return {
            "export": next(line for line in lines if line.startswith("export "))[len("export ") :],
            "cp": next((line for line in lines if line.startswith("cp ")), ""),
        }

    def __exit__(self, *exc: object) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=120)
        for url in getattr(self, "urls", []):  # every server it started, stopped: their ports refuse connections
            address = urlsplit(url)
            with pytest.raises(ConnectionRefusedError):
                for _ in range(60):
                    socket.create_connection((address.hostname, address.port), timeout=2).close()
                    time.sleep(1)


def _records(exports: dict[str, str]) -> list[dict]:
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=exports["AWS_ENDPOINT_URL"],
                      aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
    records = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="es-backfill-local"):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith(".jsonl.gz"):
                data = gzip.decompress(s3.get_object(Bucket="es-backfill-local", Key=obj["Key"])["Body"].read())
                records += [json.loads(line) for line in data.splitlines()]
    return records


def test_the_quickstart_files_are_kept_out_of_git_as_it_says():
    files = ["es_conn.json", "aws_conn.json", "conf.json"]
    assert all(f"`{name}`" in SECTION for name in files) and "out of git" in SECTION
    ignored = subprocess.run(["git", "check-ignore", *files], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert ignored.stdout.split() == files
