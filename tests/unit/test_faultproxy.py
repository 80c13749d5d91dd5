"""The fault-injecting proxy, in front of a tiny echo server running in a thread (no external servers)."""

from __future__ import annotations

import http.client
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from include.dev.servers.faultproxy import (
    FaultProxy,
    ProxyRequest,
    RequestRecord,
    delay,
    drop,
    es_429,
    es_503,
    es_pit_lost,
    gateway,
    s3_error,
    status,
)
from include.dev.servers.ports import free_port
from tests.unit.echo_server import EchoServer, running_echo_server

# --------------------------------------------------------------------------- the fake upstream


@pytest.fixture
def upstream() -> Iterator[EchoServer]:
    with running_echo_server() as echo:
        yield echo


@pytest.fixture
def proxy(upstream: EchoServer) -> Iterator[FaultProxy]:
    with FaultProxy(upstream.url) as running:
        yield running


# --------------------------------------------------------------------------- client helpers


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _connect(proxy: FaultProxy) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)


def call(
    target: FaultProxy | http.client.HTTPConnection,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    conn = _connect(target) if isinstance(target, FaultProxy) else target
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return Reply(response.status, response.msg, response.read())
    finally:
        if isinstance(target, FaultProxy):
            conn.close()


def statuses(proxy: FaultProxy, method: str, path: str, n: int) -> list[int]:
    return [call(proxy, method, path).status for _ in range(n)]


# --------------------------------------------------------------------------- forwarding


def test_forwards_get_with_query_and_relays_status_headers_and_body(proxy, upstream):
    reply = call(proxy, "GET", "/logs-2024/_doc/1?routing=a&pretty", headers={"X-Opaque-Id": "job-7"})

    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.headers["X-Elastic-Product"] == "Elasticsearch"
    assert reply.headers.get_all("X-Echo") == ["one", "two"]
    echo = reply.json()
    assert (echo["method"], echo["path"], echo["query"]) == ("GET", "/logs-2024/_doc/1", "routing=a&pretty")
    assert echo["headers"]["x-opaque-id"] == "job-7"
    # The Host header is passed through untouched (S3 signatures cover it).
    assert echo["headers"]["host"] == f"127.0.0.1:{proxy.port}"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_forwards_bodies_for_any_method(proxy, upstream, method):
    body = json.dumps({"query": {"match_all": {}}, "size": 3}).encode() + bytes(range(256))

    reply = call(proxy, method, "/logs/_search", body=body, headers={"Content-Type": "application/json"})

    assert reply.status == 200
    (received,) = upstream.received
    assert (received.method, received.path, received.body) == (method, "/logs/_search", body)
    assert received.headers["content-length"] == str(len(body))


def test_forwards_an_empty_body_with_content_length_zero(proxy, upstream):
    assert call(proxy, "POST", "/_refresh", body=b"").status == 200
    assert upstream.received[0].headers["content-length"] == "0"
    assert upstream.received[0].body == b""


def test_forwards_a_custom_method(proxy, upstream):
    assert call(proxy, "PURGE", "/cache").json()["method"] == "PURGE"


def test_head_relays_headers_without_a_body_and_keeps_the_connection_usable(proxy):
    conn = _connect(proxy)
    try:
        full = call(conn, "GET", "/logs")
        head = call(conn, "HEAD", "/logs")
        after = call(conn, "GET", "/logs")
    finally:
        conn.close()

    assert head.status == 200
    assert head.body == b""
    # The length of the body a GET would get (the echo differs from the GET's only in the method).
    assert int(head.headers["Content-Length"]) == len(full.body.replace(b'"GET"', b'"HEAD"'))
    assert after.status == 200
    assert after.json()["method"] == "GET"


def test_expect_100_continue_is_answered_before_the_body_is_sent(proxy, upstream):
    body = b"x" * 70_000
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(
            b"PUT /bucket/key HTTP/1.1\r\nHost: s3.local\r\nContent-Type: application/octet-stream\r\n"
            b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        interim = b""
        while not interim.endswith(b"\r\n\r\n"):
            chunk = sock.recv(1)
            assert chunk, "proxy closed the connection instead of answering 100 Continue"
            interim += chunk
        assert interim.startswith(b"HTTP/1.1 100")
        sock.sendall(body)
        response = http.client.HTTPResponse(sock)
        response.begin()
        payload = response.read()

    assert response.status == 200
    assert json.loads(payload)["path"] == "/bucket/key"
    (received,) = upstream.received
    assert received.body == body
    assert received.headers["host"] == "s3.local"
    assert "expect" not in received.headers


def test_chunked_request_body_is_forwarded_with_a_content_length(proxy, upstream):
    conn = _connect(proxy)
    try:
        conn.request("POST", "/_bulk", body=iter([b'{"index":{}}\n', b'{"a":1}\n']), encode_chunked=True)
        assert conn.getresponse().read()
    finally:
        conn.close()

    (received,) = upstream.received
    assert received.body == b'{"index":{}}\n{"a":1}\n'
    assert received.headers["content-length"] == str(len(received.body))
    assert "transfer-encoding" not in received.headers


def test_chunked_upstream_response_reaches_the_client_whole(proxy):
    reply = call(proxy, "GET", "/chunked?q=1")

    assert reply.status == 200
    assert reply.json()["path"] == "/chunked"
    assert reply.headers["Content-Length"] == str(len(reply.body))
    assert reply.headers["Transfer-Encoding"] is None


def test_hop_by_hop_request_headers_are_not_forwarded(proxy, upstream):
    call(proxy, "GET", "/", headers={"Connection": "keep-alive, X-Secret-Hop", "X-Secret-Hop": "1", "TE": "trailers"})

    headers = upstream.received[0].headers
    assert not {"connection", "x-secret-hop", "te"} & headers.keys()


def test_upstream_error_statuses_are_relayed_not_counted_as_injected(proxy):
    reply = call(proxy, "GET", "/status/404")

    assert reply.status == 404
    assert reply.json()["path"] == "/status/404"
    assert proxy.requests == [RequestRecord("GET", "/status/404", "", 404, None)]


def test_client_and_upstream_connections_are_kept_alive(proxy, upstream):
    conn = _connect(proxy)
    try:
        replies = [call(conn, "POST", f"/i/_doc/{n}", body=b"{}") for n in range(5)]
    finally:
        conn.close()

    assert [r.status for r in replies] == [200] * 5
    assert len(upstream.peers()) == 1


def test_upstream_closing_its_connection_is_transparent(proxy, upstream):
    conn = _connect(proxy)
    try:
        replies = [call(conn, "GET", path) for path in ("/close", "/a", "/close", "/b")]
    finally:
        conn.close()

    assert [r.status for r in replies] == [200] * 4
    assert [r.json()["path"] for r in replies] == ["/close", "/a", "/close", "/b"]
    assert len(upstream.peers()) == 3  # a new upstream connection after each /close


def test_upstream_path_prefix_is_prepended(upstream):
    with FaultProxy(upstream.url + "/es/") as prefixed:
        assert call(prefixed, "GET", "/_cluster/health?wait=1").json()["path"] == "/es/_cluster/health"


def test_unreachable_upstream_gives_502(upstream):
    with FaultProxy(f"http://127.0.0.1:{free_port()}") as nowhere:
        reply = call(nowhere, "GET", "/")

        assert reply.status == 502
        assert nowhere.requests == [RequestRecord("GET", "/", "", 502, None)]


# --------------------------------------------------------------------------- rule semantics


def test_a_fault_defaults_to_the_next_matching_request_once(proxy):
    proxy.add_fault("GET /a", es_503())

    assert statuses(proxy, "GET", "/a", 3) == [503, 200, 200]


def test_nth_and_times_count_only_matching_requests(proxy):
    proxy.add_fault(r"^POST /logs/_search", es_429(), nth=2, times=2)

    seen = []
    for _ in range(5):
        seen.append(call(proxy, "POST", "/logs/_search", body=b"{}").status)
        assert call(proxy, "GET", "/logs/_count").status == 200  # never counted

    assert seen == [200, 429, 429, 200, 200]


def test_times_none_fires_on_every_request_from_nth_on(proxy):
    fault = proxy.add_fault("GET /x", gateway(504), nth=3, times=None)

    assert statuses(proxy, "GET", "/x", 6) == [200, 200, 504, 504, 504, 504]
    assert (fault.matched, fault.fired, fault.exhausted) == (6, 4, False)


def test_fault_counters_and_exhaustion(proxy):
    fault = proxy.add_fault("GET /x", es_503(), nth=2, times=1)

    assert statuses(proxy, "GET", "/x", 3) == [200, 503, 200]
    assert (fault.matched, fault.fired, fault.exhausted) == (3, 1, True)


def test_regex_sees_the_query_string(proxy):
    proxy.add_fault(r"[?&]scroll=", es_pit_lost(), times=None)

    assert call(proxy, "GET", "/_search?scroll=1m").status == 404
    assert call(proxy, "GET", "/_search?size=1").status == 200


def test_callable_matcher_gets_the_request_with_its_body(proxy):
    seen: list[ProxyRequest] = []

    def has_pit(request: ProxyRequest) -> bool:
        seen.append(request)
        return b'"pit"' in request.body

    proxy.add_fault(has_pit, es_pit_lost(), times=None)

    assert call(proxy, "POST", "/_search", body=b'{"pit":{"id":"abc"}}').status == 404
    assert call(proxy, "POST", "/_search", body=b'{"query":{}}').status == 200
    assert seen[0].line == "POST /_search"
    assert seen[0].header("content-type") is None
    assert seen[0].header("Content-Length") == "20"


def test_rules_count_independently_and_the_first_added_wins(proxy):
    first = proxy.add_fault("GET /x", es_429(), nth=2, times=2)  # requests 2 and 3
    second = proxy.add_fault("GET /x", es_503(), nth=3, times=2)  # requests 3 and 4; 3 goes to `first`

    assert statuses(proxy, "GET", "/x", 5) == [200, 429, 429, 503, 200]
    assert (first.fired, second.fired) == (2, 1)
    assert (first.matched, second.matched) == (5, 5)


def test_clear_faults(proxy):
    proxy.add_fault("GET", es_503(), times=None)
    assert call(proxy, "GET", "/").status == 503

    proxy.clear_faults()

    assert proxy.faults == []
    assert call(proxy, "GET", "/").status == 200


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [({"nth": 0}, ValueError), ({"times": 0}, ValueError), ({"match": 42}, TypeError), ({"action": 429}, TypeError)],
)
def test_add_fault_rejects_bad_arguments(proxy, kwargs, error):
    arguments = {"match": "GET", "action": es_429(), **kwargs}
    with pytest.raises(error):
        proxy.add_fault(arguments.pop("match"), arguments.pop("action"), **arguments)


# --------------------------------------------------------------------------- actions


def test_es_429_looks_like_elasticsearch_rejecting_work(proxy, upstream):
    proxy.add_fault("POST /logs/_search", es_429())

    reply = call(proxy, "POST", "/logs/_search", body=b"{}")

    assert reply.status == 429
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.headers["X-Elastic-Product"] == "Elasticsearch"
    error = reply.json()
    assert error["status"] == 429
    assert error["error"]["type"] == "es_rejected_execution_exception"
    assert error["error"]["root_cause"][0]["type"] == "es_rejected_execution_exception"
    assert error["error"]["reason"].startswith("rejected execution")
    assert upstream.received == []  # answered by the proxy, never forwarded


def test_es_503(proxy):
    proxy.add_fault("GET /_cluster/health", es_503())

    reply = call(proxy, "GET", "/_cluster/health")

    assert reply.status == 503
    assert reply.headers["X-Elastic-Product"] == "Elasticsearch"
    assert reply.json()["error"]["type"] == "cluster_block_exception"
    assert reply.json()["status"] == 503


@pytest.mark.parametrize("code", [502, 504])
def test_gateway_errors(proxy, code):
    proxy.add_fault("GET", gateway(code))

    reply = call(proxy, "GET", "/")

    assert reply.status == code
    assert reply.headers["Content-Type"] == "text/html"
    assert reply.headers["X-Elastic-Product"] is None
    assert str(code).encode() in reply.body
    assert proxy.requests[0].injected == f"gateway_{code}"


def test_es_pit_lost_is_the_404_of_an_expired_point_in_time(proxy):
    proxy.add_fault("POST /_search", es_pit_lost())

    reply = call(proxy, "POST", "/_search", body=b'{"pit":{"id":"x"}}')

    assert reply.status == 404
    assert reply.headers["X-Elastic-Product"] == "Elasticsearch"
    error = reply.json()
    assert error["status"] == 404
    assert error["error"]["type"] == "search_phase_execution_exception"
    assert error["error"]["reason"] == "all shards failed"
    assert error["error"]["root_cause"] == [
        {"type": "search_context_missing_exception", "reason": "No search context found for id [1]"}
    ]


def test_s3_slow_down(proxy):
    proxy.add_fault("PUT /bucket/", s3_error())

    reply = call(proxy, "PUT", "/bucket/key", body=b"data")

    assert reply.status == 503
    assert reply.headers["Content-Type"] == "application/xml"
    assert b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message>" in reply.body
    assert proxy.requests[0].injected == "s3_SlowDown"


def test_custom_status_with_json_body_and_headers(proxy):
    proxy.add_fault("GET", status(418, {"teapot": True}, {"Retry-After": "3"}, name="teapot"))

    reply = call(proxy, "GET", "/")

    assert (reply.status, reply.json(), reply.headers["Retry-After"]) == (418, {"teapot": True}, "3")
    assert reply.headers["Content-Type"] == "application/json"
    assert proxy.requests[0].injected == "teapot"


def test_canned_answer_to_head_has_no_body_and_keeps_the_connection_usable(proxy):
    proxy.add_fault("HEAD", es_503())
    conn = _connect(proxy)
    try:
        head = call(conn, "HEAD", "/logs")
        after = call(conn, "GET", "/logs")
    finally:
        conn.close()

    assert (head.status, head.body) == (503, b"")
    assert int(head.headers["Content-Length"]) > 0
    assert after.status == 200


def test_delay_then_forwards(proxy, upstream):
    proxy.add_fault("GET /slow", delay(0.3))

    started = time.monotonic()
    reply = call(proxy, "GET", "/slow")
    elapsed = time.monotonic() - started

    assert elapsed >= 0.3
    assert reply.status == 200
    assert reply.json()["path"] == "/slow"
    assert proxy.requests == [RequestRecord("GET", "/slow", "", 200, "delay")]


def test_drop_closes_the_connection_without_a_response(proxy, upstream):
    proxy.add_fault("POST /_bulk", drop())

    with pytest.raises(ConnectionError):  # http.client.RemoteDisconnected
        call(proxy, "POST", "/_bulk", body=b'{"index":{}}\n{}\n')

    assert upstream.received == []
    assert proxy.requests == [RequestRecord("POST", "/_bulk", "", None, "drop")]
    assert call(proxy, "POST", "/_bulk", body=b"{}").status == 200


# --------------------------------------------------------------------------- request log


def test_request_log_records_method_path_query_status_and_injection(proxy):
    proxy.add_fault("GET /b", es_429())
    call(proxy, "GET", "/a?x=1")
    call(proxy, "GET", "/b")
    call(proxy, "POST", "/a", body=b"{}")

    assert proxy.requests == [
        RequestRecord("GET", "/a", "x=1", 200, None),
        RequestRecord("GET", "/b", "", 429, "es_429"),
        RequestRecord("POST", "/a", "", 200, None),
    ]
    assert proxy.count("^GET /a$") == 1  # the query is not part of what count() matches
    assert proxy.count("/a") == 2
    assert proxy.count(r"^GET ") == 2
    assert proxy.count() == 3

    proxy.reset_log()

    assert proxy.requests == []
    assert proxy.count() == 0


def test_request_log_is_complete_under_concurrency(proxy):
    proxy.add_fault("GET /t/3", es_503(), nth=2, times=3)

    def client(n: int) -> None:
        conn = _connect(proxy)
        try:
            for _ in range(10):
                call(conn, "GET", f"/t/{n}")
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert proxy.count() == 80
    assert proxy.count("^GET /t/3$") == 10
    assert [r.status for r in proxy.requests if r.path == "/t/3"] == [200, 503, 503, 503] + [200] * 6


# --------------------------------------------------------------------------- lifecycle


def test_url_and_clean_stop(upstream):
    running = FaultProxy(upstream.url).start()
    assert running.url == f"http://127.0.0.1:{running.port}"
    conn = _connect(running)
    assert call(conn, "GET", "/").status == 200

    running.stop()

    with pytest.raises((OSError, http.client.HTTPException)):
        call(conn, "GET", "/")
    conn.close()
    with pytest.raises(RuntimeError):
        _ = running.url
    running.stop()  # idempotent


def test_stop_interrupts_a_delayed_request(upstream):
    running = FaultProxy(upstream.url).start()
    fault = running.add_fault("GET", delay(600))
    outcome: list[BaseException | int] = []

    def client() -> None:
        try:
            outcome.append(call(running, "GET", "/").status)
        except (OSError, http.client.HTTPException) as exc:
            outcome.append(exc)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    while fault.fired == 0:
        time.sleep(0.01)

    running.stop()
    thread.join(30)

    assert not thread.is_alive()
    assert isinstance(outcome[0], OSError | http.client.HTTPException)
    assert upstream.received == []


# --------------------------------------------------------------------------- real clients


def test_elasticsearch_client_sees_injected_errors(proxy):
    from elasticsearch import ApiError, Elasticsearch, NotFoundError
    from elasticsearch import ConnectionError as EsConnectionError

    with Elasticsearch(proxy.url, max_retries=0, request_timeout=10) as es:
        assert es.info()["path"] == "/"  # the echo; a 2xx needs X-Elastic-Product to pass the product check

        proxy.add_fault("POST /logs/_search", es_429())
        with pytest.raises(ApiError) as rejected:
            es.search(index="logs", query={"match_all": {}})
        assert rejected.value.meta.status == 429
        assert rejected.value.body["error"]["type"] == "es_rejected_execution_exception"

        proxy.add_fault("POST /_search", es_pit_lost())
        with pytest.raises(NotFoundError) as lost:
            es.search(pit={"id": "abc", "keep_alive": "1m"}, size=10)
        assert lost.value.meta.status == 404

        proxy.add_fault("POST /logs/_search", drop())
        with pytest.raises(EsConnectionError):
            es.search(index="logs", query={"match_all": {}})

        assert es.search(index="logs", query={"match_all": {}})["path"] == "/logs/_search"

    assert [r.injected for r in proxy.requests] == [None, "es_429", "es_pit_lost", "drop", None]
    assert proxy.count(r"^POST /logs/_search$") == 3


def test_boto3_put_object_with_expect_100_continue_and_slow_down(proxy, upstream):
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    expect_headers: list[str | None] = []
    proxy.add_fault(lambda request: expect_headers.append(request.header("Expect")) or False, drop(), times=None)
    s3 = boto3.client(
        "s3",
        endpoint_url=proxy.url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, s3={"addressing_style": "path"}),
    )
    data = b"part-00000\n" * 2000

    s3.put_object(Bucket="backfill", Key="run/part-0.jsonl", Body=io.BytesIO(data))

    assert expect_headers == ["100-continue"]
    (received,) = upstream.received
    assert (received.method, received.path, received.body) == ("PUT", "/backfill/run/part-0.jsonl", data)

    proxy.add_fault("PUT /backfill/", s3_error())
    with pytest.raises(ClientError) as slow:
        s3.put_object(Bucket="backfill", Key="run/part-1.jsonl", Body=io.BytesIO(data))
    assert slow.value.response["Error"]["Code"] == "SlowDown"
    assert slow.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
