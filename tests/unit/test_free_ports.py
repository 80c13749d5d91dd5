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
    monkeypatch.setattr(ports, "CLAIMS", tmp_path / "claims")
    monkeypatch.setattr(ports, "_mine", [])
    return tmp_path / "claims"


def _other_process(registry: Path, count: int, *, low: int, high: int, stay: bool) -> subprocess.Popen[str]:
    """A process that takes ``count`` ports from ``low``..``high``, prints them, and stays alive if asked."""
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from include.dev.servers import ports
        ports.CLAIMS = Path({str(registry)!r})
        ports._candidates = lambda: ({low}, {high})
        print(" ".join(str(ports.free_port()) for _ in range({count})), flush=True)
        if {stay}:
            sys.stdin.read()
        """
    )
    return subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def test_two_processes_are_never_given_the_same_port(registry, monkeypatch):
    low, _ = ports._candidates()
    monkeypatch.setattr(ports, "_candidates", lambda: (low, low + 2000))
    other = _other_process(registry, 400, low=low, high=low + 2000, stay=True)
    try:
        theirs = set(map(int, other.stdout.readline().split()))
        ours = {ports.free_port() for _ in range(400)}
    finally:
        other.communicate(timeout=30)
    assert len(theirs) == len(ours) == 400  # without the claims, 400 + 400 of 2,000 ports would meet
    assert not theirs & ours


def test_a_running_process_keeps_its_ports_and_an_ended_ones_are_given_again(registry, monkeypatch):
    low, _ = ports._candidates()
    monkeypatch.setattr(ports, "_candidates", lambda: (low, low + 3))
    other = _other_process(registry, 3, low=low, high=low + 3, stay=True)
    held = set(map(int, other.stdout.readline().split()))
    assert len(held) == 3
    with pytest.raises(RuntimeError, match="No free port found"):
        ports.free_port()
    other.communicate(timeout=30)  # it exits, releasing its claims
    assert ports.free_port() in held


def test_the_ports_of_a_killed_process_are_given_again(registry, monkeypatch):
    low, _ = ports._candidates()
    monkeypatch.setattr(ports, "_candidates", lambda: (low, low + 3))
    killed = _other_process(registry, 3, low=low, high=low + 3, stay=True)
    held = set(map(int, killed.stdout.readline().split()))
    killed.kill()  # no exit handler runs: its claims stay behind
    killed.communicate(timeout=30)
    assert len([claim for claim in registry.iterdir() if claim.name != ".lock"]) == 3
    assert {ports.free_port() for _ in range(3)} == held
