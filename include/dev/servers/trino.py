"""A Trino server (Athena's engine) for tests: its Hive connector over a file metastore on local disk, reading
the S3 server through Trino's native S3 file system.

The server is ``io.trino:trino-server`` from Maven Central (about 820 MB once, cached in the local Maven
repository), unpacked into the cache directory with only its Hive plugin, and run on a JDK 24+ (Temurin 25
here). It starts in about 15-25 s and takes about 600 MB. :class:`RunningTrino` sends SQL through Trino's
HTTP protocol (``POST /v1/statement``, then ``nextUri`` until the query ends). The JIT stops at its first tier:
the tests' few queries do not repay the optimising compiler's CPU, which the suite's other process needs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from include.dev.servers.elasticsearch import (
    CACHE_DIR,
    JVM_ROOT,
    _install_lock,
    _java_major,
    _stop,
    _tail,
    fetch_maven_zip,
)
from include.dev.servers.ports import free_port

log = logging.getLogger(__name__)

TRINO_VERSION = "476"
JAVA_MIN = 24
START_TIMEOUT_S = 180
QUERY_TIMEOUT_S = 300
JVM_CONFIG = """-server
-Xmx2G
-XX:TieredStopAtLevel=1
-XX:InitialRAMPercentage=5
-XX:+UseG1GC
-XX:+ExplicitGCInvokesConcurrent
-XX:+ExitOnOutOfMemoryError
-XX:ReservedCodeCacheSize=256M
-XX:PerMethodRecompilationCutoff=10000
-XX:PerBytecodeRecompilationCutoff=10000
-Djdk.attach.allowAttachSelf=true
-Djdk.nio.maxCachedBufferSize=2000000
-Dfile.encoding=UTF-8
-XX:+EnableDynamicAgentLoading
"""


class TrinoError(RuntimeError):
    """Trino could not be started, or a query failed (the message is Trino's)."""


@dataclass(frozen=True)
class RunningTrino:
    url: str
    home: Path
    version: str
    metastore: Path  # the file metastore's root: a folder per schema, one per table

    HEADERS: ClassVar[dict[str, str]] = {"X-Trino-User": "test", "X-Trino-Catalog": "hive", "X-Trino-Schema": "default"}

    def register_glue_table(self, table_input: dict[str, Any]) -> None:
        """Put a table into the file metastore as the Glue Data Catalog's ``TableInput`` describes it (columns with
        their Hive types, SerDe and its parameters, location, and its properties, among them Athena's partition
        projection, which Trino's Hive connector also reads), in the schema ``default``."""
        storage = table_input["StorageDescriptor"]
        formats = {"org.openx.data.jsonserde.JsonSerDe": "OPENX_JSON",
                   "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe": "PARQUET"}  # fmt: skip
        schema = {
            "writerVersion": self.version,
            "owner": "test",
            "tableType": table_input["TableType"],
            "dataColumns": [{"name": c["Name"], "type": c["Type"], "properties": {}} for c in storage["Columns"]],
            "partitionColumns": [
                {"name": c["Name"], "type": c["Type"], "properties": {}} for c in table_input["PartitionKeys"]
            ],
            "parameters": table_input["Parameters"],
            "storageFormat": formats[storage["SerdeInfo"]["SerializationLibrary"]],
            "serdeParameters": storage["SerdeInfo"]["Parameters"],
            "externalLocation": storage["Location"],
            "columnStatistics": {},
        }
        folder = self.metastore / "default" / table_input["Name"]
        folder.mkdir(parents=True)
        (folder / ".trinoSchema").write_text(json.dumps(schema))

    def query(self, sql: str) -> list[list[Any]]:
        """The rows of ``sql`` (one statement), or :class:`TrinoError` with Trino's message. Retried while the
        server has no worker yet (its own announces itself a moment after the server answers)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                return self._query(sql)
            except TrinoError as err:
                if "NO_NODES_AVAILABLE" not in str(err) or time.monotonic() > deadline:
                    raise
            time.sleep(0.5)

    def _query(self, sql: str) -> list[list[Any]]:
        request = urllib.request.Request(
            f"{self.url}/v1/statement", data=sql.encode(), headers=self.HEADERS, method="POST"
        )
        rows: list[list[Any]] = []
        deadline = time.monotonic() + QUERY_TIMEOUT_S
        while True:
            with urllib.request.urlopen(request, timeout=60) as response:
                body = json.load(response)
            if "error" in body:
                error = body["error"]
                raise TrinoError(f"{error.get('errorName')}: {error.get('message')}\nin: {sql}")
            rows += body.get("data", [])
            if "nextUri" not in body:
                return rows
            if time.monotonic() > deadline:
                raise TrinoError(f"query did not finish within {QUERY_TIMEOUT_S}s: {sql}")
            request = urllib.request.Request(body["nextUri"], headers=self.HEADERS)


def install(version: str = TRINO_VERSION) -> Path:
    """The server unpacked into the cache (once), with only the Hive plugin (the others are most of its size)."""
    archive = fetch_maven_zip("io.trino", "trino-server", version, "Trino", packaging="tar.gz")
    name = f"trino-server-{version}"
    home = CACHE_DIR / name
    with _install_lock(name):
        if not (home / "bin" / "launcher").is_file():
            staging = Path(tempfile.mkdtemp(dir=CACHE_DIR))
            try:
                with tarfile.open(archive) as tar:
                    members = [m for m in tar if _wanted(m.name, name)]
                    tar.extractall(staging, members=members, filter="tar")
                if home.exists():  # a partial unpack from an interrupted run
                    shutil.rmtree(home)
                (staging / name).rename(home)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return home


def _wanted(member: str, root: str) -> bool:
    parts = member.split("/")
    return parts[0] == root and not (len(parts) > 2 and parts[1] == "plugin" and parts[2] != "hive")


def find_java_home() -> Path:
    """``TRINO_JAVA_HOME`` if set, else the newest JDK under /usr/lib/jvm that Trino runs on."""
    override = os.environ.get("TRINO_JAVA_HOME")
    if override:
        return Path(override)
    found = sorted((major, str(home)) for home in JVM_ROOT.glob("*") if (major := _java_major(home) or 0) >= JAVA_MIN)
    if not found:
        raise TrinoError(f"Trino {TRINO_VERSION} needs Java {JAVA_MIN}+; none found under {JVM_ROOT}")
    return Path(found[-1][1])


def _write_config(etc: Path, data: Path, port: int, s3_endpoint: str) -> None:
    (etc / "catalog").mkdir(parents=True)
    (etc / "node.properties").write_text(f"node.environment=test\nnode.id=trino-test\nnode.data-dir={data}\n")
    (etc / "jvm.config").write_text(JVM_CONFIG)
    (etc / "config.properties").write_text(
        f"coordinator=true\nnode-scheduler.include-coordinator=true\nhttp-server.http.port={port}\n"
        f"discovery.uri=http://127.0.0.1:{port}\nquery.max-memory=1GB\nquery.max-memory-per-node=512MB\n"
        "memory.heap-headroom-per-node=256MB\n"
    )
    (etc / "catalog" / "hive.properties").write_text(
        "connector.name=hive\nhive.metastore=file\nhive.metastore.catalog.dir=local:///metastore\n"
        f"fs.native-local.enabled=true\nlocal.location={data}\nhive.metastore.user=test\n"
        "hive.recursive-directories=true\nhive.non-managed-table-writes-enabled=true\n"
        f"fs.native-s3.enabled=true\ns3.endpoint={s3_endpoint}\ns3.path-style-access=true\ns3.region=us-east-1\n"
        "s3.aws-access-key=testing\ns3.aws-secret-key=testing\n"
    )
    (data / "metastore").mkdir(parents=True)


@contextlib.contextmanager
def running_trino(s3_endpoint: str, version: str = TRINO_VERSION) -> Iterator[RunningTrino]:
    """Trino with the catalog ``hive`` over the S3 server at ``s3_endpoint``; stopped on exit."""
    home = install(version)
    java = find_java_home()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="es-backfill-trino-") as workdir:
        etc, data = Path(workdir) / "etc", Path(workdir) / "data"
        _write_config(etc, data, port, s3_endpoint)
        server_log = data / "server.log"
        env = {**os.environ, "JAVA_HOME": str(java), "PATH": f"{java / 'bin'}:{os.environ['PATH']}"}
        cmd = [str(home / "bin" / "launcher"), "run", f"--etc-dir={etc}", f"--data-dir={data}",
               f"--server-log-file={server_log}"]  # fmt: skip
        started = time.monotonic()
        with (data / "launcher.log").open("wb") as output:
            proc = subprocess.Popen(cmd, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_until_started(url, proc, data)
            log.info("Started Trino %s at %s on Java %s in %.1fs", version, url, java, time.monotonic() - started)
            yield RunningTrino(url, home, version, data / "metastore")
        finally:
            _stop(proc)


def _wait_until_started(url: str, proc: subprocess.Popen, data: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TrinoError(f"Trino exited with {proc.returncode}:\n{_tail(data / 'launcher.log')}")
        with (
            contextlib.suppress(urllib.error.URLError, OSError, ValueError),
            urllib.request.urlopen(f"{url}/v1/info", timeout=5) as response,
        ):
            if not json.load(response).get("starting", True):
                return
        time.sleep(0.5)
    raise TrinoError(f"Trino did not start within {START_TIMEOUT_S}s:\n{_tail(data / 'launcher.log')}")
