"""The memory of ``verify``'s backfill-wide id check, measured: ``N`` synthetic message ids (default 10 million)
through :class:`es_backfill.records.MessageIds`, kept in memory and spilled to disk, each in a process of its
own; prints each one's peak RSS (``getrusage``), seconds and the temporary disk it writes.

    .venv/bin/python -m include.dev.verify_memory [N]
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def child(count: int, spill: bool) -> None:
    sys.path.insert(0, str(ROOT / "plugins"))
    from es_backfill.records import MessageIds

    started = time.perf_counter()
    ids = MessageIds("message_id", spill=spill)
    for n in range(count):
        ids.add(f"msg-{n:012d}", "")
    disk = count * (16 + 4 + len(f"msg-{0:012d}")) if spill else 0  # a digest, a length and the id, per id
    problems = ids.problems()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds = time.perf_counter() - started
    print(json.dumps({"spill": spill, "peak_mib": peak_mib, "seconds": seconds, "disk_mib": disk / 2**20,
                      "problems": problems}))  # fmt: skip


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000
    for spill in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            code = f"from include.dev.verify_memory import child; child({count}, {spill})"
            done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={"TMPDIR": tmp, "PATH": "/usr/bin"},
                                  capture_output=True, text=True, check=True, timeout=3600)  # fmt: skip
            result = json.loads(done.stdout)
            shutil.rmtree(tmp, ignore_errors=True)
        kind = "spilled to disk" if spill else "in memory"
        print(
            f"{count:,} ids, {kind}: peak RSS {result['peak_mib']:,.0f} MiB, {result['seconds']:.1f} s, "
            f"temporary disk {result['disk_mib']:,.0f} MiB, problems {result['problems']}"
        )


if __name__ == "__main__":
    main()
