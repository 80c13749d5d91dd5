"""A real S3-compatible HTTP server on this machine: moto in server mode.

:func:`running_s3` starts moto's server (``moto_server``: S3's conditional writes made atomic) in its
own process on 127.0.0.1 and a free port, waits until it answers, and stops it afterwards. When
``S3_ENDPOINT_URL`` is set (for example MinIO from docker compose) that server
is used instead. :func:`aws_connection_uri` builds the ``AIRFLOW_CONN_AWS_DEFAULT``
value that points the Amazon provider's hooks at the server.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from include.dev.servers.ports import free_port

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 60
PROJECT_ROOT = Path(__file__).resolve().parents[3]  # where ``include.dev.servers.moto_server`` imports from
# moto accepts any credentials; these only have to be present and consistent.
TEST_ACCESS_KEY = "testing"
TEST_SECRET_KEY = "testing"  # noqa: S105 - a local test server's dummy secret
REGION = "us-east-1"


class S3StartError(RuntimeError):
    """The local S3 server could not be started."""


@dataclass(frozen=True)
class RunningS3:
    endpoint_url: str
    started_here: bool


def aws_connection_uri(endpoint_url: str, config_kwargs: dict | None = None) -> str:
    """The Airflow connection (JSON form) for ``aws_default`` pointing at ``endpoint_url``, with botocore's
    ``config_kwargs`` in its extra when given."""
    extra = {"endpoint_url": endpoint_url, "region_name": REGION}
    return json.dumps(
        {
            "conn_type": "aws",
            "login": os.environ.get("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY),
            "password": os.environ.get("AWS_SECRET_ACCESS_KEY", TEST_SECRET_KEY),
            "extra": extra | ({"config_kwargs": config_kwargs} if config_kwargs else {}),
        }
    )


@contextlib.contextmanager
def running_s3() -> Iterator[RunningS3]:
    """Yield an S3 endpoint: ``S3_ENDPOINT_URL`` if set, otherwise a moto server started here."""
    if os.environ.get("S3_ENDPOINT_URL"):
        yield RunningS3(endpoint_url=os.environ["S3_ENDPOINT_URL"].rstrip("/"), started_here=False)
        return
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # moto logs every request; a file (not a pipe nobody reads) keeps it from blocking.
    log_file = tempfile.NamedTemporaryFile(prefix="moto-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "include.dev.servers.moto_server", "127.0.0.1", str(port)],
        cwd=PROJECT_ROOT,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_until_up(url, proc, Path(log_file.name))
        log.info("Started S3 server (moto) at %s", url)
        print(f"S3 server (moto) running at {url}", flush=True)
        yield RunningS3(endpoint_url=url, started_here=True)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log_file.close()
        os.unlink(log_file.name)


def _wait_until_up(url: str, proc: subprocess.Popen, log_file: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            output = log_file.read_text(errors="replace")
            raise S3StartError(f"moto server exited with {proc.returncode}:\n{output[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/moto-api/", timeout=5):
                return
        except urllib.error.HTTPError:
            return  # it answered: the server is up
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    raise S3StartError(f"moto server did not answer at {url} within {STARTUP_TIMEOUT_S}s")
