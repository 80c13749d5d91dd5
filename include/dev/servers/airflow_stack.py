"""A real Airflow 3.3 on this machine: api-server, scheduler and dag-processor, no Docker.

The scheduler runs tasks with the LocalExecutor and enforces pools, unlike ``dag.test()``.
Metadata lives in PostgreSQL (``include.dev.servers.postgres``). The simple auth manager
runs with every user an admin, which suits a throwaway local stack only. :class:`AirflowStack`
talks to the REST API (``/api/v2``) the way an operator's script would.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from include.dev.servers.airflow_env import ROOT, local_airflow_env
from include.dev.servers.ports import free_port

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 180
COMPONENTS = (
    ("api-server", ["api-server", "--port"]),
    ("scheduler", ["scheduler"]),
    ("dag-processor", ["dag-processor"]),
)


class AirflowStackError(RuntimeError):
    """A component did not start, or the REST API answered with an error."""


@dataclass
class AirflowStack:
    url: str
    home: Path
    # The environment the components run with: an Airflow CLI command run with it talks to the same database.
    env: dict[str, str]
    port: int = 0
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    killed: list[subprocess.Popen] = field(default_factory=list)  # their groups are stopped with the stack

    def start(self, component: str) -> subprocess.Popen:
        """Start ``component`` (one of :data:`COMPONENTS`) in its own session, its output appended to its log."""
        args = dict(COMPONENTS)[component]
        cmd = [sys.executable, "-m", "airflow", *args, *([str(self.port)] if component == "api-server" else [])]
        with (self.home / f"{component}.log").open("ab") as out:
            self.procs[component] = subprocess.Popen(
                cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self.procs[component]

    def kill(self, component: str) -> None:
        """``SIGKILL`` to ``component``'s own process only, as a crash would: processes it started (the
        LocalExecutor's workers and their tasks, for the scheduler) are left running. Its database sessions end
        too, as when its machine goes: here the processes it forked still hold its sockets, so PostgreSQL would
        keep a transaction it had open (and the rows it locked, which the next scheduler then waits on)."""
        proc = self.procs[component]
        ports = _socket_ports(proc.pid)
        proc.kill()
        proc.wait(timeout=30)
        self.killed.append(proc)
        self._end_sessions(ports)

    def _end_sessions(self, client_ports: set[int]) -> None:
        """End the PostgreSQL sessions of the metadata database whose client used one of ``client_ports``."""
        import psycopg2

        url = self.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        if not url.startswith("postgresql") or not client_ports:
            return
        with contextlib.closing(psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://"))) as conn:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE client_port = ANY(%s)",
                    (sorted(client_ports),),
                )
                log.info("Ended %s database sessions of the killed process", cursor.rowcount)

    def api(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        """Call the REST API (``path`` below ``/api/v2``) and return the decoded JSON answer."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.url}/api/v2{path}", data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as err:
            raise AirflowStackError(f"{method} {path} -> {err.code}: {err.read()[:2000]!r}") from err
        return json.loads(payload) if payload else None

    def has_dag(self, dag_id: str) -> bool:
        """Whether the dag-processor has parsed ``dag_id`` (the REST API knows it)."""
        try:
            return bool(self.api("GET", f"/dags/{dag_id}"))
        except (AirflowStackError, OSError):
            return False

    def wait_for(self, what: str, check, timeout: float = 300, every: float = 2) -> Any:
        """Poll ``check()`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = check()
            if result:
                return result
            time.sleep(every)
        raise AirflowStackError(f"timed out after {timeout}s waiting for {what}; logs in {self.home / 'logs'}")

    def logs(self, component: str) -> str:
        return (self.home / f"{component}.log").read_text(errors="replace")


@contextlib.contextmanager
def running_airflow(sql_alchemy_conn: str, env: dict[str, str] | None = None) -> Iterator[AirflowStack]:
    """Migrate the database, start the three components, and yield once the API answers."""
    home = Path(tempfile.mkdtemp(prefix="es-backfill-airflow-stack-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    full_env = {
        **os.environ,
        **local_airflow_env(home),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "8",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql_alchemy_conn,
        "AIRFLOW__API__BASE_URL": url,
        "AIRFLOW__API__SECRET_KEY": "local-test-only",
        "AIRFLOW__API_AUTH__JWT_SECRET": "local-test-only-jwt-secret-of-enough-length",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")]),
        **(env or {}),
    }
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], env=full_env, check=True, capture_output=True, timeout=600
    )
    stack = AirflowStack(url=url, home=home, env=full_env, port=port)
    try:
        for name, _ in COMPONENTS:
            stack.start(name)
        wait_healthy(stack)
        log.info("Airflow is up at %s (home %s)", url, home)
        yield stack
    finally:
        for proc in stack.killed:  # what a killed component left running
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in stack.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in stack.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


def _socket_ports(pid: int) -> set[int]:
    """The local TCP ports of the sockets process ``pid`` holds open (from ``/proc``)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def wait_healthy(stack: AirflowStack) -> None:
    """Until the API answers and names the scheduler healthy; fail naming a component that exited."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        for name, proc in stack.procs.items():
            if proc.poll() is not None:
                raise AirflowStackError(f"airflow {name} exited with {proc.returncode}:\n{stack.logs(name)[-3000:]}")
        with contextlib.suppress(AirflowStackError, urllib.error.URLError, ConnectionError, TimeoutError):
            health = stack.api("GET", "/monitor/health", timeout=5)
            if health["scheduler"]["status"] == "healthy":
                return
        time.sleep(1)
    raise AirflowStackError(
        f"Airflow did not become healthy in {STARTUP_TIMEOUT_S}s:\n{stack.logs('api-server')[-3000:]}"
    )
