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

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self) -> None:
        """Wait until the task has returned (after a cancel: after its current step)."""
        self._thread.join()

    def follow(self, idle_s: float | None = None) -> Iterator[E | None]:
        """Start the task and yield its events; with `idle_s`, also None whenever no event came for that
        long (so that a caller streaming to a client yields regularly, and can be closed there).

        Left early, the task is told to stop after its current step. When the iteration is closed (a
        cancelled Gradio event closes its handler, on the server's event loop), it is not waited for: the
        caller decides what waits for `join` (see `ui.common.UiContext.stream`); otherwise it is."""
        self._thread.start()
        closing = False
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
        except GeneratorExit:
            closing = True
            raise
        finally:
            if self._thread.is_alive():
                log.info("job abandoned by its caller: stopping after the current step")
                self.cancel()
                if not closing:
                    self._thread.join()
        if self._error is not None:
            raise self._error
