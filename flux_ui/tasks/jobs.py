"""Running a task on a worker thread while its caller streams progress, with cancellation.

The UI (and later the REST API) needs events while a model runs (denoising steps, or the words of an
answer), and a way to stop it. The task runs on a thread; its events cross a queue to the caller's
generator. When the caller stops listening (a cancelled Gradio event closes the generator), the task is
told to stop after its current step and the caller waits for it, so the GPU is free before the next job
starts.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
E = TypeVar("E")  # the events a task reports: StepEvent for images, text pieces for answers
T = TypeVar("T")
_DONE = object()


class Job(Generic[E, T]):
    """One task run: iterate it for the task's events; `result` holds the outcome once iteration ends.

    `task(on_event, should_stop)` calls `on_event` from its thread and checks `should_stop()` between steps.
    """

    def __init__(self, task: Callable[[Callable[[E], None], Callable[[], bool]], T]):
        self._task = task
        self._events: queue.Queue = queue.Queue()
        self.cancel_event = threading.Event()
        self.result: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="flux-ui-job", daemon=True)

    def _run(self) -> None:
        try:
            self.result = self._task(self._events.put, self.cancel_event.is_set)
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread and re-raised there
            self._error = err
        finally:
            self._events.put(_DONE)

    def cancel(self) -> None:
        self.cancel_event.set()

    def __iter__(self) -> Iterator[E]:
        return self.follow()

    def follow(self, idle_s: float | None = None) -> Iterator[E | None]:
        """Start the task and yield its events; with `idle_s`, also None whenever no event came for that
        long (so that a caller streaming to a client yields regularly, and can be closed there)."""
        self._thread.start()
        try:
            while True:
                try:
                    event = self._events.get(timeout=idle_s)
                except queue.Empty:
                    yield None
                    continue
                if event is _DONE:
                    break
                yield event
        finally:
            if self._thread.is_alive():
                log.info("job abandoned by its caller: stopping after the current step")
                self.cancel()
                self._thread.join()
        if self._error is not None:
            raise self._error


class Line:
    """First come, first served turns at the GPU, with each waiter's place in line.

    Gradio's queue (one concurrency group with a limit of one) would serialise the UI's jobs too, but a
    request waiting there has not been looked at: a bad field would be reported only when its turn came,
    behind someone's 30-second job. (Gradio's `validator=` runs before its queue, but a refusal reaches
    gradio_client as a ValidationError instead of the AppError every client of this API handles, and the
    browser shows it on the component, not as the error naming the fix.) So the UI lets up to
    --queue-size requests in at once, validates each at once, and only valid jobs wait here. The holder of
    a turn is the first in line until it `leave`s.
    """

    def __init__(self) -> None:
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
            return self._changed.wait_for(lambda: self._line[0] is ticket, timeout)

    def ahead(self, ticket: object) -> int:
        """How many are before `ticket` (the one whose turn it is included)."""
        with self._changed:
            return self._line.index(ticket)

    def leave(self, ticket: object) -> None:
        with self._changed:
            self._line.remove(ticket)
            self._changed.notify_all()
