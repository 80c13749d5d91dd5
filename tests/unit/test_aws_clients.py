"""The run's S3 and Glue clients take our timeouts and retries, and what the AWS connection's extra sets in
``config_kwargs`` (a proxy, a retry budget) wins over them, as it would for any Amazon provider hook."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from es_backfill.config import from_params, load_defaults
from es_backfill.hooks import glue_catalog, object_store

DEFAULTS = load_defaults(Path(__file__).resolve().parents[2] / "include" / "backfill_defaults.json")
CONF = {"start": "2024-03-01", "end": "2024-03-02", "s3_bucket": "my-bucket", "glue_database": "exports"}


def _connection(monkeypatch: pytest.MonkeyPatch, **extra: object) -> str:
    """A connection of its own for each test, in the environment as Airflow reads it."""
    conn_id = f"aws_clients_{uuid.uuid4().hex[:8]}"
    body = {"conn_type": "aws", "login": "AKIDEXAMPLE", "password": "example",
            "extra": {"region_name": "eu-west-1", **extra}}  # fmt: skip
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(body))
    return conn_id


def _clients(conn_id: str) -> list:
    config = from_params({**CONF, "source": {"aws_conn_id": conn_id}}, DEFAULTS)
    catalog = glue_catalog(config)
    assert catalog is not None
    return [object_store(config).client, catalog.client]


def test_without_config_kwargs_the_clients_have_our_timeouts_and_retries(monkeypatch):
    s3, glue = (client.meta.config for client in _clients(_connection(monkeypatch)))
    # botocore counts the first try in: max_attempts (retries) 8 is 9 attempts in all
    assert (s3.connect_timeout, s3.read_timeout, s3.retries) == (10, 120, {"mode": "standard", "total_max_attempts": 9})
    assert (glue.connect_timeout, glue.read_timeout, glue.retries) == (
        10,
        60,
        {"mode": "standard", "total_max_attempts": 6},
    )


def test_the_connections_config_kwargs_win_and_the_rest_stays_ours(monkeypatch):
    conn_id = _connection(monkeypatch, config_kwargs={"retries": {"mode": "standard", "max_attempts": 3},
                                                      "proxies": {"https": "http://proxy.internal:3128"}})  # fmt: skip
    for client in _clients(conn_id):
        config = client.meta.config
        assert config.retries == {"mode": "standard", "total_max_attempts": 4}
        assert config.proxies == {"https": "http://proxy.internal:3128"}
        assert config.connect_timeout == 10
    assert _clients(conn_id)[0].meta.config.max_pool_connections == 16


def test_a_retry_budget_alone_keeps_standard_mode(monkeypatch):
    conn_id = _connection(monkeypatch, config_kwargs={"retries": {"max_attempts": 1}, "read_timeout": 30})
    for client in _clients(conn_id):
        config = client.meta.config
        assert config.retries == {"mode": "standard", "total_max_attempts": 2}
        assert config.read_timeout == 30 and config.connect_timeout == 10
