"""The bench's reading of a node's CPU: thread groups from JVM thread names, differences, and a process tree."""

from __future__ import annotations

import subprocess
import sys

from include.dev.nodecpu import NodeMeter, Usage, thread_group


def test_jvm_threads_are_grouped_by_their_pool_or_kind():
    assert thread_group("elasticsearch[node-1][search][T#3]") == "search"
    assert thread_group("opensearch[n][transport_worker][T#1]") == "transport_worker"
    assert thread_group("GC Thread#1") == "GC" and thread_group("G1 Conc#0") == "GC"
    assert thread_group("C2 CompilerThread0") == "JIT"
    assert thread_group("VM Thread") == "VM Thread" and thread_group("process reaper-12") == "process reaper"


def test_a_usage_difference_keeps_the_groups_that_grew():
    spent = Usage(10.0, {"search": 4.0, "GC": 1.0, "idle": 2.0}).minus(Usage(7.5, {"search": 1.5, "idle": 2.0}))
    assert spent == Usage(2.5, {"search": 2.5, "GC": 1.0})


def test_a_process_tree_counts_its_childrens_cpu():
    burn = "import time\nend = time.process_time() + 0.5\nwhile time.process_time() < end: pass\nprint('done')"
    parent = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {burn!r}])"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    meter = NodeMeter("http://unused", pid=parent.pid)
    seen = 0.0
    while parent.poll() is None:
        seen = max(seen, meter.usage().total_s)  # the child's time, read while it runs
    assert parent.stdout.read().strip() == "done"
    assert seen >= 0.3, seen
