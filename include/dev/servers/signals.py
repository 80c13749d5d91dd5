"""Stop on SIGTERM as on Ctrl-C, so the servers a process started (each in a session of its own, which a signal
to our process group does not reach) are stopped either way: by ``make servers``, ``make demo`` and pytest.

A SIGINT or SIGTERM raises :class:`KeyboardInterrupt`, which runs the context managers and fixtures that stop
the servers; one that comes within :data:`DUPLICATE_S` of the last does nothing, so it cannot cut that shutdown
short (``make`` passes a SIGTERM sent to its process group on to its child, which then gets two at once). A
later one interrupts again, as a second Ctrl-C does. The handler is Python code, not ``SIG_IGN``, so the
programs started during a shutdown do not inherit an ignored signal.

``dag.test()`` runs each task in this process: it installs a SIGTERM handler of its own (and leaves it), and
turns a KeyboardInterrupt inside a task into a failed task. :func:`airflow_in_process` keeps our handlers in
place around it and raises the interrupt a task swallowed once it returns.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

DUPLICATE_S = 2.0
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_last_interrupt: float | None = None  # time.monotonic() of the last interrupt raised


def stop_on_signals() -> None:
    """Make a SIGINT or SIGTERM this process gets raise :class:`KeyboardInterrupt` (main thread only)."""
    for signum in _SIGNALS:
        signal.signal(signum, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    global _last_interrupt
    now = time.monotonic()
    if _last_interrupt is not None and now - _last_interrupt < DUPLICATE_S:
        return  # the same stop, passed on by make: the shutdown it started goes on
    _last_interrupt = now
    raise KeyboardInterrupt


@contextlib.contextmanager
def airflow_in_process() -> Iterator[None]:
    """Around ``dag.test()``: our handlers stay (Airflow's task runner cannot replace them meanwhile), and an
    interrupt a task turned into a failed task is raised again when the block ends."""
    before = _last_interrupt
    install = signal.signal

    def keep_ours(signum: int, handler: Callable[[int, Any], Any] | int | None) -> Any:
        if signum in _SIGNALS and signal.getsignal(signum) is _interrupt:
            return _interrupt
        return install(signum, handler)

    with mock.patch.object(signal, "signal", keep_ours):
        yield
    if _last_interrupt != before:
        raise KeyboardInterrupt
