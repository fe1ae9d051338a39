"""The registry's lock, which also keeps a copy of what the registry holds, so that status can be read
without waiting for it.

A load or a run holds the registry's lock for as long as it lasts (a first download, minutes), and status
used to wait for it: a client polling `/status` saw the download only once it had ended. Every change
to what is loaded happens under this lock, so a copy taken whenever its outermost holder lets go (and
when a run begins, `publish`) is what the registry held at that moment; `read` returns a fresh copy when
the lock is free and that copy, with its age, when it is not. `threading.RLock` has no hook on release,
hence this wrapper.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class SnapshotLock:
    """A re-entrant lock (used as `with lock:`) that calls `take()` while still held, each time its
    outermost holder releases it, and keeps the result for `read`."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._depth = 0  # how many times the holder has acquired it; changed only by the holder
        self.take: Callable[[], dict] | None = None  # what to copy: the registry sets it once it is built
        self._last: tuple[dict, float] = ({}, time.monotonic())  # the copy and when it was taken: one tuple,
        # replaced whole, so that a reader without the lock never pairs one copy with another's time

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if not self._lock.acquire(blocking, timeout):
            return False
        self._depth += 1
        return True

    def release(self) -> None:
        try:
            if self._depth == 1:
                self.publish()
        finally:
            self._depth -= 1
            self._lock.release()

    def __enter__(self) -> SnapshotLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def publish(self) -> None:
        """Take the copy now; call it holding the lock (a run does, as it begins, so that status shows the
        models it runs with while it runs)."""
        if self.take is None:
            return
        try:
            copy = self.take()
        except Exception:  # noqa: BLE001 - what status shows must never break the load or run that let go
            log.exception("could not take the registry's status; the previous one stays")
            return
        self._last = (copy, time.monotonic())

    def read(self) -> tuple[dict, float | None]:
        """(copy, None) taken now when the lock is free; else (the last copy, its age in seconds)."""
        if self.acquire(blocking=False):
            try:
                if self._depth > 1:  # asked by the holder itself: take it here, not when it lets go
                    self.publish()
            finally:
                self.release()  # the outermost release takes the copy
            return self._last[0], None
        copy, taken = self._last
        return copy, time.monotonic() - taken
