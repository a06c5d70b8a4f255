"""Progress and cancellation for long work, without any UI import.

Technique functions take `on_step(done, total)` to report progress and `should_stop()` to poll between steps; the UI
turns Cancel into a flag that `should_stop` reads, so the work stops at the next step and frees the GPU.
"""

import threading
from collections.abc import Callable

StepFn = Callable[[int, int], None]
StopFn = Callable[[], bool]


class Cancelled(RuntimeError):
    """The user pressed Cancel; the work stopped between two steps."""


class CancelFlags:
    """One stop flag per browser session, so a Cancel stops only that user's work."""

    def __init__(self) -> None:
        self._flags: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def arm(self, session: str) -> threading.Event:
        """A fresh, cleared flag for a new job of `session`."""
        with self._lock:
            flag = self._flags[session] = threading.Event()
        return flag

    def cancel(self, session: str) -> None:
        with self._lock:
            if session in self._flags:
                self._flags[session].set()

    def forget(self, session: str) -> None:
        """The session ended: drop its flag."""
        with self._lock:
            self._flags.pop(session, None)
