"""What the app is doing to get ready (`--preload`): the phases of loading and warming the default variant,
recorded for the UI's start-up line, the Models tab, `/status` and the log.

The preload itself is a task-layer function (`flux_ui.tasks.preload`); this is only its record, kept by the
registry so that every surface reads the same one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

IDLE, RUNNING, READY, FAILED = "idle", "running", "ready", "failed"  # idle: no preload was asked for


class Startup:
    """The phases of one preload: what each was and how long it took, the one running, and the outcome."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = IDLE
        self._done: list[tuple[str, float]] = []  # (what, seconds) of finished phases
        self._current: tuple[str, float] | None = None  # (what, monotonic start) of the running phase
        self._started: float | None = None
        self._ended: float | None = None
        self._error: str | None = None

    @property
    def active(self) -> bool:
        return self._state == RUNNING

    def begin(self) -> None:
        with self._lock:
            self._state, self._started = RUNNING, time.monotonic()

    @contextmanager
    def phase(self, what: str) -> Iterator[None]:
        """Record the block as the phase `what` ("loading the T5-XXL text encoder...")."""
        log.info("start-up: %s", what)
        with self._lock:
            self._current = (what, time.monotonic())
        try:
            yield
        finally:
            with self._lock:
                self._done.append((what, time.monotonic() - self._current[1]))
                self._current = None

    def finish(self, error: str | None = None) -> None:
        with self._lock:
            self._state, self._error = (FAILED, error) if error else (READY, None)
            self._ended = time.monotonic()
        log.info("start-up %s: %s", self._state, self.line())

    def snapshot(self) -> dict:
        """The record as JSON: state, the running phase and its seconds so far, the finished phases."""
        with self._lock:
            now = time.monotonic()
            return {
                "state": self._state,
                "phase": None if self._current is None else self._current[0],
                "phase_s": None if self._current is None else round(now - self._current[1], 1),
                "phases": [{"what": w, "seconds": round(s, 1)} for w, s in self._done],
                "total_s": None if self._started is None else round((self._ended or now) - self._started, 1),
                "error": self._error,
            }

    def line(self) -> str:
        """One line for a person: what is happening now, or how the start went; "" when no preload ran."""
        return describe(self.snapshot())


def describe(s: dict) -> str:
    """`Startup.line` from a snapshot (the residency panel reads the snapshot inside `/status`)."""
    if s["state"] == IDLE:
        return ""
    done = ", ".join(f"{p['what']} {p['seconds']:.0f} s" for p in s["phases"])
    if s["state"] == RUNNING:
        now = f"{s['phase']} ({s['phase_s']:.0f} s)…" if s["phase"] else "starting…"
        return f"**Starting up:** {now}" + (f" Done: {done}." if done else "")
    if s["state"] == FAILED:
        return f"⚠️ **Start-up preload failed:** {s['error']}. The first request loads what it needs."
    return f"**Ready** in {s['total_s']:.0f} s ({done})."
