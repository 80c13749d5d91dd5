"""The local servers' ports: two processes starting servers side by side (``make test`` runs two pytest
processes) are never given the same port, and a dead process's ports are given again."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from include.dev.servers import ports

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def registry(tmp_path, monkeypatch) -> Path:
    """Claims of the test's own, and every port bindable: what runs beside the test listens on none of them."""
    monkeypatch.setattr(ports, "CLAIMS", tmp_path / "claims")
    monkeypatch.setattr(ports, "_mine", [])
    monkeypatch.setattr(ports, "_bindable", lambda port: True)
    return tmp_path / "claims"


def _other_process(registry: Path, count: int, *, low: int, high: int, stay: bool) -> subprocess.Popen[str]:
    """A process that takes ``count`` ports from ``low``..``high``, prints them, and stays alive if asked."""
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from include.dev.servers import ports
        ports.CLAIMS = Path({str(registry)!r})
        ports._candidates = lambda first, last: ({low}, {high})
        ports._bindable = lambda port: True
        print(" ".join(str(ports.free_port()) for _ in range({count})), flush=True)
        if {stay}:
            sys.stdin.read()
        """
    )
    return subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def test_two_processes_are_never_given_the_same_port(registry, monkeypatch):
    low = ports.LOWEST
    monkeypatch.setattr(ports, "_candidates", lambda first, last: (low, low + 2000))
    other = _other_process(registry, 400, low=low, high=low + 2000, stay=True)
    try:
        theirs = set(map(int, other.stdout.readline().split()))
        ours = {ports.free_port() for _ in range(400)}
    finally:
        other.communicate(timeout=30)
    assert len(theirs) == len(ours) == 400  # without the claims, 400 + 400 of 2,000 ports would meet
    assert not theirs & ours


def test_a_running_process_keeps_its_ports_and_an_ended_ones_are_given_again(registry, monkeypatch):
    low = ports.LOWEST
    monkeypatch.setattr(ports, "_candidates", lambda first, last: (low, low + 3))
    other = _other_process(registry, 3, low=low, high=low + 3, stay=True)
    held = set(map(int, other.stdout.readline().split()))
    assert len(held) == 3
    with pytest.raises(RuntimeError, match="No free port found"):
        ports.free_port()
    other.communicate(timeout=30)  # it exits, releasing its claims
    assert ports.free_port() in held


def test_the_ports_of_a_killed_process_are_given_again(registry, monkeypatch):
    low = ports.LOWEST
    monkeypatch.setattr(ports, "_candidates", lambda first, last: (low, low + 3))
    killed = _other_process(registry, 3, low=low, high=low + 3, stay=True)
    held = set(map(int, killed.stdout.readline().split()))
    killed.kill()  # no exit handler runs: its claims stay behind
    killed.communicate(timeout=30)
    assert len([claim for claim in registry.iterdir() if claim.name != ".lock"]) == 3
    assert {ports.free_port() for _ in range(3)} == held


def test_ports_come_from_outside_the_ephemeral_range_where_it_leaves_room_else_the_kernel_picks(registry):
    assert ports._candidates(32768, 60999) == (15000, 32768)  # Linux's default range
    assert ports._candidates(10000, 40000) == (40001, 65536)
    assert ports._candidates(1024, 65535) is None  # a tuned host
    assert 1024 <= ports.free_port() < 65536
