"""Shared fixtures: an isolated Airflow home, and the real Elasticsearch and S3 servers.

The servers start once per test session, only when a test asks for them, and a
server that cannot start fails the run loudly: nothing is skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator

import pytest

from include.dev.servers.airflow_env import local_airflow_env

# Airflow reads its configuration on first import, so this happens before any test imports it.
os.environ.update(
    {
        **local_airflow_env(tempfile.mkdtemp(prefix="es-backfill-airflow-")),
        # Failed tasks retry after 1s, 2s... instead of 30s, so dag.test() runs with failures stay short.
        "ES_BACKFILL_RETRY_DELAY_S": "1",
    }
)

from include.dev.servers.elasticsearch import RunningCluster, running_elasticsearch
from include.dev.servers.s3 import RunningS3, aws_connection_uri, running_s3
from include.dev.servers.signals import stop_on_signals


def pytest_configure(config: pytest.Config) -> None:
    """A SIGTERM (``make test`` stopped, or CI cancelling it) ends the run like Ctrl-C: the fixtures' teardown
    stops the servers they started, which run in sessions of their own and would otherwise be left running."""
    stop_on_signals()


def _announce(config: pytest.Config, line: str) -> None:
    """Print past pytest's output capture, so the run's log names the servers it used."""
    capture = config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\n{line}", flush=True)


@pytest.fixture(scope="session")
def es_cluster(pytestconfig: pytest.Config) -> Iterator[RunningCluster]:
    with running_elasticsearch() as cluster:
        _announce(pytestconfig, f"Elasticsearch {cluster.version} at {cluster.url}")
        yield cluster


@pytest.fixture(scope="session")
def es_client(es_cluster: RunningCluster):
    from elasticsearch import Elasticsearch

    with Elasticsearch(es_cluster.url, request_timeout=60) as client:
        yield client


@pytest.fixture(scope="session")
def s3_server(pytestconfig: pytest.Config) -> Iterator[RunningS3]:
    with running_s3() as server:
        _announce(pytestconfig, f"S3 server at {server.endpoint_url}")
        os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = aws_connection_uri(server.endpoint_url)
        yield server
        os.environ.pop("AIRFLOW_CONN_AWS_DEFAULT", None)


@pytest.fixture
def s3_bucket(s3_server: RunningS3) -> str:
    """A new, empty bucket on the S3 server, reached through ``aws_default``."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    name = f"test-{uuid.uuid4().hex[:12]}"
    S3Hook(aws_conn_id="aws_default").create_bucket(bucket_name=name)
    return name


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """A migrated SQLite metadata database, which ``dag.test()`` needs."""
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True, timeout=600)
