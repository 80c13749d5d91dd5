"""Helpers for tests against the real servers: seeded indices, DAG runs, reading the output back."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from include.dev.datagen import DatasetSpec, IndexNames, generate, load
from include.dev.servers.elasticsearch import elasticsearch_connection_uri
from tests.integration.support import unique_indices, utc

S3_CONFIG_KWARGS = {"retries": {"mode": "standard", "max_attempts": 2}}  # the scheduler stack's, in aws_default
HEARTBEAT_TIMEOUT_S = 30  # [scheduler] task_instance_heartbeat_timeout of the scheduler stack (default 300)


@pytest.fixture(scope="session")
def es_connection(es_cluster) -> str:
    """``elasticsearch_default`` pointing at the test cluster, as an Airflow connection env var."""
    os.environ["AIRFLOW_CONN_ELASTICSEARCH_DEFAULT"] = elasticsearch_connection_uri(es_cluster.url)
    return "elasticsearch_default"


@pytest.fixture
def seeded(es_client) -> Callable[..., tuple[IndexNames, list]]:
    """Load a generated dataset (plus extra documents) into fresh indices; return names and documents."""

    def seed(spec_kwargs: dict[str, Any], extra: list[tuple[str, str, dict[str, Any]]] = ()):
        names = unique_indices()
        spec = DatasetSpec(indices=names, **spec_kwargs)
        load(es_client, spec, chunk_size=1000)
        extra = list(extra)
        if extra:
            from elasticsearch import helpers

            helpers.bulk(
                es_client, ({"_index": names.of(r), "_id": i, "_source": s} for r, i, s in extra), refresh=True
            )
        return names, [*generate(spec), *extra]

    return seed


@pytest.fixture(scope="session")
def seeded_small(es_client) -> IndexNames:
    """A small dataset shared by tests that only need indices to exist (bad-conf tests)."""
    names = unique_indices()
    load(es_client, DatasetSpec(messages=50, start=utc(2024, 3, 1), end=utc(2024, 3, 4), indices=names))
    return names


@pytest.fixture(scope="session")
def run_backfill(airflow_db, es_connection, s3_server):
    """Run the DAG through ``dag.test()`` with a conf; return the dag run. Each run parses the DAG afresh:
    a second ``dag.test()`` on the same DAG object would carry the first run's conf into its params."""
    from airflow.dag_processing.dagbag import DagBag

    from include.dev.servers.signals import airflow_in_process

    def run(conf: dict[str, Any]):
        dag = DagBag(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]).get_dag("es_backfill")
        with airflow_in_process():  # a SIGTERM (CI cancelling the run) still stops the session
            return dag.test(run_conf=conf)

    return run


@pytest.fixture(scope="session")
def engine_nodes(pytestconfig) -> Iterator[Callable[[tuple[str, str]], Any]]:
    """The engine nodes of the session, each started once, when a test first asks for it, and stopped at the
    session's end. (pytest keys a parametrized fixture by its parameter's position in each ``parametrize``, so
    the same engine in two lists would otherwise be a second node.)"""
    from include.dev.servers.elasticsearch import running_engine
    from tests.conftest import _announce

    with contextlib.ExitStack() as stack:
        nodes: dict[tuple[str, str], Any] = {}

        def node(key: tuple[str, str]) -> Any:
            if key not in nodes:
                nodes[key] = stack.enter_context(running_engine(*key))
                _announce(pytestconfig, f"{nodes[key].engine} {nodes[key].version} at {nodes[key].url}")
            return nodes[key]

        yield node


@pytest.fixture(scope="session")
def engine(request, engine_nodes):
    """A node of the engine ``request.param`` ((engine, version) from ``ENGINES``); parametrize indirectly."""
    return engine_nodes(tuple(request.param))


@pytest.fixture(scope="session")
def secured_cluster(pytestconfig):
    """OpenSearch with its security plugin, over HTTPS with this run's own CA, started once per session: ``admin``
    seeds, ``backfill_reader`` holds only the role README documents, on the indices ``eng_*`` and ``lp_*``."""
    from include.dev.servers.secured import running_secured_opensearch
    from tests.conftest import _announce

    with running_secured_opensearch(["eng_*", "lp_*"]) as cluster:
        _announce(pytestconfig, f"OpenSearch {cluster.version} (security plugin, HTTPS) at {cluster.url}")
        yield cluster


@dataclass(frozen=True)
class SchedulerStack:
    """The real Airflow of the scheduler-level tests, with the test cluster and S3 each behind a fault proxy."""

    airflow: Any
    es_proxy: Any
    s3_proxy: Any


@pytest.fixture(scope="session")
def scheduler_stack(es_cluster, s3_server) -> Iterator[SchedulerStack]:
    """One Airflow (api-server, scheduler, dag-processor, LocalExecutor, PostgreSQL) for the session: retries
    after 1 s, an S3 request given up after 3 attempts, and a task whose worker stops heartbeating is given up
    after ``HEARTBEAT_TIMEOUT_S``. Each test leaves the proxies without faults."""
    from include.dev.servers.airflow_stack import running_airflow
    from include.dev.servers.faultproxy import FaultProxy
    from include.dev.servers.postgres import running_postgres
    from include.dev.servers.s3 import aws_connection_uri

    with (
        FaultProxy(es_cluster.url) as es_proxy,
        FaultProxy(s3_server.endpoint_url) as s3_proxy,
        running_postgres() as db,
    ):
        env = {
            "AIRFLOW_CONN_ELASTICSEARCH_DEFAULT": elasticsearch_connection_uri(es_proxy.url),
            # 3 attempts per S3 request (not our 9): an S3 outage fails a task in seconds, not minutes.
            "AIRFLOW_CONN_AWS_DEFAULT": aws_connection_uri(s3_proxy.url, S3_CONFIG_KWARGS),
            "ES_BACKFILL_RETRY_DELAY_S": "1",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT_S),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
        }
        with running_airflow(db, env) as airflow:
            yield SchedulerStack(airflow, es_proxy, s3_proxy)
