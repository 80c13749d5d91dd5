"""A throwaway PostgreSQL server for Airflow's metadata database, without Docker.

Uses Debian's PostgreSQL binaries (``/usr/lib/postgresql/<version>/bin``): ``initdb``
into a temporary directory, then a server on 127.0.0.1 and a free port with trust
authentication. Like Elasticsearch, PostgreSQL refuses to run as root, so when we
are root it runs as ``nobody``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from include.dev.servers.ports import free_port

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 60


class PostgresStartError(RuntimeError):
    """PostgreSQL is not installed or did not start."""


def _bin_dir() -> Path:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]))
    if not versions:
        raise PostgresStartError("PostgreSQL is not installed: apt-get install postgresql")
    return versions[-1].parent


@contextlib.contextmanager
def running_postgres(database: str = "airflow") -> Iterator[str]:
    """Yield a SQLAlchemy URL (psycopg2) for an empty ``database`` on a fresh local server."""
    bin_dir = _bin_dir()
    workdir = Path(tempfile.mkdtemp(prefix="es-backfill-pg-"))
    data, socket_dir = workdir / "data", workdir / "run"
    socket_dir.mkdir()
    run_as: list[str] = []
    if os.geteuid() == 0:
        subprocess.run(["chown", "-R", "nobody:nogroup", str(workdir)], check=True, timeout=60)
        workdir.chmod(0o755)
        run_as = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    subprocess.run(
        [*run_as, str(bin_dir / "initdb"), "-D", str(data), "-U", "airflow", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    port = free_port()
    log_file = workdir / "postgres.log"
    with log_file.open("wb") as out:
        proc = subprocess.Popen(
            [*run_as, str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1",
             "-k", str(socket_dir), "-c", "max_connections=200", "-c", "fsync=off"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        _wait_ready(bin_dir, port, proc, log_file)
        subprocess.run(
            [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "airflow", database],
            check=True,
            capture_output=True,
            timeout=60,
        )
        log.info("Started PostgreSQL on 127.0.0.1:%s", port)
        yield f"postgresql+psycopg2://airflow@127.0.0.1:{port}/{database}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)  # fast shutdown
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_ready(bin_dir: Path, port: int, proc: subprocess.Popen, log_file: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PostgresStartError(f"PostgreSQL exited with {proc.returncode}:\n{log_file.read_text()[-3000:]}")
        ready = subprocess.run(
            [str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)], capture_output=True, timeout=10
        )
        if ready.returncode == 0:
            return
        time.sleep(0.3)
    raise PostgresStartError(f"PostgreSQL did not accept connections within {STARTUP_TIMEOUT_S}s")
