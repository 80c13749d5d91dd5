"""The SigV4-verifying proxy: opensearch-py's AWS signers against a tiny echo server (no OpenSearch, no AWS)."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import boto3
import botocore.auth
import pytest
from botocore.credentials import Credentials, ReadOnlyCredentials, RefreshableCredentials
from opensearchpy import (
    OpenSearch,
    RequestsAWSV4SignerAuth,
    RequestsHttpConnection,
    Urllib3AWSV4SignerAuth,
    Urllib3HttpConnection,
)
from opensearchpy.exceptions import AuthorizationException

from include.dev.servers.faultproxy import FaultProxy, es_429
from include.dev.servers.sigv4 import (
    PRUNE_AFTER_S,
    KeyRing,
    SigV4Verifier,
    airflow_connection_json,
    credential_process_command,
    main,
    write_aws_config,
)
from tests.unit.echo_server import EchoServer, running_echo_server

REGION = "eu-west-1"
ACCESS_KEY = "ASIATESTSTATICKEY001"
SECRET_KEY = "static/secret+key0123456789abcdefghijklm"
TOKEN = "static-session-token/with+base64=="
PROFILE = "sigv4-test"

# --------------------------------------------------------------------------- the fake upstream


@pytest.fixture(scope="module")
def _servers() -> Iterator[tuple[EchoServer, FaultProxy]]:
    """One echo server and one proxy in front of it for the module: stopping a proxy takes a poll interval."""
    with running_echo_server() as echo, FaultProxy(echo.url) as running:
        yield echo, running


@pytest.fixture
def upstream(_servers: tuple[EchoServer, FaultProxy]) -> EchoServer:
    server = _servers[0]
    server.received.clear()
    return server


@pytest.fixture
def ring(tmp_path: Path) -> KeyRing:
    keys = KeyRing(tmp_path / "ring.json")
    keys.add(ACCESS_KEY, SECRET_KEY, TOKEN)
    return keys


@pytest.fixture
def verifier(ring: KeyRing) -> SigV4Verifier:
    return SigV4Verifier(ring, region=REGION, service="es")


@pytest.fixture
def proxy(_servers: tuple[EchoServer, FaultProxy], upstream: EchoServer, verifier: SigV4Verifier) -> FaultProxy:
    """The module's proxy with a fresh log and no fault rules, gated by this test's verifier."""
    running = _servers[1]
    running.clear_faults()
    running.reset_log()
    running.gate = verifier
    return running


# --------------------------------------------------------------------------- clients

SIGNERS = {
    "requests": (RequestsHttpConnection, RequestsAWSV4SignerAuth),
    "urllib3": (Urllib3HttpConnection, Urllib3AWSV4SignerAuth),
}


def _client(url: str, credentials: Any, connection: str = "urllib3", service: str = "es") -> OpenSearch:
    connection_class, signer = SIGNERS[connection]
    auth = signer(credentials, REGION, service) if credentials is not None else None
    return OpenSearch(hosts=[url], http_auth=auth, connection_class=connection_class, max_retries=0, timeout=10)


def _static(secret: str = SECRET_KEY, token: str | None = TOKEN, access_key: str = ACCESS_KEY) -> Credentials:
    return Credentials(access_key, secret, token)


def _refusal(call: Callable[[], Any]) -> str:
    """The message of the 403 that ``call`` ends in."""
    with pytest.raises(AuthorizationException) as caught:
        call()
    assert caught.value.status_code == 403
    return caught.value.info["message"]


# --------------------------------------------------------------------------- signed requests pass

# (method, path, query params, body): what a backfill sends, with the query strings it uses.
REQUESTS = {
    "get_root": ("GET", "/", None, None),
    "get_with_filter_path": (
        "GET",
        "/_cluster/health",
        {"filter_path": "status,number_of_nodes", "wait_for_status": "yellow"},
        None,
    ),
    "get_with_body": ("GET", "/logs/_count", {"ignore_unavailable": "true"}, {"query": {"match_all": {}}}),
    "post_search_scroll": (
        "POST",
        "/logs-2024.*,archive/_search",
        {"scroll": "1m", "size": "500", "filter_path": "hits.hits._id,hits.hits._source.@timestamp,_scroll_id"},
        {"query": {"range": {"@timestamp": {"gte": "2024-01-01T00:00:00Z", "lt": "2024-01-02"}}}, "sort": ["_doc"]},
    ),
    "post_create_pit_without_body": ("POST", "/logs/_search/point_in_time", {"keep_alive": "1m"}, None),
    "post_pit_search": ("POST", "/_search", {"filter_path": "pit_id,hits.hits._id"}, {"pit": {"id": "a+b/c=="}}),
    "delete_pit_with_body": ("DELETE", "/_search/point_in_time", None, {"pit_id": ["a+b/c=="]}),
    "delete_scroll_with_query": ("DELETE", "/_search/scroll/FGluY2x1ZGVfY29udGV4dA==", {"pretty": "true"}, None),
}


@pytest.mark.parametrize("connection", SIGNERS)
@pytest.mark.parametrize("case", REQUESTS)
def test_requests_signed_by_opensearch_py_pass_and_reach_the_upstream(proxy, upstream, verifier, connection, case):
    method, path, params, body = REQUESTS[case]
    client = _client(proxy.url, _static(), connection)

    echo = client.transport.perform_request(method, path, params=params, body=body)

    assert echo["method"] == method
    assert echo["target"] == (f"{path}?{urlencode(params)}" if params else path)
    assert json.loads(echo["body"] or "null") == body
    assert [r.refused for r in proxy.requests] == [None]
    assert verifier.accepted_keys == [ACCESS_KEY]
    assert [(r.method, r.target) for r in upstream.received] == [(method, echo["target"])]


@pytest.mark.parametrize("connection", SIGNERS)
def test_api_methods_with_quoted_paths_and_list_params_pass(proxy, verifier, connection):
    client = _client(proxy.url, _static(), connection)

    client.info()
    client.search(
        index=["logs-2024.01.*", "<logs-{now/d}>"],
        body={"query": {"match_all": {}}},
        scroll="1m",
        _source_includes=["a", "b.c"],
        track_total_hits=False,
    )
    client.clear_scroll(scroll_id="DXF1ZXJ5QW5kRmV0Y2gBAAAAAAAAAD4WYm9laVYtZndUQlNsdDcwakFMNjU1QQ==")
    client.indices.delete(index="old-index")

    assert [(r.method, r.path, r.query, r.refused) for r in proxy.requests] == [
        ("GET", "/", "", None),
        (
            "POST",
            "/logs-2024.01.*,%3Clogs-%7Bnow%2Fd%7D%3E/_search",
            "_source_includes=a%2Cb.c&scroll=1m&track_total_hits=false",
            None,
        ),
        ("DELETE", "/_search/scroll", "", None),  # the scroll id goes in the body
        ("DELETE", "/old-index", "", None),
    ]
    assert verifier.accepted_keys == [ACCESS_KEY] * 4


def test_a_long_term_key_passes_without_a_token_and_is_refused_with_one(proxy, ring, verifier):
    ring.add("AKIALONGTERMKEY00001", "long-term-secret")

    _client(proxy.url, _static("long-term-secret", None, "AKIALONGTERMKEY00001")).info()
    message = _refusal(_client(proxy.url, _static("long-term-secret", "a-token", "AKIALONGTERMKEY00001")).info)

    assert verifier.accepted_keys == ["AKIALONGTERMKEY00001"]
    assert message == "X-Amz-Security-Token sent with long-term key AKIALONGTERMKEY00001, which has no session token"


# --------------------------------------------------------------------------- what is refused


@pytest.mark.parametrize("connection", SIGNERS)
def test_an_unsigned_request_is_refused_as_missing_authorization(proxy, upstream, connection):
    message = _refusal(_client(proxy.url, None, connection).info)

    assert message.startswith("missing Authorization header")
    assert proxy.requests[0].status == 403
    assert proxy.requests[0].injected == "gate"
    assert proxy.requests[0].refused == message
    assert upstream.received == []


@pytest.mark.parametrize("connection", SIGNERS)
def test_a_wrong_secret_is_refused_as_a_signature_mismatch_without_naming_secrets(proxy, upstream, connection):
    wrong = "wrong/secret+key0123456789abcdefghijklmn"

    message = _refusal(lambda: _client(proxy.url, _static(secret=wrong), connection).search(index="logs", body={}))

    assert message.startswith(f"signature mismatch for access key {ACCESS_KEY}")
    assert wrong not in message and SECRET_KEY not in message and TOKEN not in message
    assert upstream.received == []


def test_an_unknown_access_key_is_refused(proxy):
    message = _refusal(_client(proxy.url, _static(access_key="ASIANOBODYKNOWSTHIS1")).info)

    assert message == "unknown access key ASIANOBODYKNOWSTHIS1"


def test_a_stale_request_is_refused(proxy, ring):
    proxy.gate = SigV4Verifier(ring, region=REGION, clock=lambda: time.time() + 600)

    message = _refusal(_client(proxy.url, _static()).info)

    assert re.fullmatch(
        r"stale request: X-Amz-Date \d{8}T\d{6}Z is 60[01] s from the proxy's clock \(at most 300 s allowed\)", message
    )


def test_a_request_signed_two_minutes_ago_passes_within_the_allowed_skew(proxy, verifier, monkeypatch):
    signed_at = botocore.auth.get_current_datetime() - dt.timedelta(minutes=2)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: signed_at)

    _client(proxy.url, _static()).info()

    assert verifier.accepted_keys == [ACCESS_KEY]


def test_an_expired_key_is_refused(proxy, ring):
    ring.add("ASIAEXPIREDKEY000001", SECRET_KEY, TOKEN, expires_at=time.time() - 5)

    message = _refusal(_client(proxy.url, _static(access_key="ASIAEXPIREDKEY000001")).info)

    assert message.startswith("expired access key ASIAEXPIREDKEY000001: expired 5.")
    assert message.endswith("s ago (grace 1 s)")


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (None, f"missing X-Amz-Security-Token for session key {ACCESS_KEY}"),
        ("someone-elses-token", f"wrong X-Amz-Security-Token for session key {ACCESS_KEY}"),
    ],
    ids=["missing", "wrong"],
)
def test_a_session_key_needs_its_own_token(proxy, token, reason):
    message = _refusal(_client(proxy.url, _static(token=token)).info)

    assert message == reason


@pytest.mark.parametrize(("region", "service"), [("us-east-1", "es"), (REGION, "aoss")])
def test_a_signature_for_another_region_or_service_is_refused(proxy, region, service):
    auth = Urllib3AWSV4SignerAuth(_static(), region, service)
    client = OpenSearch(hosts=[proxy.url], http_auth=auth, max_retries=0)

    message = _refusal(client.info)

    assert message.endswith(f"/{region}/{service}/aws4_request is not for region {REGION} and service es")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"body": b'{"query":{"match_none":{}}}'}, "X-Amz-Content-SHA256 is not the SHA-256 of the body"),
        ({"target": "/logs/_search?scroll=1m&size=10000"}, "signature mismatch"),
        ({"method": "DELETE"}, "signature mismatch"),
        ({"host": "search-domain.eu-west-1.es.amazonaws.com"}, "signature mismatch"),
    ],
    ids=["body", "query", "method", "host"],
)
def test_a_request_changed_after_signing_is_refused(proxy, upstream, change, reason):
    signed = {"method": "POST", "target": "/logs/_search?scroll=1m&size=500", "body": b'{"query":{"match_all":{}}}'}
    headers = Urllib3AWSV4SignerAuth(_static(), REGION)(signed["method"], proxy.url + signed["target"], signed["body"])
    sent = {**signed, "host": f"127.0.0.1:{proxy.port}", **change}

    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    connection.request(sent["method"], sent["target"], sent["body"], {**headers, "Host": sent["host"]})
    response = connection.getresponse()
    message = json.loads(response.read())["message"]
    connection.close()

    assert response.status == 403
    assert message.startswith(reason)
    assert upstream.received == []


def test_the_gate_runs_before_fault_rules_and_refusals_do_not_count_for_them(proxy, upstream):
    rule = proxy.add_fault("GET /$", es_429())

    _refusal(_client(proxy.url, None).info)
    with pytest.raises(Exception, match="429"):
        _client(proxy.url, _static()).info()

    assert [(r.status, r.injected) for r in proxy.requests] == [(403, "gate"), (429, "es_429")]
    assert rule.matched == 1
    assert upstream.received == []


# --------------------------------------------------------------------------- rotating credentials


@pytest.fixture
def aws_profile(tmp_path: Path, ring: KeyRing, monkeypatch: pytest.MonkeyPatch) -> str:
    """An AWS config file whose profile gets a fresh 3 s session key from the ring's credential process (a
    shorter one can expire before botocore reads it when the process starts slowly on a loaded machine)."""
    config = write_aws_config(
        tmp_path / "aws-config",
        profile=PROFILE,
        credential_process=credential_process_command(ring.path, ttl_s=3),
        region=REGION,
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    return PROFILE


def test_the_credential_process_prints_botocore_json_and_records_the_key(ring, capsys):
    before = time.time()

    assert main(["issue", "--ring", str(ring.path), "--ttl-s", "30"]) == 0

    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"Version", "AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"}
    assert printed["Version"] == 1
    assert printed["Expiration"].endswith("Z")
    key = ring.get(printed["AccessKeyId"])
    assert key is not None and key.access_key.startswith("ASIA")
    assert (key.secret_key, key.token) == (printed["SecretAccessKey"], printed["SessionToken"])
    assert key.expires_at is not None and before + 30 <= key.expires_at <= time.time() + 30


def test_adding_a_key_drops_keys_expired_for_longer_than_the_prune_horizon(ring):
    ring.add("ASIALONGEXPIRED00001", "s", "t", expires_at=time.time() - PRUNE_AFTER_S - 1)
    ring.add("ASIAJUSTEXPIRED00001", "s", "t", expires_at=time.time() - PRUNE_AFTER_S + 60)

    issued = ring.issue(ttl_s=60)

    assert set(KeyRing(ring.path).keys()) == {ACCESS_KEY, "ASIAJUSTEXPIRED00001", issued.access_key}


def test_rotating_credentials_keep_passing_while_expired_keys_are_refused(proxy, ring, verifier, aws_profile):
    verifier.expiry_grace_s = 0.5  # waiting out the first key's expiry takes the key's 3 s and this
    credentials = boto3.session.Session(profile_name=aws_profile).get_credentials()
    assert isinstance(credentials, RefreshableCredentials)
    assert credentials.method == "custom-process"
    client = _client(proxy.url, credentials, "requests")

    for _ in range(3):
        client.info()  # every request refreshes: the key expires well inside botocore's 15-minute window
    first = verifier.accepted_keys[0]
    first_key = ring.get(first)
    assert first_key is not None and first_key.expires_at is not None
    time.sleep(max(0.0, first_key.expires_at + verifier.expiry_grace_s + 0.05 - time.time()))
    client.info()
    old = ReadOnlyCredentials(first, first_key.secret_key, first_key.token)
    message = _refusal(_client(proxy.url, old).info)

    assert len(set(verifier.accepted_keys)) == 4
    assert all(key.startswith("ASIA") for key in verifier.accepted_keys)
    assert message.startswith(f"expired access key {first}")
    assert [r.status for r in proxy.requests] == [200, 200, 200, 200, 403]


def test_an_airflow_aws_connection_with_the_profile_gives_refreshing_credentials(
    proxy, ring, verifier, aws_profile, monkeypatch
):
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    monkeypatch.setenv("AIRFLOW_CONN_SIGV4_TEST", airflow_connection_json(aws_profile, REGION))

    session = AwsBaseHook(aws_conn_id="sigv4_test", client_type="sts").get_session()
    credentials = session.get_credentials()
    first, second = credentials.get_frozen_credentials(), credentials.get_frozen_credentials()
    _client(proxy.url, credentials).info()

    assert session.region_name == REGION
    assert isinstance(credentials, RefreshableCredentials)
    assert first.access_key != second.access_key
    assert {first.access_key, second.access_key} <= set(ring.keys())
    assert verifier.accepted_keys[0] not in {ACCESS_KEY, first.access_key, second.access_key}
