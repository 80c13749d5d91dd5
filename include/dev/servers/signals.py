"""Stop on SIGTERM as on Ctrl-C, so the servers a process started (each in a session of its own, which a signal
to our process group does not reach) are stopped either way: by ``make servers``, ``make demo`` and pytest.

The first SIGINT or SIGTERM raises :class:`KeyboardInterrupt`, which runs the context managers and fixtures
that stop the servers; later ones do nothing, so they cannot cut that shutdown short (``make`` passes a
SIGTERM sent to its process group on to its child, which then gets two). They are caught, not ignored: an
ignored signal stays ignored in the programs started during the shutdown, a caught one does not.
"""

from __future__ import annotations

import signal


def stop_on_signals() -> None:
    """Make the first SIGINT or SIGTERM this process gets raise :class:`KeyboardInterrupt` (main thread only)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt_once)


def _interrupt_once(signum: int, frame: object) -> None:
    for later in (signal.SIGINT, signal.SIGTERM):
        signal.signal(later, _ignore)
    raise KeyboardInterrupt


def _ignore(signum: int, frame: object) -> None:
    """A signal that arrives while the servers are being stopped."""
