"""Turns at the GPU: one line that every surface's jobs wait in, first come first served.

The registry owns the one instance (`Registry.line`), as it owns every other piece of shared state, so a
UI job, a REST or OpenAI request and a Python API call all take turns in arrival order and can each be
told their place.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

from flux_ui.core.errors import Cancelled

POLL_S = 0.25  # how often a waiter checks whether it should stop waiting


class Line:
    """First come, first served turns at the GPU, with each waiter's place in line.

    Gradio's queue (one concurrency group with a limit of one) would serialise the UI's jobs too, but a
    request waiting there has not been looked at: a bad field would be reported only when its turn came,
    behind someone's 30-second job. (Gradio's `validator=` runs before its queue, but a refusal reaches
    gradio_client as a ValidationError instead of the AppError every client of this API handles, and the
    browser shows it on the component, not as the error naming the fix.) So every surface validates a
    request at once, and only valid jobs wait here (the UI lets up to --queue-size requests in at once for
    that). The holder of a turn is the first in line until it `leave`s.

    With `width` above one (--replicas N: N GPUs, each behind a replica), the first `width` in line hold
    turns at once; the rest wait in order as before.
    """

    def __init__(self, width: int = 1) -> None:
        self.width = max(1, width)  # turns held at once
        self._changed = threading.Condition()
        self._line: deque[object] = deque()

    def join(self) -> object:
        """A ticket at the end of the line; `leave` it when done (or when giving up)."""
        ticket = object()
        with self._changed:
            self._line.append(ticket)
        return ticket

    def wait(self, ticket: object, timeout: float) -> bool:
        """Whether it is `ticket`'s turn, waiting up to `timeout` seconds for it."""
        with self._changed:
            return self._changed.wait_for(lambda: self._line.index(ticket) < self.width, timeout)

    def ahead(self, ticket: object) -> int:
        """How many must leave before `ticket`'s turn comes (on one GPU: those before it, the holder
        included); 0 once it holds a turn."""
        with self._changed:
            return max(0, self._line.index(ticket) - self.width + 1)

    def leave(self, ticket: object) -> None:
        with self._changed:
            self._line.remove(ticket)
            self._changed.notify_all()

    @contextmanager
    def turn(self, should_stop: Callable[[], bool] | None = None) -> Iterator[None]:
        """Wait for a turn and hold it for the block; `should_stop()` true while waiting raises Cancelled
        (the waiter leaves the line)."""
        ticket = self.join()
        try:
            while not self.wait(ticket, POLL_S):
                if should_stop is not None and should_stop():
                    raise Cancelled()
            yield
        finally:
            self.leave(ticket)


class Workers(Protocol):
    """Processes that run tasks on models of their own (--replicas): what `TaskSpec.execute` hands a
    validated job to instead of this process's registry. The caller has taken its turn in `Line` first."""

    def run(
        self,
        task: str,
        job: object,
        on_event: Callable[[object], None] | None,
        should_stop: Callable[[], bool] | None,
    ) -> object:
        """Run task `task` (a name of the task table) on `job`, its validated parameters; `on_event` gets
        its events as they come, `should_stop()` is polled (true: the job stops after its current step and
        this raises Cancelled). Returns the task's result, or raises the task's own error."""
        ...

    def close(self) -> None:
        """Take the workers down (at the end of the process that started them)."""
        ...
