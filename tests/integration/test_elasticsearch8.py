"""A production cluster may still run Elasticsearch 8: the 9.x client reaches it with ``compatible_with: 8``."""

from __future__ import annotations

from pathlib import Path

import pytest
from elasticsearch import BadRequestError

from es_backfill.config import from_params, load_defaults
from es_backfill.extract import run_window
from es_backfill.hooks import elasticsearch_client, object_store
from es_backfill.source import EsReader
from es_backfill.windows import Window
from include.datagen import DatasetSpec, generate, load
from include.devservers.elasticsearch import elasticsearch_connection_uri, running_elasticsearch
from tests.integration.support import (
    decode_records,
    expected_records,
    read_objects,
    source_override,
    unique_indices,
    utc,
)

ES8 = "8.19.21"
DEFAULTS = load_defaults(Path(__file__).resolve().parents[2] / "include" / "backfill_defaults.json")


@pytest.fixture(scope="module")
def es8():
    with running_elasticsearch(ES8) as cluster:
        yield cluster


def _connect(monkeypatch, cluster, **extra) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_ES8", elasticsearch_connection_uri(cluster.url, **extra))


def test_plain_9x_client_is_refused_by_elasticsearch_8(es8, monkeypatch):
    _connect(monkeypatch, es8)
    with elasticsearch_client("es8", 30) as es, pytest.raises(BadRequestError, match="compatible-with=9"):
        es.count(index="*")


def test_window_is_copied_from_elasticsearch_8_with_compatible_with_8(es8, monkeypatch, s3_bucket):
    assert es8.version == ES8
    _connect(monkeypatch, es8, compatible_with=8)
    names = unique_indices()
    spec = DatasetSpec(messages=150, start=utc(2024, 3, 1), end=utc(2024, 3, 2), indices=names)
    with elasticsearch_client("es8", 30) as es:
        load(es, spec, chunk_size=100)  # the bulk API (x-ndjson) goes through the same rewrite
        config = from_params(
            {"start": "2024-03-01", "end": "2024-03-02", "s3_bucket": s3_bucket, "s3_prefix": "es8",
             "page_size": 100, "source": source_override(names) | {"es_conn_id": "es8"}},
            DEFAULTS,
        )  # fmt: skip
        result = run_window(
            config, Window(utc(2024, 3, 1), utc(2024, 3, 2)), EsReader(es), object_store("aws_default", s3_bucket)
        )
    assert result.messages == result.es_count == 150
    records = decode_records(read_objects(s3_bucket, "es8/"))
    expected = expected_records(list(generate(spec)))
    assert {r["message_id"]: {k: r[k] for k in ("message", "history", "status", "audit")} for r in records} == expected


def test_plan_tells_how_to_reach_elasticsearch_8(es8, monkeypatch):
    from es_backfill.config import ConfigError
    from es_backfill.plan import check_cluster

    _connect(monkeypatch, es8)
    config = from_params({"start": "2024-03-01", "end": "2024-03-02", "s3_bucket": "unused",
                          "source": {"es_conn_id": "es8"}}, DEFAULTS)  # fmt: skip
    with elasticsearch_client("es8", 30) as es, pytest.raises(ConfigError, match='set "compatible_with": 8'):
        check_cluster(config, EsReader(es))
