"""``make servers`` stops its servers on the first Ctrl-C or SIGTERM, and a second one (``make`` passes a
SIGTERM sent to its process group on to us) cannot cut that shutdown short."""

from __future__ import annotations

import os
import signal
import time

import pytest

from include.dev.servers.__main__ import _interrupt_once


@pytest.fixture
def restored_handlers():
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def _deliver(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(0.05)  # Python runs the handler between bytecodes of the main thread


@pytest.mark.parametrize("first", [signal.SIGINT, signal.SIGTERM])
def test_the_first_signal_interrupts_and_later_ones_are_ignored(restored_handlers, first):
    signal.signal(signal.SIGINT, _interrupt_once)
    signal.signal(signal.SIGTERM, _interrupt_once)
    with pytest.raises(KeyboardInterrupt):
        _deliver(first)
    stopped = []
    for signum in (signal.SIGTERM, signal.SIGINT):  # arriving while the servers are being stopped
        _deliver(signum)
        stopped.append(signum)
    assert stopped == [signal.SIGTERM, signal.SIGINT]
