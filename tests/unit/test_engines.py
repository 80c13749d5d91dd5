"""Which reader a cluster gets, and how a connection's fields become settings (no cluster needed)."""

from __future__ import annotations

import json

import pytest

from es_backfill.config import ConfigError
from es_backfill.engines import UnsupportedEngine, describe_cluster
from es_backfill.hooks import settings_from_connection


def _root(number: str, distribution: str | None = None, tagline: str = "You Know, for Search") -> dict:
    version = {"number": number, **({"distribution": distribution} if distribution else {})}
    return {"cluster_uuid": "u1", "version": version, "tagline": tagline}


@pytest.mark.parametrize(
    ("root", "product", "strategy"),
    [
        (_root("9.5.4"), "elasticsearch", "point_in_time+_shard_doc"),
        (_root("8.19.21"), "elasticsearch", "point_in_time+_shard_doc"),
        (_root("7.17.29"), "elasticsearch", "point_in_time+_shard_doc"),
        (_root("7.16.3"), "elasticsearch", "scroll"),
        (_root("7.10.2"), "elasticsearch", "scroll"),
        (_root("3.3.2", "opensearch", "The OpenSearch Project: https://opensearch.org/"), "opensearch",
         "point_in_time+_shard_doc"),
        (_root("3.2.0", "opensearch"), "opensearch", "point_in_time+unique_sort"),
        (_root("2.19.6", "opensearch"), "opensearch", "point_in_time+unique_sort"),
        (_root("2.4.0", "opensearch"), "opensearch", "point_in_time+unique_sort"),
        (_root("2.3.0", "opensearch"), "opensearch", "scroll"),
        (_root("1.3.20", "opensearch"), "opensearch", "scroll"),
    ],
)  # fmt: skip
def test_the_read_strategy_follows_engine_and_version(root, product, strategy):
    cluster = describe_cluster(root)
    assert (cluster.product, cluster.strategy, cluster.cluster_uuid) == (product, strategy, "u1")


@pytest.mark.parametrize(
    ("root", "message"),
    [
        (_root("7.9.3"), "older than 7.10, the oldest version supported"),
        (_root("6.8.23"), "older than 7.10"),
        (_root("10.0.0"), "newer than the versions tested"),
        (_root("4.0.0", "opensearch"), "newer than the versions tested"),
        (_root("9.0.0", tagline="Welcome to Solr"), "does not describe Elasticsearch or OpenSearch"),
        ({"status": "ok"}, "names no version"),
    ],
)
def test_engines_that_cannot_be_read_safely_are_refused_with_what_to_do(root, message):
    with pytest.raises(UnsupportedEngine, match=message):
        describe_cluster(root)


def _settings(extra: dict, login: str | None = None, password: str | None = None, **fields):
    defaults = {"host": "search.example.com", "port": 9243, "schema": "https"}
    return settings_from_connection(
        "es_conn", login=login, password=password, extra=extra, request_timeout_s=30, **{**defaults, **fields}
    )


def test_each_auth_kind_becomes_its_settings_and_no_secret_shows_in_repr():
    basic = _settings({}, login="reader", password="s3cret-pw")
    api_key = _settings({"api_key": "s3cret-key"})
    bearer = _settings({"auth": "bearer", "token": "s3cret-token"})
    assert basic.basic_auth == ("reader", "s3cret-pw") and basic.auth_kind == "basic"
    assert api_key.api_key == "s3cret-key" and api_key.auth_kind == "api_key"
    assert bearer.bearer_token == "s3cret-token" and bearer.auth_kind == "bearer"
    assert basic.url == "https://search.example.com:9243"
    assert not any("s3cret" in repr(s) for s in (basic, api_key, bearer))


def test_tls_options_pass_through_and_verify_certs_must_be_a_boolean():
    settings = _settings({"verify_certs": False, "ca_certs": "/etc/ca.pem", "client_cert": "/c", "client_key": "/k"})
    assert (settings.verify_certs, settings.ca_certs, settings.client_cert, settings.client_key) == (
        False, "/etc/ca.pem", "/c", "/k"
    )  # fmt: skip
    with pytest.raises(ConfigError, match="verify_certs must be true or false"):
        _settings({"verify_certs": "false"})


@pytest.mark.parametrize(
    ("extra", "fields", "message"),
    [
        ({"auth": "kerberos"}, {}, "auth must be one of basic, api_key, bearer, aws_sigv4, not 'kerberos'"),
        ({"auth": "api_key"}, {}, "auth api_key needs the key in extra api_key"),
        ({"auth": "bearer"}, {}, "auth bearer needs the token in extra token"),
        ({"auth": "aws_sigv4", "service": "aoss"}, {}, "OpenSearch Serverless collections"),
        ({}, {"host": None}, "has no host"),
    ],
)
def test_connections_that_cannot_work_are_refused_naming_the_fix(extra, fields, message):
    with pytest.raises(ConfigError, match=message):
        _settings(extra, **fields)


def test_sigv4_takes_the_aws_connections_refreshing_credentials_and_needs_a_region(monkeypatch):
    keys = {"aws_access_key_id": "AKIDEXAMPLE", "aws_secret_access_key": "s3cret-aws"}
    monkeypatch.setenv("AIRFLOW_CONN_SIGNER", json.dumps({"conn_type": "aws", "extra": keys}))
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    with pytest.raises(ConfigError, match='needs the domain\'s region: set "region"'):
        _settings({"auth": "aws_sigv4", "aws_conn_id": "signer"})

    settings = _settings({"auth": "aws_sigv4", "aws_conn_id": "signer", "region": "eu-west-1"})
    assert settings.aws is not None and (settings.aws.region, settings.aws.service) == ("eu-west-1", "es")
    assert settings.aws.credentials.get_frozen_credentials().access_key == "AKIDEXAMPLE"
    assert settings.auth_kind == "aws_sigv4 (es, eu-west-1)" and "s3cret" not in repr(settings)
