"""A fault-injecting HTTP reverse proxy for tests.

:class:`FaultProxy` sits between the code under test and a real HTTP server
(Elasticsearch, or an S3 server such as moto or MinIO). It listens on
127.0.0.1 on a free port, forwards every request unchanged (method, path,
query, headers including ``Host``, body) and relays the answer back, except
when a fault rule matches: then it answers with a canned error, stalls, or
hangs up, exactly as a struggling cluster or load balancer would.

Usage::

    from include.dev.servers.faultproxy import FaultProxy, drop, es_429, es_pit_lost

    with FaultProxy(es_cluster.url) as proxy:
        es = Elasticsearch(proxy.url, max_retries=0)
        proxy.add_fault("POST /[^/]+/_search", es_429(), nth=2, times=3)  # 2nd..4th search
        proxy.add_fault(r"^POST /_search\\?", es_pit_lost())  # the next PIT search
        proxy.add_fault(lambda req: b'"pit"' in req.body, drop())  # matches on the body
        ...  # run the code under test
        assert proxy.count(r"^POST /_search$") == 5
        assert [r.injected for r in proxy.requests if r.injected] == ["es_429", ...]

Rules
    ``add_fault(match, action, nth=None, times=1)``. ``match`` is a regular
    expression searched (``re.search``) in ``"METHOD /path?query"`` (no ``?``
    when there is no query), or a callable that gets the :class:`ProxyRequest`
    (method, path, query, headers, body) and returns a bool. Every rule counts
    the requests it matches from the moment it is added, independently of the
    other rules; it fires on matching requests ``nth`` (1-based, ``None`` means
    the next one) through ``nth + times - 1``; ``times=None`` means for ever.
    When several rules fire on the same request, the one added first wins.

Actions
    :func:`status` (any canned response) and its presets :func:`es_429`,
    :func:`es_503`, :func:`es_pit_lost`, :func:`es_error`, :func:`gateway`,
    :func:`s3_error`; :func:`delay` (wait, then forward normally) and
    :func:`drop` (read the request, then close the connection without a word).

Gate
    ``FaultProxy(url, gate=check)``: ``check`` gets every :class:`ProxyRequest`
    before the fault rules do and returns ``None`` to let it through, or a reason
    to refuse it: the proxy then answers ``403`` with ``{"message": reason}``, as
    Amazon OpenSearch Service does, and the request neither reaches the upstream
    nor counts for any fault rule. :class:`include.dev.servers.sigv4.SigV4Verifier`
    is such a gate: it checks AWS SigV4 signatures.

Request log
    :attr:`FaultProxy.requests` lists a :class:`RequestRecord` (method, path,
    query, status, injected action name or ``None``, the gate's reason if it
    refused the request) for every request, in the order the answers were
    decided; :meth:`FaultProxy.count` counts those whose ``"METHOD /path"``
    matches a regular expression. A record is written before the answer goes
    out, so a client that has its answer always finds it logged.

Protocol notes: the proxy speaks HTTP/1.1 with keep-alive on both sides (one
upstream connection per client connection), answers ``Expect: 100-continue``
itself and does not forward that header, accepts ``Content-Length`` and chunked
request bodies and forwards them with a ``Content-Length``, streams upstream
bodies of known length and buffers chunked or close-delimited ones to send them
with a ``Content-Length``, and drops hop-by-hop headers in both directions. If
the upstream cannot be reached it answers 502 (logged with ``injected=None``). An ``https`` upstream is
verified with ``upstream_ssl_context`` when given (e.g. against a test run's own CA), else with
:mod:`http.client`'s default context.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import re
import socket
import socketserver
import ssl
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self, TypeAlias, cast
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

log = logging.getLogger(__name__)

__all__ = [
    "Action",
    "Delay",
    "Drop",
    "Fault",
    "FaultProxy",
    "Gate",
    "ProxyRequest",
    "RequestRecord",
    "Respond",
    "delay",
    "drop",
    "es_429",
    "es_503",
    "es_error",
    "es_pit_lost",
    "gateway",
    "s3_error",
    "status",
]

# RFC 9110 section 7.6.1, plus the non-standard ones that still show up.
HOP_BY_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Request headers the proxy handles itself instead of passing them on.
_NOT_FORWARDED = HOP_BY_HOP_HEADERS | {"content-length", "expect"}
_COPY_BLOCK = 64 * 1024
_STOP_JOIN_TIMEOUT_S = 5.0


# --------------------------------------------------------------------------- requests and log


@dataclass(frozen=True)
class ProxyRequest:
    """A request as the proxy received it; what a callable ``match`` is given."""

    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def target(self) -> str:
        """``/path?query``, or just ``/path`` without a query."""
        return f"{self.path}?{self.query}" if self.query else self.path

    @property
    def line(self) -> str:
        """``METHOD /path?query``: the string a regular-expression ``match`` is searched in."""
        return f"{self.method} {self.target}"

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first value of header ``name`` (case-insensitive)."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), default)


@dataclass(frozen=True)
class RequestRecord:
    """One line of the request log.

    ``status`` is the status sent to the client (``None`` when the connection
    was dropped); ``injected`` is the name of the fault action that shaped the
    answer (``"es_429"``, ``"delay"``, ``"drop"``, ``"gate"`` for a refusal by
    the gate, ...) or ``None``; ``refused`` is the gate's reason for a refusal.
    """

    method: str
    path: str
    query: str
    status: int | None
    injected: str | None
    refused: str | None = None


# --------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class Respond:
    """Answer with this response instead of forwarding the request."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    name: str = "status"


@dataclass(frozen=True)
class Delay:
    """Wait ``seconds``, then forward the request normally."""

    seconds: float
    name: str = "delay"


@dataclass(frozen=True)
class Drop:
    """Read the request, then close the client connection without any response."""

    name: str = "drop"


Action: TypeAlias = Respond | Delay | Drop
Matcher: TypeAlias = str | re.Pattern[str] | Callable[[ProxyRequest], bool]
# Given every request first: None lets it through, a reason refuses it with a 403.
Gate: TypeAlias = Callable[[ProxyRequest], str | None]


def status(
    code: int,
    body: bytes | str | Mapping[str, Any] | list[Any] = b"",
    headers: Mapping[str, str] | None = None,
    *,
    content_type: str | None = None,
    name: str | None = None,
) -> Respond:
    """A canned response. ``body`` may be bytes, text, or a dict/list sent as JSON.

    The content type defaults to ``application/json`` for a dict or list and to
    ``text/plain; charset=utf-8`` otherwise; ``headers`` are added last and win.
    """
    if not 100 <= code <= 599:
        raise ValueError(f"not an HTTP status code: {code}")
    if isinstance(body, Mapping | list):
        payload = json.dumps(body, separators=(",", ":")).encode()
        default_type = "application/json"
    else:
        payload = body.encode() if isinstance(body, str) else bytes(body)
        default_type = "text/plain; charset=utf-8"
    extra = list((headers or {}).items())
    if not any(key.lower() == "content-type" for key, _ in extra):
        extra.insert(0, ("Content-Type", content_type or default_type))
    return Respond(status=code, body=payload, headers=tuple(extra), name=name or f"status_{code}")


def es_error(
    code: int,
    error_type: str,
    reason: str | None,
    *,
    root_cause: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> Respond:
    """An error in Elasticsearch's shape, with its ``X-Elastic-Product`` header.

    ``{"error": {"root_cause": [root_cause], "type": error_type, "reason": reason, **extra}, "status": code}``;
    ``root_cause`` defaults to ``{"type": error_type, "reason": reason}``.
    """
    cause = dict(root_cause) if root_cause is not None else {"type": error_type, "reason": reason}
    error: dict[str, Any] = {"root_cause": [cause], "type": error_type, "reason": reason, **(extra or {})}
    return status(
        code,
        {"error": error, "status": code},
        {"X-Elastic-Product": "Elasticsearch"},
        name=name or f"es_{code}",
    )


_ES_REJECTED_REASON = (
    "rejected execution of org.elasticsearch.common.util.concurrent.TimedRunnable@5b2b8c4f on "
    "TaskExecutionTimeTrackingEsThreadPoolExecutor[name = node-1/search, queue capacity = 1000, "
    "task execution EWMA = 2.1ms, total task execution time = 1.2m, "
    "org.elasticsearch.common.util.concurrent.TaskExecutionTimeTrackingEsThreadPoolExecutor@1e0b4072"
    "[Running, pool size = 13, active threads = 13, queued tasks = 1000, completed tasks = 48211]]"
)


def es_429(reason: str = _ES_REJECTED_REASON) -> Respond:
    """Elasticsearch refusing work: a full search/write thread-pool queue (``es_rejected_execution_exception``)."""
    return es_error(429, "es_rejected_execution_exception", reason, name="es_429")


def es_503(reason: str = "blocked by: [SERVICE_UNAVAILABLE/2/no master];") -> Respond:
    """Elasticsearch unavailable: a cluster without an elected master (``cluster_block_exception``)."""
    return es_error(503, "cluster_block_exception", reason, name="es_503")


def es_pit_lost(context_id: str = "1") -> Respond:
    """The 404 Elasticsearch returns for a search on an expired or unknown point in time (or scroll)."""
    cause = {"type": "search_context_missing_exception", "reason": f"No search context found for id [{context_id}]"}
    return es_error(
        404,
        "search_phase_execution_exception",
        "all shards failed",
        root_cause=cause,
        extra={
            "phase": "query",
            "grouped": True,
            "failed_shards": [{"shard": -1, "index": None, "reason": cause}],
            "caused_by": cause,
        },
        name="es_pit_lost",
    )


def gateway(code: int = 502) -> Respond:
    """A load balancer or reverse proxy in front of the server failing: 502 Bad Gateway, 504 Gateway Timeout."""
    phrase = f"{code} {HTTPStatus(code).phrase}"
    html = (
        f"<html>\r\n<head><title>{phrase}</title></head>\r\n"
        f"<body>\r\n<center><h1>{phrase}</h1></center>\r\n</body>\r\n</html>\r\n"
    )
    return status(code, html, content_type="text/html", name=f"gateway_{code}")


_S3_MESSAGES = {
    "SlowDown": "Please reduce your request rate.",
    "ServiceUnavailable": "Please reduce your request rate.",
    "InternalError": "We encountered an internal error. Please try again.",
    "RequestTimeout": "Your socket connection to the server was not read from or written to within the timeout period.",
}


def s3_error(code: int = 503, s3_code: str = "SlowDown", message: str | None = None) -> Respond:
    """An S3 error response: ``<Error><Code>SlowDown</Code><Message>...</Message>...</Error>`` as XML."""
    text = escape(message if message is not None else _S3_MESSAGES.get(s3_code, s3_code))
    request_id = "FAULTPROXY0000001"
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(s3_code)}</Code><Message>{text}</Message>"
        f"<RequestId>{request_id}</RequestId><HostId>faultproxy</HostId></Error>"
    )
    return status(
        code,
        xml,
        {"x-amz-request-id": request_id},
        content_type="application/xml",
        name=f"s3_{s3_code}",
    )


def delay(seconds: float) -> Delay:
    """Wait ``seconds`` (interrupted when the proxy stops), then forward normally."""
    if seconds < 0:
        raise ValueError("delay must not be negative")
    return Delay(seconds)


def drop() -> Drop:
    """Close the client connection without any response, after reading the request."""
    return Drop()


# --------------------------------------------------------------------------- rules


@dataclass(eq=False)
class Fault:
    """A rule added by :meth:`FaultProxy.add_fault`; ``matched`` and ``fired`` count requests."""

    description: str
    action: Action
    nth: int
    times: int | None
    _predicate: Callable[[ProxyRequest], bool]
    matched: int = 0
    fired: int = 0

    @property
    def exhausted(self) -> bool:
        """True once the rule's window of matching requests has passed."""
        return self.times is not None and self.matched >= self.nth + self.times - 1

    def _applies_to(self, request: ProxyRequest) -> bool:
        """Count ``request`` if it matches; say whether it falls in the window. Call under the proxy's lock."""
        if not self._predicate(request):
            return False
        self.matched += 1
        if self.matched < self.nth:
            return False
        return self.times is None or self.matched < self.nth + self.times


def _compile_matcher(match: Matcher) -> tuple[Callable[[ProxyRequest], bool], str]:
    if isinstance(match, str | re.Pattern):
        pattern = re.compile(match)
        return (lambda request: pattern.search(request.line) is not None), pattern.pattern
    if callable(match):
        return match, getattr(match, "__name__", repr(match))
    raise TypeError(f"match must be a regular expression or a callable, not {type(match).__name__}")


# --------------------------------------------------------------------------- the proxy


class FaultProxy:
    """A threaded HTTP/1.1 reverse proxy to ``upstream_url`` that injects faults on request.

    Use it as a context manager (or call :meth:`start` and :meth:`stop`).
    ``upstream_url`` may carry a path prefix, which is put in front of every
    forwarded path. ``upstream_timeout`` bounds connecting to and each read
    from the upstream server. ``gate``, when given, decides first whether a
    request may pass at all (see the module documentation); the attribute
    :attr:`gate` may also be set or cleared while the proxy runs.
    ``upstream_ssl_context``, for an ``https`` upstream, is the TLS context the
    proxy connects with, e.g. ``ssl.create_default_context(cafile=...)`` to
    verify a server whose certificate a private CA signed; ``None`` (the
    default) keeps :class:`http.client.HTTPSConnection`'s own default context.
    """

    def __init__(
        self,
        upstream_url: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        upstream_timeout: float = 120.0,
        gate: Gate | None = None,
        upstream_ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(upstream_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream must be an http(s) URL, got {upstream_url!r}")
        if upstream_ssl_context is not None and parts.scheme != "https":
            raise ValueError(f"upstream_ssl_context is for an https upstream, not {upstream_url!r}")
        self.upstream_url = upstream_url.rstrip("/")
        self.upstream_timeout = upstream_timeout
        self.gate = gate
        self.upstream_ssl_context = upstream_ssl_context
        self._upstream_https = parts.scheme == "https"
        self._upstream_host = parts.hostname
        self._upstream_port = parts.port or (443 if self._upstream_https else 80)
        self._upstream_netloc = parts.netloc.rpartition("@")[2]  # without any user:password@
        self._upstream_prefix = parts.path.rstrip("/")
        self._bind = (host, port)
        self._lock = threading.RLock()
        self._faults: list[Fault] = []
        self._log: list[RequestRecord] = []
        self._stopping = threading.Event()
        self._server: _ProxyServer | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, the address to give the client under test."""
        if self._server is None:
            raise RuntimeError("the fault proxy is not running")
        return f"http://{self._server.server_name}:{self._server.server_port}"

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the fault proxy is not running")
        return self._server.server_port

    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError("the fault proxy is already running")
        self._stopping.clear()
        self._server = _ProxyServer(self._bind, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"faultproxy-{self._server.server_port}",
            daemon=True,
        )
        self._thread.start()
        log.info("Fault proxy at %s forwarding to %s", self.url, self.upstream_url)
        return self

    def stop(self) -> None:
        """Stop accepting, hang up on open connections, and wait (briefly) for handler threads."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join()
        server.close_all_connections(_STOP_JOIN_TIMEOUT_S)
        self._server = self._thread = None
        log.info("Fault proxy to %s stopped", self.upstream_url)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.url if self._server is not None else "stopped"
        return f"<FaultProxy {where} -> {self.upstream_url}>"

    # ----------------------------------------------------------------- faults

    def add_fault(self, match: Matcher, action: Action, *, nth: int | None = None, times: int | None = 1) -> Fault:
        """Inject ``action`` on matching requests ``nth`` .. ``nth + times - 1`` (1-based, counted from now).

        ``nth=None`` starts with the next matching request; ``times=None`` never stops.
        Returns the rule, whose ``matched``/``fired`` counters tests may inspect.
        """
        if not isinstance(action, Respond | Delay | Drop):
            raise TypeError(f"not a fault action: {action!r}")
        first = 1 if nth is None else nth
        if first < 1:
            raise ValueError("nth is 1-based")
        if times is not None and times < 1:
            raise ValueError("times must be at least 1 (or None for every request)")
        predicate, description = _compile_matcher(match)
        fault = Fault(description=description, action=action, nth=first, times=times, _predicate=predicate)
        with self._lock:
            self._faults.append(fault)
        log.debug("Fault added: %s on %r, nth=%s times=%s", action.name, description, first, times)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def faults(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    def _choose_fault(self, request: ProxyRequest) -> Fault | None:
        chosen: Fault | None = None
        with self._lock:
            for fault in self._faults:
                # Every rule sees (and counts) every request, so each rule's nth is its own.
                if fault._applies_to(request) and chosen is None:
                    chosen = fault
            if chosen is not None:
                chosen.fired += 1
        return chosen

    # ----------------------------------------------------------------- request log

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of the request log, oldest first."""
        with self._lock:
            return list(self._log)

    def count(self, pattern: str | re.Pattern[str] | None = None) -> int:
        """How many logged requests have a ``"METHOD /path"`` (no query) matching ``pattern``; all if ``None``."""
        if pattern is None:
            with self._lock:
                return len(self._log)
        regex = re.compile(pattern)
        return sum(1 for r in self.requests if regex.search(f"{r.method} {r.path}"))

    def reset_log(self) -> None:
        with self._lock:
            self._log.clear()

    def _record(
        self, request: ProxyRequest, status_code: int | None, injected: str | None, refused: str | None = None
    ) -> None:
        record = RequestRecord(request.method, request.path, request.query, status_code, injected, refused)
        with self._lock:
            self._log.append(record)
        log.debug("%s %s -> %s%s", request.method, request.target, status_code, f" ({injected})" if injected else "")

    # ----------------------------------------------------------------- upstream connections

    def _new_upstream_connection(self) -> http.client.HTTPConnection:
        if self._upstream_https:
            return http.client.HTTPSConnection(
                self._upstream_host,
                self._upstream_port,
                timeout=self.upstream_timeout,
                context=self.upstream_ssl_context,  # None: http.client's own default context
            )
        return http.client.HTTPConnection(self._upstream_host, self._upstream_port, timeout=self.upstream_timeout)


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # listen backlog; the default 5 drops SYNs (1 s retransmits) under parallel clients
    block_on_close = False  # stop() hangs up on connections and joins handlers itself, with a timeout

    def __init__(self, address: tuple[str, int], proxy: FaultProxy) -> None:
        self.proxy = proxy
        self._handlers: set[_ProxyHandler] = set()
        self._handlers_lock = threading.Lock()
        super().__init__(address, _ProxyHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (socket.getfqdn), which can stall on odd DNS setups.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def register(self, handler: _ProxyHandler) -> None:
        with self._handlers_lock:
            self._handlers.add(handler)

    def unregister(self, handler: _ProxyHandler) -> None:
        with self._handlers_lock:
            self._handlers.discard(handler)

    def close_all_connections(self, timeout: float) -> None:
        with self._handlers_lock:
            handlers = list(self._handlers)
        for handler in handlers:
            handler.abort()
        for handler in handlers:
            handler.thread.join(timeout)
            if handler.thread.is_alive():
                log.warning("Fault proxy handler for %s did not stop within %ss", handler.client_address, timeout)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError) or self.proxy._stopping.is_set():
            log.debug("Fault proxy connection from %s ended: %r", client_address, exc)
        else:
            log.error("Fault proxy failed on a request from %s", client_address, exc_info=exc)


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every answer carries a Content-Length
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server_version = "faultproxy"

    # -------------------------------------------------------------------- plumbing

    @property
    def proxy(self) -> FaultProxy:
        return cast(_ProxyServer, self.server).proxy

    def setup(self) -> None:
        super().setup()
        self.thread = threading.current_thread()
        self._upstream: http.client.HTTPConnection | None = None
        cast(_ProxyServer, self.server).register(self)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._close_upstream()
            cast(_ProxyServer, self.server).unregister(self)

    def abort(self) -> None:
        """Called from stop(): end this connection's blocking reads, on both sides."""
        upstream = self._upstream  # read once: the handler thread may drop it meanwhile
        for sock in (self.connection, upstream.sock if upstream is not None else None):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def __getattr__(self, name: str) -> Any:
        # BaseHTTPRequestHandler dispatches on hasattr(self, "do_" + METHOD): every method is proxied.
        if name.startswith("do_"):
            return self._handle
        raise AttributeError(name)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("Fault proxy %s: %s", self.address_string(), format % args)

    # -------------------------------------------------------------------- one request

    def _handle(self) -> None:
        proxy = self.proxy
        target = self.path
        if not target.startswith("/"):  # absolute form, "http://host/path?q"
            parts = urlsplit(target)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        path, _, query = target.partition("?")
        try:
            body, has_body = self._read_body()
        except (ValueError, ConnectionError) as exc:
            log.warning("Fault proxy: unreadable request body for %s %s: %s", self.command, path, exc)
            self.close_connection = True
            self.send_error(HTTPStatus.BAD_REQUEST, f"unreadable request body: {exc}")
            return
        request = ProxyRequest(self.command, path, query, tuple(self.headers.items()), body)

        gate = proxy.gate
        refusal = gate(request) if gate is not None else None
        if refusal is not None:
            log.info("Fault proxy: gate refused %s %s: %s", request.method, request.target, refusal)
            answer = status(HTTPStatus.FORBIDDEN, {"message": refusal}, name="gate")
            proxy._record(request, answer.status, answer.name, refusal)
            self._send_whole(answer.status, answer.headers, answer.body)
            return

        fault = proxy._choose_fault(request)
        action = fault.action if fault is not None else None
        if isinstance(action, Drop):
            proxy._record(request, None, action.name)
            log.info("Fault proxy: dropping %s %s", request.method, request.target)
            self.close_connection = True  # write nothing; the server closes the socket
            return
        if isinstance(action, Respond):
            log.info("Fault proxy: %s for %s %s", action.name, request.method, request.target)
            proxy._record(request, action.status, action.name)
            self._send_whole(action.status, action.headers, action.body)
            return
        injected = None
        if isinstance(action, Delay):
            log.info("Fault proxy: delaying %s %s by %ss", request.method, request.target, action.seconds)
            injected = action.name
            if proxy._stopping.wait(action.seconds):
                self.close_connection = True
                return
        self._forward(request, has_body, injected)

    def _read_body(self) -> tuple[bytes, bool]:
        """The request body and whether the request framed one (possibly empty)."""
        transfer_encoding = self.headers.get("Transfer-Encoding", "")
        if transfer_encoding:
            if transfer_encoding.strip().lower() != "chunked":
                raise ValueError(f"unsupported Transfer-Encoding {transfer_encoding!r}")
            return self._read_chunked(), True
        length = self.headers.get("Content-Length")
        if length is None:
            return b"", False
        size = int(length)
        if size < 0:
            raise ValueError(f"negative Content-Length {size}")
        body = self.rfile.read(size)
        if len(body) != size:
            raise ConnectionError(f"client sent {len(body)} of {size} body bytes")
        return body, True

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            line = self.rfile.readline(65537)
            if not line:
                raise ConnectionError("client closed the connection inside a chunked body")
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers: not forwarded
                return b"".join(parts)
            chunk = self.rfile.read(size)
            if len(chunk) != size:
                raise ConnectionError("client closed the connection inside a chunk")
            parts.append(chunk)
            self.rfile.readline(3)  # the CRLF after the chunk

    # -------------------------------------------------------------------- forwarding

    def _forward(self, request: ProxyRequest, has_body: bool, injected: str | None) -> None:
        proxy = self.proxy
        headers = _strip_hop_by_hop(request.headers, _NOT_FORWARDED)
        if has_body or request.body:
            headers.append(("Content-Length", str(len(request.body))))
        if request.header("Host") is None:
            headers.append(("Host", proxy._upstream_netloc))
        url = proxy._upstream_prefix + request.target
        try:
            response = self._round_trip(request.method, url, headers, request.body)
        except (OSError, http.client.HTTPException) as exc:
            log.warning("Fault proxy: upstream %s failed for %s %s: %r", proxy.upstream_url, request.method, url, exc)
            self._close_upstream()
            proxy._record(request, int(HTTPStatus.BAD_GATEWAY), injected)
            message = f"fault proxy: upstream {proxy.upstream_url} failed: {exc!r}\n".encode()
            self._send_whole(HTTPStatus.BAD_GATEWAY, (("Content-Type", "text/plain; charset=utf-8"),), message)
            return
        try:
            self._relay(request, response, injected)
        except (OSError, http.client.HTTPException) as exc:
            # Headers may be out already: the only honest signal left is to hang up on both sides.
            log.warning("Fault proxy: relaying %s %s failed: %r", request.method, url, exc)
            self._close_upstream()
            self.close_connection = True

    def _round_trip(
        self, method: str, url: str, headers: list[tuple[str, str]], body: bytes
    ) -> http.client.HTTPResponse:
        for attempt in (1, 2):
            if self._upstream is None:
                self._upstream = self.proxy._new_upstream_connection()
            conn = self._upstream
            reused = conn.sock is not None
            try:
                conn.putrequest(method, url, skip_host=True, skip_accept_encoding=True)
                for name, value in headers:
                    conn.putheader(name, value)
                conn.endheaders(body or None)
                return conn.getresponse()
            except (ConnectionResetError, BrokenPipeError) as exc:  # RemoteDisconnected is a ConnectionResetError
                self._close_upstream()
                if not (reused and attempt == 1):
                    raise
                # The upstream closed an idle keep-alive connection under us: once more, on a new one.
                log.debug("Fault proxy: stale upstream connection (%r), reconnecting", exc)
        raise AssertionError("unreachable")

    def _relay(self, request: ProxyRequest, response: http.client.HTTPResponse, injected: str | None) -> None:
        code = response.status
        headers = _strip_hop_by_hop(response.getheaders(), HOP_BY_HOP_HEADERS | {"content-length"})
        no_body = request.method == "HEAD" or code in (HTTPStatus.NO_CONTENT, HTTPStatus.NOT_MODIFIED) or code < 200
        if no_body:
            declared = response.getheader("Content-Length")
            if declared is not None and code != HTTPStatus.NO_CONTENT:
                headers.append(("Content-Length", declared))  # describes the body a GET would get
            response.read()
            self.proxy._record(request, code, injected)
            self._send_head(code, response.reason, headers)
            return
        if response.length is None:  # chunked or close-delimited: buffer it, send it with a length
            body = response.read()
            self.proxy._record(request, code, injected)
            self._send_whole(code, headers, body, reason=response.reason)
            return
        remaining = response.length
        headers.append(("Content-Length", str(remaining)))
        self.proxy._record(request, code, injected)
        self._send_head(code, response.reason, headers)
        while remaining > 0:
            block = response.read(min(_COPY_BLOCK, remaining))
            if not block:
                raise http.client.IncompleteRead(b"", remaining)
            self.wfile.write(block)
            remaining -= len(block)

    def _close_upstream(self) -> None:
        if self._upstream is not None:
            self._upstream.close()
            self._upstream = None

    # -------------------------------------------------------------------- writing answers

    def _send_head(self, code: int, reason: str | None, headers: Iterable[tuple[str, str]]) -> None:
        self.send_response_only(code, reason or None)
        for name, value in headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()

    def _send_whole(
        self, code: int, headers: Iterable[tuple[str, str]], body: bytes, *, reason: str | None = None
    ) -> None:
        """Send a complete answer with its Content-Length (and, for HEAD, without the body)."""
        all_headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        all_headers.append(("Content-Length", str(len(body))))
        self._send_head(code, reason, all_headers)
        if self.command != "HEAD":
            self.wfile.write(body)


def _strip_hop_by_hop(headers: Iterable[tuple[str, str]], drop: frozenset[str]) -> list[tuple[str, str]]:
    """``headers`` without ``drop`` and without any header the ``Connection`` header names."""
    pairs = list(headers)
    named = {token.strip().lower() for key, value in pairs if key.lower() == "connection" for token in value.split(",")}
    return [(key, value) for key, value in pairs if key.lower() not in drop and key.lower() not in named]
