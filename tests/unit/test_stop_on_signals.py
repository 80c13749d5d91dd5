"""``make servers``, ``make demo`` and pytest stop their servers on the first Ctrl-C or SIGTERM, a second one at
once (``make`` passes a SIGTERM sent to its process group on to us) cannot cut that shutdown short, and
``dag.test()`` (which swallows an interrupt inside a task and installs its own SIGTERM handler) does not stop them
from working."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from include.dev.servers import signals
from include.dev.servers.signals import airflow_in_process, stop_on_signals

ROOT = Path(__file__).resolve().parents[2]
INSTALL = signal.signal


@pytest.fixture
def restored_handlers(monkeypatch):
    monkeypatch.setattr(signals, "_last_interrupt", None)
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def _deliver(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(0.05)  # Python runs the handler between bytecodes of the main thread


@pytest.mark.parametrize("first", [signal.SIGINT, signal.SIGTERM])
def test_the_first_signal_interrupts_and_those_right_after_it_are_ignored(restored_handlers, first):
    stop_on_signals()
    with pytest.raises(KeyboardInterrupt):
        _deliver(first)
    stopped = []
    for signum in (signal.SIGTERM, signal.SIGINT):  # arriving while the servers are being stopped
        _deliver(signum)
        stopped.append(signum)
    assert stopped == [signal.SIGTERM, signal.SIGINT]


def test_a_signal_after_a_while_interrupts_again_as_a_second_ctrl_c_does(restored_handlers, monkeypatch):
    monkeypatch.setattr(signals, "DUPLICATE_S", 0.2)
    stop_on_signals()
    with pytest.raises(KeyboardInterrupt):
        _deliver(signal.SIGINT)
    time.sleep(0.3)
    with pytest.raises(KeyboardInterrupt):
        _deliver(signal.SIGTERM)


def _task_as_airflow_runs_it() -> str:
    """What ``dag.test()`` does for each task: installs its own SIGTERM handler, and turns any BaseException
    the task raises (a KeyboardInterrupt from a signal too) into a failed task."""
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        _deliver(signal.SIGTERM)  # CI cancelling the run while the task runs
    except BaseException:
        return "failed"
    return "success"


def test_a_signal_dag_test_swallows_stops_the_run_once_dag_test_returns(restored_handlers):
    stop_on_signals()
    states = []
    with pytest.raises(KeyboardInterrupt), airflow_in_process():
        states += [_task_as_airflow_runs_it()]
    assert states == ["failed"]  # the handler stayed ours; the task failed; then the interrupt was raised again
    assert signal.getsignal(signal.SIGTERM) is signal.getsignal(signal.SIGINT) is signals._interrupt
    assert signal.signal is INSTALL  # no longer patched


def test_without_our_handlers_dag_test_installs_its_own_as_before(restored_handlers):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with airflow_in_process():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN


def test_later_signals_are_caught_not_ignored_so_programs_started_during_shutdown_can_be_stopped(restored_handlers):
    stop_on_signals()
    with pytest.raises(KeyboardInterrupt):
        _deliver(signal.SIGTERM)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    child.terminate()
    assert child.wait(timeout=30) == -signal.SIGTERM


def test_a_pytest_run_sent_sigterm_twice_tears_its_fixtures_down(tmp_path):
    """As CI cancelling ``make test`` does: the fixture that started a server still stops it."""
    ready, stopped = tmp_path / "ready", tmp_path / "stopped"
    (tmp_path / "conftest.py").write_text("from tests.conftest import pytest_configure  # noqa: F401\n")
    (tmp_path / "test_long.py").write_text(
        "import pathlib, time\nimport pytest\n\n"
        "@pytest.fixture(scope='session')\ndef server():\n    yield\n"
        f"    time.sleep(0.5)\n    pathlib.Path({str(stopped)!r}).write_text('stopped')\n\n"
        f"def test_long(server):\n    pathlib.Path({str(ready)!r}).touch()\n    time.sleep(60)\n"
    )
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()[0]
        time.sleep(0.05)
    run.send_signal(signal.SIGTERM)
    time.sleep(0.2)  # the second arrives during the teardown's sleep
    run.send_signal(signal.SIGTERM)
    output = run.communicate(timeout=60)[0]
    assert stopped.read_text() == "stopped", output
    assert "KeyboardInterrupt" in output
