"""Free TCP ports on the loopback interface for the local servers.

A port is free when nothing listens on it, and it stays ours until the server binds it: ports are taken from
outside the kernel's ephemeral range where it leaves room (where the local ports of connections come from, so
no client takes one meanwhile) and claimed in a directory every process on this machine shares
(``$TMPDIR/es-backfill-ports``; ``make test`` runs two pytest processes, each starting servers). A claim lasts
as long as its process; a dead process's claims are taken over.
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
ROOM = 4096  # ports outside the ephemeral range that make it worth staying out of it
TRIES = 200
_mine: list[Path] = []


def free_port() -> int:
    """A port that nothing listens on right now and no other process of ours has been given."""
    span = _candidates(*_ephemeral_range())
    with _registry() as claims:
        for _ in range(TRIES):
            port = random.randrange(*span) if span else _any_port()
            claim = claims / str(port)
            if claim.exists() and _alive(claim):
                continue
            if _bindable(port):
                claim.write_text(str(os.getpid()))
                with contextlib.suppress(OSError):
                    claim.chmod(0o666)
                _mine.append(claim)
                return port
    raise RuntimeError(f"No free port found in {TRIES} tries ({span or 'any port'}; claims in {CLAIMS})")


def _ephemeral_range() -> tuple[int, int]:
    try:
        first, last = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return first, last


def _candidates(first: int, last: int) -> tuple[int, int] | None:
    """Below the ephemeral range ``first``..``last`` if it leaves room there, else above it; None if neither
    does (the kernel then picks)."""
    if first - LOWEST >= ROOM:
        return LOWEST, first
    if 65535 - last >= ROOM:
        return last + 1, 65536
    return None


def _any_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _registry() -> Iterator[Path]:
    """The claims, locked against every other process for the block (open to every user, who share ports)."""
    CLAIMS.mkdir(exist_ok=True)
    lock_path = CLAIMS / ".lock"
    with open(lock_path, "a") as lock:
        with contextlib.suppress(OSError):  # another user's directory: theirs to open up, as they did
            CLAIMS.chmod(0o1777)
            lock_path.chmod(0o666)
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
    pid = str(os.getpid())
    for claim in _mine:
        with contextlib.suppress(OSError):
            if claim.read_text() == pid:  # not a forked child's parent's
                claim.unlink()
