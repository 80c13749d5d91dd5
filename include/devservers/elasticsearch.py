"""A real single-node Elasticsearch on this machine, without Docker.

Elastic publishes a runnable server archive to Maven Central
(``org.elasticsearch.distribution.integ-test-zip:elasticsearch:<version>:zip``).
This module fetches it once through Maven (so it lands in, and is reused from,
the local Maven repository), unpacks it into a cache directory, and starts a
node bound to 127.0.0.1 on a free port with a small heap, disk watermarks off
and its data in a temporary directory. Elasticsearch refuses to run as root,
so when we are root the node runs as ``nobody``.

Tests, the demo and the benchmarks use :func:`running_elasticsearch`; when
``ES_URL`` is set, that cluster is used instead and nothing is started.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from include.devservers.ports import free_port

log = logging.getLogger(__name__)

ES_VERSION = os.environ.get("ES_BACKFILL_ES_VERSION", "9.5.4")
# The version the rest-root plugin is built for (its pom's elasticsearch.version).
REST_ROOT_PLUGIN_VERSION = "9.5.4"
# A cache every user can traverse: the node runs as `nobody`, who cannot enter /root.
CACHE_DIR = Path(os.environ.get("ES_BACKFILL_CACHE", "/var/tmp/es-backfill"))
REST_ROOT_PLUGIN = Path(__file__).resolve().parents[1] / "elasticsearch" / "rest-root-plugin"
STARTUP_TIMEOUT_S = 180
HEAP = os.environ.get("ES_BACKFILL_ES_HEAP", "512m")


class ElasticsearchStartError(RuntimeError):
    """The local Elasticsearch node could not be fetched, installed or started."""


@dataclass(frozen=True)
class RunningCluster:
    url: str
    version: str
    started_here: bool


def elasticsearch_connection_uri(url: str, **extra: object) -> str:
    """The Airflow connection (JSON form) for a cluster at ``url``, e.g. for ``AIRFLOW_CONN_ELASTICSEARCH_DEFAULT``."""
    parts = urlsplit(url)
    return json.dumps(
        {
            "conn_type": "elasticsearch",
            "host": parts.hostname,
            "port": parts.port,
            "schema": parts.scheme,
            "extra": extra,
        }
    )


def _maven_repository() -> Path:
    return Path(os.environ.get("MAVEN_REPO", Path.home() / ".m2" / "repository"))


def fetch_archive(version: str = ES_VERSION) -> Path:
    """Return the server archive, downloading it through Maven only if it is not cached."""
    artifact = f"org.elasticsearch.distribution.integ-test-zip:elasticsearch:{version}:zip"
    archive = (
        _maven_repository()
        / "org/elasticsearch/distribution/integ-test-zip/elasticsearch"
        / version
        / f"elasticsearch-{version}.zip"
    )
    if archive.is_file():
        log.info("Reusing cached Elasticsearch archive %s", archive)
        return archive
    log.info("Downloading %s from Maven Central (once; cached in %s)", artifact, _maven_repository())
    cmd = ["mvn", "-q", "-B", "dependency:get", f"-Dartifact={artifact}", "-Dtransitive=false"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    if result.returncode != 0 or not archive.is_file():
        raise ElasticsearchStartError(
            f"Could not fetch {artifact} with {' '.join(cmd)} (exit {result.returncode}):\n"
            f"{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )
    return archive


def find_java_home(version: str = ES_VERSION) -> Path:
    """A JDK for this Elasticsearch: ``ES_JAVA_HOME``, or the newest under /usr/lib/jvm that it supports
    (Elasticsearch 9 needs Java 21+; 8 runs on 17..21, whose security manager later JDKs dropped)."""
    if os.environ.get("ES_JAVA_HOME"):
        return Path(os.environ["ES_JAVA_HOME"])
    low, high = (21, 99) if int(version.split(".")[0]) >= 9 else (17, 21)
    candidates = []
    for home in Path("/usr/lib/jvm").glob("*"):
        release = home / "release"
        if not release.is_file():
            continue
        for line in release.read_text().splitlines():
            if line.startswith("JAVA_VERSION="):
                major = int(line.split("=", 1)[1].strip('"').split(".")[0])
                if low <= major <= high:
                    candidates.append((major, home))
    if not candidates:
        raise ElasticsearchStartError(
            f"Elasticsearch {version} needs Java {low}..{high}; none found under /usr/lib/jvm (set ES_JAVA_HOME)"
        )
    return max(candidates)[1]


def install(archive: Path, version: str = ES_VERSION) -> Path:
    """Unpack the archive into the cache (once) and add the root endpoint plugin."""
    home = CACHE_DIR / f"elasticsearch-{version}"
    if not (home / "bin" / "elasticsearch").is_file():
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=CACHE_DIR))
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(staging)
        for script in (staging / f"elasticsearch-{version}" / "bin").iterdir():
            script.chmod(0o755)
        (staging / f"elasticsearch-{version}").rename(home)
        staging.rmdir()
    if version == REST_ROOT_PLUGIN_VERSION:
        _install_rest_root_plugin(home)
    _make_world_readable(CACHE_DIR)
    return home


def _install_rest_root_plugin(home: Path) -> None:
    # The integ-test distribution leaves out the `rest-root` module, so `GET /` (the client's
    # info() and ping()) would answer 405; our small plugin restores that one endpoint.
    if (home / "plugins" / "rest-root").is_dir():
        return
    result = subprocess.run(
        ["bash", str(REST_ROOT_PLUGIN / "install.sh"), str(home)],
        env={**os.environ, "REST_ROOT_JAVA_HOME": str(find_java_home(REST_ROOT_PLUGIN_VERSION))},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if result.returncode != 0:
        raise ElasticsearchStartError(
            f"Building the rest-root plugin failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )


def _make_world_readable(root: Path) -> None:
    subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True, timeout=300)


def _wait_for_health(url: str, proc: subprocess.Popen, log_file: Path) -> str:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ElasticsearchStartError(
                f"Elasticsearch exited with {proc.returncode} during startup:\n{_tail(log_file)}"
            )
        try:
            with urllib.request.urlopen(f"{url}/_cluster/health?wait_for_status=yellow&timeout=5s", timeout=10) as resp:
                if resp.status == 200:
                    with urllib.request.urlopen(
                        f"{url}/_nodes/_local?filter_path=nodes.*.version", timeout=10
                    ) as nodes:
                        return next(iter(json.load(nodes)["nodes"].values()))["version"]
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    raise ElasticsearchStartError(f"Elasticsearch did not become healthy in {STARTUP_TIMEOUT_S}s:\n{_tail(log_file)}")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def running_elasticsearch(version: str | None = None) -> Iterator[RunningCluster]:
    """Yield a healthy cluster: ``ES_URL`` if set (and no version asked for), otherwise a node started here."""
    if os.environ.get("ES_URL") and version is None:
        yield RunningCluster(url=os.environ["ES_URL"].rstrip("/"), version="external", started_here=False)
        return
    version = version or ES_VERSION
    home = install(fetch_archive(version), version)
    workdir = Path(tempfile.mkdtemp(prefix="es-backfill-node-"))
    http_port, transport_port = free_port(), free_port()
    config = workdir / "config"
    shutil.copytree(home / "config", config)
    (workdir / "data").mkdir()
    (workdir / "logs").mkdir()
    with (config / "elasticsearch.yml").open("a") as yml:
        yml.write(
            "\n".join(
                [
                    "",
                    "network.host: 127.0.0.1",
                    f"http.port: {http_port}",
                    f"transport.port: {transport_port}",
                    "discovery.type: single-node",
                    f"path.data: {workdir / 'data'}",
                    f"path.logs: {workdir / 'logs'}",
                    "cluster.routing.allocation.disk.threshold_enabled: false",
                    "xpack.security.enabled: false",
                    "action.destructive_requires_name: false",
                    "",
                ]
            )
        )
    run_as: list[str] = []
    if os.geteuid() == 0:
        # Elasticsearch refuses to run as root.
        subprocess.run(["chown", "-R", "nobody:nogroup", str(workdir)], check=True, timeout=60)
        workdir.chmod(0o755)
        run_as = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    env = {
        **os.environ,
        "ES_JAVA_HOME": str(find_java_home(version)),
        "ES_PATH_CONF": str(config),
        "ES_JAVA_OPTS": f"-Xms{HEAP} -Xmx{HEAP}",
    }
    log_file = workdir / "stdout.log"
    url = f"http://127.0.0.1:{http_port}"
    with log_file.open("wb") as out:
        proc = subprocess.Popen(
            [*run_as, str(home / "bin" / "elasticsearch")],
            cwd=home,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        version = _wait_for_health(url, proc, log_file)
        log.info("Started Elasticsearch %s at %s (data in %s)", version, url, workdir)
        print(f"Elasticsearch {version} running at {url}", flush=True)
        yield RunningCluster(url=url, version=version, started_here=True)
    finally:
        _stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
