"""A tiny echo HTTP server, run in a thread, for tests of the proxies in front of an upstream.

:func:`running_echo_server` starts one on a free local port and yields an :class:`EchoServer`,
whose ``received`` list records every request that reached it as a :class:`Received`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    """One request as the echo server got it: ``target`` is the request target as sent (path and query)."""

    method: str
    target: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    peer: tuple[str, int]


class _EchoHandler(BaseHTTPRequestHandler):
    """Answers any method with a JSON echo of the request, like Elasticsearch would frame it.

    ``/status/NNN`` answers with status NNN, ``/chunked`` with a chunked body,
    ``/close`` with ``Connection: close``; a SigV4-signed PUT gets S3's answer
    to an upload (200, an ETag, no body), which is all boto3 wants to see.
    """

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes

    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):
            return self._echo
        raise AttributeError(name)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _echo(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path, _, query = self.path.partition("?")
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.server.received.append(  # type: ignore[attr-defined]
            Received(self.command, self.path, path, query, headers, body, self.client_address)
        )
        payload = json.dumps(
            {
                "method": self.command,
                "target": self.path,
                "path": path,
                "query": query,
                "body": body.decode("latin-1"),
                "headers": headers,
            }
        ).encode()
        if self.command == "PUT" and headers.get("authorization", "").startswith("AWS4-HMAC-SHA256"):
            self.send_response(200)
            self.send_header("ETag", '"d41d8cd98f00b204e9800998ecf8427e"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(int(path.rsplit("/", 1)[1]) if path.startswith("/status/") else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Elastic-Product", "Elasticsearch")
        self.send_header("X-Echo", "one")
        self.send_header("X-Echo", "two")
        if path == "/chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if self.command != "HEAD":
                for piece in (payload[:7], payload[7:20], payload[20:]):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\n\r\n")
            return
        if path == "/close":
            self.send_header("Connection", "close")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


class _EchoServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64


@dataclass
class EchoServer:
    """A running echo server: its base URL and the requests it has received, oldest first."""

    url: str
    received: list[Received] = field(default_factory=list)

    def peers(self) -> set[tuple[str, int]]:
        return {r.peer for r in self.received}


@contextmanager
def running_echo_server() -> Iterator[EchoServer]:
    """An echo server on a free port of 127.0.0.1, serving from a daemon thread until the block ends."""
    server = _EchoServer(("127.0.0.1", 0), _EchoHandler)
    echo = EchoServer(url=f"http://127.0.0.1:{server.server_address[1]}")
    server.received = echo.received  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield echo
    finally:
        server.shutdown()
        server.server_close()
