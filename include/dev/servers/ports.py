"""Free TCP ports on the loopback interface for the local servers.

A port is free when nothing listens on it, and it stays ours until the server binds it: ports are taken from
below the kernel's ephemeral range (where the local ports of connections come from, so no client takes one
meanwhile) and claimed in a directory every process on this machine shares (``make test`` runs two pytest
processes, each starting servers). A claim lasts as long as its process; a dead process's claims are taken over.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import random
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

CLAIMS = Path(tempfile.gettempdir()) / "es-backfill-ports"
LOWEST = 15000
TRIES = 200
_mine: list[Path] = []


def free_port() -> int:
    """A port that nothing listens on right now and no other process of ours has been given."""
    low, high = _candidates()
    with _registry() as claims:
        for _ in range(TRIES):
            port = random.randrange(low, high)
            claim = claims / str(port)
            if claim.exists() and _alive(claim):
                continue
            if _bindable(port):
                claim.write_text(str(os.getpid()))
                _mine.append(claim)
                return port
    raise RuntimeError(f"No free port found in {TRIES} tries between {low} and {high} (claims in {CLAIMS})")


def _candidates() -> tuple[int, int]:
    """Below the ephemeral range if it leaves room there (Linux's default starts at 32768), else above it."""
    try:
        first, last = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        first, last = 32768, 60999
    return (LOWEST, first) if first - LOWEST >= 4096 else (last + 1, 65536)


@contextlib.contextmanager
def _registry() -> Iterator[Path]:
    CLAIMS.mkdir(mode=0o777, exist_ok=True)
    with open(CLAIMS / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield CLAIMS


def _alive(claim: Path) -> bool:
    try:
        os.kill(int(claim.read_text()), 0)
    except PermissionError:
        return True  # another user's process
    except (OSError, ValueError):
        return False  # the process is gone (or the claim unreadable): the port can be claimed again
    return True


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@atexit.register
def _release() -> None:
    for claim in _mine:
        claim.unlink(missing_ok=True)
