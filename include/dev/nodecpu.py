"""What a benchmark contender costs the search engine's node: its CPU time, in all and by thread.

A node started here (:class:`include.dev.servers.elasticsearch.RunningCluster` with a ``pid``) is measured from
``/proc``: the user and system time of every process in the node's tree (the launcher and the server JVM, all
their threads), read before and after a contender. Its threads are named with the JDK's ``jcmd <pid>
Thread.print``, which prints each Java and VM thread's own CPU time (``cpu=...ms``); the difference, grouped by
thread pool (``search``, ``transport_worker``, ``GC``, ``JIT`` ...), says where the node's time went. A cluster
at ``ES_URL`` is measured with ``GET /_nodes/stats/process`` (``cpu.total_in_millis`` summed over its nodes),
without a breakdown.

:func:`clear_caches` empties the query, request and fielddata caches (``POST /_cache/clear``), so no contender
benefits from the one before it: a one-time backfill never repeats a query.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

TICKS_PER_S = os.sysconf("SC_CLK_TCK")
REQUEST_TIMEOUT_S = 60
JCMD_TIMEOUT_S = 60
_THREAD_LINE = re.compile(r'^"(?P<name>[^"]+)"[^\n]*?\bcpu=(?P<ms>[\d.]+)ms', re.MULTILINE)
_POOL = re.compile(r"^[^\[]+\[[^\]]*\]\[(?P<pool>[^\]]+)\]")  # elasticsearch[node][search][T#3] -> search
_VM_GROUPS = (
    (re.compile(r"^(GC Thread|G1 |Parallel GC|VM Periodic|G1 Service)"), "GC"),
    (re.compile(r"^C[12] CompilerThread"), "JIT"),
)


@dataclass(frozen=True)
class Usage:
    """The node's CPU seconds at one moment: in all, and per thread group (empty where not known)."""

    total_s: float
    threads: dict[str, float]

    def minus(self, before: Usage) -> Usage:
        groups = Counter(self.threads)
        groups.subtract(before.threads)
        return Usage(self.total_s - before.total_s, {name: round(s, 3) for name, s in groups.items() if s > 0.0005})


class NodeMeter:
    """Reads the node's CPU usage; :meth:`usage` before and after a contender, :meth:`Usage.minus` between."""

    def __init__(self, url: str, pid: int | None = None, java_home: Path | None = None) -> None:
        self.url = url.rstrip("/")
        self.pid = pid
        self.java_home = java_home

    @property
    def source(self) -> str:
        if self.pid is None:
            return "GET /_nodes/stats/process (cpu.total_in_millis)"
        return f"/proc of the node's process tree (pid {self.pid}), threads from jcmd Thread.print"

    def usage(self) -> Usage:
        if self.pid is None:
            stats = _get_json(f"{self.url}/_nodes/stats/process")
            total_ms = sum(node["process"]["cpu"]["total_in_millis"] for node in stats["nodes"].values())
            return Usage(total_ms / 1000, {})
        tree = _process_tree(self.pid)
        total = sum(_cpu_ticks(pid) for pid in tree) / TICKS_PER_S
        return Usage(total, self._threads(tree))

    def _threads(self, tree: list[int]) -> dict[str, float]:
        """CPU seconds per thread group of the server JVM (the tree's last Java process), from jcmd."""
        jvm = next((pid for pid in reversed(tree) if _is_java(pid)), None)
        if jvm is None or self.java_home is None:
            return {}
        run_as = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"] if os.geteuid() == 0 else []
        done = subprocess.run(
            [*run_as, str(self.java_home / "bin" / "jcmd"), str(jvm), "Thread.print"],
            capture_output=True, text=True, timeout=JCMD_TIMEOUT_S, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            log.warning("jcmd %s Thread.print failed (%s): %s", jvm, done.returncode, done.stderr[-500:])
            return {}
        groups: Counter[str] = Counter()
        for match in _THREAD_LINE.finditer(done.stdout):
            groups[thread_group(match["name"])] += float(match["ms"]) / 1000
        return dict(groups)


def thread_group(name: str) -> str:
    """The pool a JVM thread belongs to: ``search`` for ``elasticsearch[node-1][search][T#3]``, ``GC``, ``JIT``,
    or the name without its number."""
    pool = _POOL.match(name)
    if pool:
        return pool["pool"]
    for pattern, group in _VM_GROUPS:
        if pattern.match(name):
            return group
    return re.sub(r"[#\-\s]*\d+$", "", name)


def clear_caches(url: str) -> None:
    """``POST /_cache/clear`` on every index: the query, request and fielddata caches."""
    request = urllib.request.Request(f"{url.rstrip('/')}/_cache/clear", data=b"", method="POST")  # noqa: S310
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S):  # noqa: S310 - the bench's own cluster
        pass


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=REQUEST_TIMEOUT_S) as response:  # noqa: S310 - the bench's cluster
        return json.load(response)


def _process_tree(root: int) -> list[int]:
    """``root`` and its descendants, parents first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int(_stat_fields(int(entry.name))[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    tree, queue = [], [root]
    while queue:
        pid = queue.pop(0)
        tree.append(pid)
        queue += sorted(children.get(pid, []))
    return tree


def _stat_fields(pid: int) -> list[str]:
    """``/proc/<pid>/stat`` after the command name (which may hold spaces): state, ppid, ..."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def _cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid``, every thread, in clock ticks (0 if it has ended)."""
    try:
        fields = _stat_fields(pid)
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)


def _is_java(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/exe").resolve().name == "java"
    except OSError:
        return False
