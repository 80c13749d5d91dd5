"""A real single node of Elasticsearch or OpenSearch on this machine, without Docker.

Elastic and OpenSearch publish runnable server archives to Maven Central
(``org.elasticsearch.distribution.integ-test-zip:elasticsearch:<version>:zip`` and
``org.opensearch.distribution.integ-test-zip:opensearch:<version>:zip``). This module
fetches one once through Maven (so it lands in, and is reused from, the local Maven
repository), unpacks it into a cache directory, and starts a node bound to 127.0.0.1
on free ports with a small heap, disk watermarks off and its data, logs and temp files
in a temporary directory. Neither engine runs as root, so when we are root the node
runs as ``nobody``.

The integ-test archives of Elasticsearch 8.x and 9.x lack the ``rest-root`` module, so
``GET /`` would answer 405 there; a tiny plugin built from include/dev/servers/rest-root-plugin
(for exactly that server version) restores it. Elasticsearch 7.x and OpenSearch still serve
``GET /`` from the server itself.

Tests parametrize over :data:`ENGINES` with :func:`running_engine`; the demo, the benchmarks
and the default fixtures use :func:`running_elasticsearch`, which uses ``ES_URL`` instead
when it is set.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from include.dev.servers.ports import free_port

log = logging.getLogger(__name__)

ES_VERSION = os.environ.get("ES_BACKFILL_ES_VERSION", "9.5.4")
# Every engine the tests can start, as (engine, version): parametrize on this.
ENGINES: tuple[tuple[str, str], ...] = (
    ("elasticsearch", "7.10.2"),
    ("elasticsearch", "7.17.29"),
    ("elasticsearch", "8.19.21"),
    ("elasticsearch", "9.5.4"),
    ("opensearch", "2.19.6"),
    ("opensearch", "3.3.2"),
)
# A cache every user can traverse: the node runs as `nobody`, who cannot enter /root.
CACHE_DIR = Path(os.environ.get("ES_BACKFILL_CACHE", "/var/tmp/es-backfill"))
REST_ROOT_PLUGIN = Path(__file__).resolve().parent / "rest-root-plugin"
JVM_ROOT = Path("/usr/lib/jvm")
STARTUP_TIMEOUT_S = int(os.environ.get("ES_BACKFILL_ES_STARTUP_TIMEOUT_S", "300"))
HEAP = os.environ.get("ES_BACKFILL_ES_HEAP", "512m")


class ElasticsearchStartError(RuntimeError):
    """The local Elasticsearch or OpenSearch node could not be fetched, installed or started."""


@dataclass(frozen=True)
class RunningCluster:
    url: str
    version: str
    started_here: bool
    engine: str = "elasticsearch"
    pid: int | None = None  # of the node's launcher, where it was started here
    java_home: Path | None = None  # the JDK it runs on (its jcmd can attach to it)
    restart: Callable[[], int] | None = None  # where started here: see StartedNode


@dataclass(frozen=True)
class _Distribution:
    engine: str
    display_name: str
    maven_group: str
    # ES_JAVA_HOME, ES_PATH_CONF, ES_JAVA_OPTS, ES_TMPDIR; OPENSEARCH_... for OpenSearch
    env_prefix: str

    @property
    def config_file(self) -> str:
        return f"{self.engine}.yml"

    def java_range(self, version: str) -> tuple[int, int]:
        """The Java majors this version runs on (that we pick from): its security manager needs <= 21
        before Elasticsearch 9 and OpenSearch 3, which need 21+ instead."""
        major = int(version.split(".")[0])
        modern = major >= (9 if self.engine == "elasticsearch" else 3)
        return (21, 99) if modern else (17, 21)


_DISTRIBUTIONS = {
    "elasticsearch": _Distribution(
        "elasticsearch", "Elasticsearch", "org.elasticsearch.distribution.integ-test-zip", "ES"
    ),
    "opensearch": _Distribution("opensearch", "OpenSearch", "org.opensearch.distribution.integ-test-zip", "OPENSEARCH"),
}


def _distribution(engine: str) -> _Distribution:
    try:
        return _DISTRIBUTIONS[engine]
    except KeyError:
        raise ValueError(f"Unknown engine {engine!r}: expected one of {sorted(_DISTRIBUTIONS)}") from None


def elasticsearch_connection_uri(
    url: str, *, login: str | None = None, password: str | None = None, **extra: object
) -> str:
    """The Airflow connection (JSON form) for a cluster at ``url``, e.g. for ``AIRFLOW_CONN_ELASTICSEARCH_DEFAULT``;
    ``login`` and ``password`` (basic auth) only when given, every other keyword in the extra."""
    parts = urlsplit(url)
    credentials = {key: value for key, value in (("login", login), ("password", password)) if value is not None}
    return json.dumps(
        {
            "conn_type": "elasticsearch",
            "host": parts.hostname,
            "port": parts.port,
            "schema": parts.scheme,
            **credentials,
            "extra": extra,
        }
    )


def _maven_repository() -> Path:
    return Path(os.environ.get("MAVEN_REPO", Path.home() / ".m2" / "repository"))


def fetch_archive(version: str = ES_VERSION, engine: str = "elasticsearch") -> Path:
    """Return the server archive, downloading it through Maven only if it is not cached."""
    dist = _distribution(engine)
    return fetch_maven_zip(dist.maven_group, engine, version, dist.display_name)


def fetch_maven_zip(group: str, artifact_id: str, version: str, display_name: str, packaging: str = "zip") -> Path:
    """Return the zip (or other ``packaging``) ``group:artifact_id:version`` (e.g. a server archive or a plugin),
    downloading it through Maven into the local Maven repository only if it is not there yet."""
    artifact = f"{group}:{artifact_id}:{version}:{packaging}"
    folder = _maven_repository() / group.replace(".", "/") / artifact_id / version
    archive = folder / f"{artifact_id}-{version}.{packaging}"
    # Under the lock, so two processes wanting it (make test's two pytest processes) download it once.
    with _install_lock(f"maven-{artifact_id}-{version}.{packaging}"):
        if archive.is_file():
            log.info("Reusing cached %s archive %s", display_name, archive)
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


def _java_major(home: Path) -> int | None:
    release = home / "release"
    if not release.is_file():
        return None
    for line in release.read_text().splitlines():
        if line.startswith("JAVA_VERSION="):
            return int(line.split("=", 1)[1].strip('"').split(".")[0])
    return None


def find_java_home(version: str = ES_VERSION, engine: str = "elasticsearch") -> Path:
    """A JDK for this engine version: ``ES_JAVA_HOME`` (``OPENSEARCH_JAVA_HOME`` for OpenSearch) if set,
    otherwise the newest under /usr/lib/jvm that it supports (see ``_Distribution.java_range``)."""
    dist = _distribution(engine)
    override = os.environ.get(f"{dist.env_prefix}_JAVA_HOME")
    if override:
        return Path(override)
    low, high = dist.java_range(version)
    candidates = []
    for home in JVM_ROOT.glob("*"):
        major = _java_major(home)
        if major is not None and low <= major <= high:
            candidates.append((major, str(home)))
    if not candidates:
        raise ElasticsearchStartError(
            f"{dist.display_name} {version} needs Java {low}..{high}; none found under {JVM_ROOT} "
            f"(set {dist.env_prefix}_JAVA_HOME)"
        )
    return Path(max(candidates)[1])


@contextlib.contextmanager
def _install_lock(name: str) -> Iterator[None]:
    """Serialize downloads, unpacking and plugin builds between processes (``make test`` runs two pytest
    processes side by side)."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with (CACHE_DIR / f".{name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def install(archive: Path, version: str = ES_VERSION, engine: str = "elasticsearch") -> Path:
    """Unpack the archive into the cache (once) and, where the distribution lacks it, add the root endpoint."""
    _distribution(engine)
    name = f"{engine}-{version}"
    home = CACHE_DIR / name
    with _install_lock(name):
        if not (home / "bin" / engine).is_file():
            staging = Path(tempfile.mkdtemp(dir=CACHE_DIR))
            try:
                with zipfile.ZipFile(archive) as zf:
                    zf.extractall(staging)
                for script in (staging / name / "bin").iterdir():
                    script.chmod(0o755)
                if home.exists():  # a partial unpack from an interrupted run
                    shutil.rmtree(home)
                (staging / name).rename(home)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        if _needs_rest_root_plugin(home, engine, version):
            _install_rest_root_plugin(home, version)
        with contextlib.suppress(PermissionError):  # a cache someone else made is theirs to open up
            CACHE_DIR.chmod(0o755)
        _make_world_readable(home)
    return home


def _needs_rest_root_plugin(home: Path, engine: str, version: str) -> bool:
    """Whether ``GET /`` is missing: Elasticsearch moved it from the server into the rest-root module
    (8.x), which the integ-test archive leaves out. 7.x and OpenSearch serve it from the server jar."""
    if engine != "elasticsearch" or (home / "modules" / "rest-root").is_dir():
        return False
    server_jar = home / "lib" / f"elasticsearch-{version}.jar"
    if not server_jar.is_file():
        return True
    with zipfile.ZipFile(server_jar) as jar:
        return "org/elasticsearch/rest/action/RestMainAction.class" not in jar.namelist()


def _install_rest_root_plugin(home: Path, version: str) -> None:
    # install.sh builds the plugin for this exact version only when its sources changed (target/<version>/)
    # and copies it into the home only when it differs, so this is cheap after the first time.
    result = subprocess.run(
        ["bash", str(REST_ROOT_PLUGIN / "install.sh"), str(home), version],
        env={**os.environ, "REST_ROOT_JAVA_HOME": str(find_java_home(version))},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if result.returncode != 0:
        raise ElasticsearchStartError(
            f"Building the rest-root plugin for Elasticsearch {version} failed:\n"
            f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )


def _make_world_readable(root: Path) -> None:
    subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True, timeout=300)


def _node_settings(home: Path, workdir: Path, http_port: int, transport_port: int) -> dict[str, str]:
    """What we append to the node's elasticsearch.yml / opensearch.yml."""
    settings = {
        "network.host": "127.0.0.1",
        "http.port": str(http_port),
        "transport.port": str(transport_port),
        "discovery.type": "single-node",
        "path.data": str(workdir / "data"),
        "path.logs": str(workdir / "logs"),
        "cluster.routing.allocation.disk.threshold_enabled": "false",
        "action.destructive_requires_name": "false",
    }
    # Only where the security module ships (Elasticsearch 7.17+): an unknown setting stops the node,
    # and Elasticsearch 7.10's and OpenSearch's integ-test archives have no x-pack at all.
    if (home / "modules" / "x-pack-security").is_dir():
        settings["xpack.security.enabled"] = "false"
    return settings


def _rewrite_jvm_options(text: str, workdir: Path) -> str:
    """Point jvm.options' relative paths (Elasticsearch 7 and OpenSearch: ``logs/gc.log``, ``logs/hs_err...``,
    ``HeapDumpPath=data``, resolved against the home, which ``nobody`` cannot write and which two nodes
    would share) into this node's own directory. Elasticsearch 8+ already resolves them in path.logs."""
    logs, data = workdir / "logs", workdir / "data"
    text = re.sub(r"(file=|ErrorFile=)logs/", lambda m: f"{m.group(1)}{logs}/", text)
    return re.sub(r"HeapDumpPath=data\b", lambda _: f"HeapDumpPath={data}", text)


def _get_json(url: str, opener: urllib.request.OpenerDirector | None = None) -> dict:
    with (opener or urllib.request.build_opener()).open(url, timeout=10) as resp:
        return json.load(resp)


def _wait_for_health(
    url: str,
    proc: subprocess.Popen,
    log_file: Path,
    display_name: str,
    opener: urllib.request.OpenerDirector | None = None,
) -> str:
    """Poll the cluster health until yellow; return the node's version. ``opener`` carries what a secured
    node needs (its CA, credentials); any error answer (e.g. a security plugin's 503 before its index
    exists) or refused connection counts as not yet up."""
    opener = opener or urllib.request.build_opener()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ElasticsearchStartError(
                f"{display_name} exited with {proc.returncode} during startup:\n{_tail(log_file)}"
            )
        try:
            with opener.open(f"{url}/_cluster/health?wait_for_status=yellow&timeout=5s", timeout=10) as resp:
                if resp.status == 200:
                    nodes = _get_json(f"{url}/_nodes/_local?filter_path=nodes.*.version", opener)
                    return next(iter(nodes["nodes"].values()))["version"]
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    raise ElasticsearchStartError(f"{display_name} did not become healthy in {STARTUP_TIMEOUT_S}s:\n{_tail(log_file)}")


def _check_root_document(
    url: str, engine: str, log_file: Path, opener: urllib.request.OpenerDirector | None = None
) -> None:
    """Our code tells the engine apart by ``GET /``: fail here, with the node's log, if it does not answer."""
    try:
        root = _get_json(url, opener)
    except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError) as exc:
        raise ElasticsearchStartError(f"GET {url}/ failed on the new node: {exc}\n{_tail(log_file)}") from exc
    distribution = root.get("version", {}).get("distribution", "elasticsearch")
    if distribution != engine:
        raise ElasticsearchStartError(f"GET {url}/ describes {distribution!r}, not {engine!r}: {root}")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def running_engine(engine: str, version: str) -> Iterator[RunningCluster]:
    """Start a single node of ``engine`` ("elasticsearch" or "opensearch") ``version`` here, yield it once
    healthy, and stop it (removing its data) on exit. Each call starts its own node, on its own ports."""
    home = install(fetch_archive(version, engine), version, engine)
    with run_node(engine, version, home) as node:
        yield RunningCluster(
            url=node.url, version=node.version, started_here=True, engine=engine, pid=node.pid,
            java_home=find_java_home(version, engine), restart=node.restart,
        )  # fmt: skip


@dataclass(frozen=True)
class StartedNode:
    """A node :func:`run_node` started: its address, the version it reports, its process and directory."""

    url: str
    version: str
    pid: int
    workdir: Path
    startup_s: float
    restart: Callable[[], int]  # stops the node and starts it on the same ports and data; returns the new pid


@contextlib.contextmanager
def run_node(
    engine: str,
    version: str,
    home: Path,
    *,
    settings: Mapping[str, str] | None = None,
    prepare_config: Callable[[Path], None] | None = None,
    scheme: str = "http",
    opener: urllib.request.OpenerDirector | None = None,
    description: str = "",
) -> Iterator[StartedNode]:
    """Start a node from the installed ``home`` on free ports, with its own copy of the config, its data,
    logs and temp files in a new temporary directory (as ``nobody`` when we are root); yield it once healthy
    and ``GET /`` names the engine; stop it and remove the directory on exit.

    For a node set up otherwise (e.g. with the security plugin): ``settings`` are appended to the node's
    ``<engine>.yml`` after ours, ``prepare_config`` gets the node's config directory to add files to before
    the node starts (made readable by the node's user afterwards), ``scheme`` is the node's URL scheme and
    ``opener`` what the health checks send requests with (a CA, credentials); ``description`` follows the
    version in the line printed when the node is up, e.g. ``" (security, TLS)"``."""
    dist = _distribution(engine)
    java_home = find_java_home(version, engine)
    workdir = Path(tempfile.mkdtemp(prefix=f"es-backfill-{engine}-node-"))
    proc: subprocess.Popen | None = None
    try:
        http_port, transport_port = free_port(), free_port()
        config = workdir / "config"
        shutil.copytree(home / "config", config)
        for sub in ("data", "logs", "tmp"):
            (workdir / sub).mkdir()
        jvm_options = config / "jvm.options"
        jvm_options.write_text(_rewrite_jvm_options(jvm_options.read_text(), workdir))
        with (config / dist.config_file).open("a") as yml:
            all_settings = {**_node_settings(home, workdir, http_port, transport_port), **(settings or {})}
            yml.write("\n" + "".join(f"{key}: {value}\n" for key, value in all_settings.items()))
        if prepare_config is not None:
            prepare_config(config)
        run_as: list[str] = []
        if os.geteuid() == 0:
            # Neither engine runs as root.
            subprocess.run(["chown", "-R", "nobody:nogroup", str(workdir)], check=True, timeout=60)
            workdir.chmod(0o755)
            run_as = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        prefix = dist.env_prefix
        env = {
            **os.environ,
            f"{prefix}_JAVA_HOME": str(java_home),
            "JAVA_HOME": str(java_home),  # Elasticsearch 7.10 reads only this one
            f"{prefix}_PATH_CONF": str(config),
            f"{prefix}_JAVA_OPTS": f"-Xms{HEAP} -Xmx{HEAP}",
            f"{prefix}_TMPDIR": str(workdir / "tmp"),
        }
        log_file = workdir / "stdout.log"
        url = f"{scheme}://127.0.0.1:{http_port}"
        started = time.monotonic()

        def launch() -> tuple[subprocess.Popen, str]:
            """Start the node and wait until it is healthy; ``proc`` names it from the start, so a node that
            fails to get healthy (or a Ctrl-C while it starts) is stopped on the way out too."""
            nonlocal proc
            with log_file.open("ab") as out:
                proc = subprocess.Popen(
                    [*run_as, str(home / "bin" / engine)],
                    cwd=home,  # OpenSearch 3's jvm.options names its agent jar relative to the home
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            return proc, _wait_for_health(url, proc, log_file, dist.display_name, opener)

        def restart() -> int:
            """Stop the node and start it again on the same ports and data; its new pid once healthy."""
            assert proc is not None
            _stop(proc)
            return launch()[0].pid

        proc, node_version = launch()
        _check_root_document(url, engine, log_file, opener)
        startup_s = time.monotonic() - started
        log.info(
            "Started %s %s%s at %s on Java %s in %.1fs (data in %s)",
            dist.display_name,
            node_version,
            description,
            url,
            java_home,
            startup_s,
            workdir,
        )
        print(f"{dist.display_name} {node_version}{description} running at {url}", flush=True)
        yield StartedNode(
            url=url, version=node_version, pid=proc.pid, workdir=workdir, startup_s=startup_s, restart=restart
        )
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def running_elasticsearch(version: str | None = None) -> Iterator[RunningCluster]:
    """Yield a healthy cluster: ``ES_URL`` if set (and no version asked for), otherwise an Elasticsearch
    node (``version``, default :data:`ES_VERSION`) started here by :func:`running_engine`."""
    if os.environ.get("ES_URL") and version is None:
        yield RunningCluster(url=os.environ["ES_URL"].rstrip("/"), version="external", started_here=False)
        return
    with running_engine("elasticsearch", version or ES_VERSION) as cluster:
        yield cluster


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
