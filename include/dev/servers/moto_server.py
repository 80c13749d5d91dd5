"""moto's server (S3, Secrets Manager, Glue, ...) with S3's conditional writes made atomic.

moto 5.2.5 answers a ``PUT`` or ``DELETE`` carrying ``If-None-Match``/``If-Match`` by checking the condition and
then writing, two steps another request thread can run between: two runs racing for a free lease could both be
told they hold it, where S3 gives it to exactly one. Here every request carrying a condition runs alone, so the
check and the write are one step as on S3; the rest is ``python -m moto.server``: the same application, request
handler and threads. Run as ``python -m include.dev.servers.moto_server HOST PORT``.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
CONDITIONS = ("HTTP_IF_MATCH", "HTTP_IF_NONE_MATCH")


def conditions_run_alone(app: WsgiApp) -> WsgiApp:
    """``app`` with each request that carries an S3 write condition answered under one lock (moto computes its
    whole answer in the call, so the lock covers the check and the write)."""
    lock = threading.Lock()

    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not any(name in environ for name in CONDITIONS):
            return app(environ, start_response)
        with lock:
            answer = app(environ, start_response)
            try:
                return list(answer)
            finally:
                if hasattr(answer, "close"):
                    answer.close()  # as a WSGI server must, once the body is read

    return serve


def main(host: str, port: int) -> None:
    # Stopping (SIGTERM from running_s3) ends the process at once, as moto's own server does.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: sys.exit(0))
    os.environ.setdefault("MOTO_PORT", str(port))  # as moto's server sets it: the port its own URLs name
    app = conditions_run_alone(DomainDispatcherApplication(create_backend_app))
    run_simple(host, port, app, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
