"""The one job path of the HTTP APIs (REST, OpenAI images, AUTOMATIC1111): a bounded gate, the task run
in a worker thread, cancellation when the client disconnects, and the running jobs as a list that the
A1111 API reads for `/progress` and stops for `/interrupt`.

GPU work is serialised by the registry's lock, which every task holds while its pipeline is lent; the gate
bounds how many HTTP requests may wait for it (`--queue-size`, shared by all the HTTP APIs): the next is
refused at once rather than left to pile up threads (Gradio's queue does the same for the UI).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import anyio
import torch
from fastapi import HTTPException, Request

from flux_ui.core.errors import Cancelled, InvalidInput, ModelUnavailableError, WorkerLost
from flux_ui.models.faults import out_of_memory_message, recover_from_oom
from flux_ui.models.registry import Registry
from flux_ui.output.run import Outcome, run_task
from flux_ui.tasks import Request as TaskRequest
from flux_ui.tasks import StepEvent

log = logging.getLogger(__name__)
T = TypeVar("T")
DISCONNECT_POLL_S = 0.25  # how often a running job checks that its client is still there


class QueueFull(HTTPException):
    """Every slot of the gate is taken. An HTTPException (503), so REST answers it as before; the other
    APIs turn it into their own error shape."""

    def __init__(self, size: int):
        super().__init__(503, f"Queue full: {size} requests are already waiting or running; try again in a moment.")


@dataclass
class Gate:
    """At most `size` HTTP jobs waiting or running; the next is refused at once (QueueFull)."""

    size: int

    def __post_init__(self) -> None:
        self._slots = threading.BoundedSemaphore(max(1, self.size))

    def __enter__(self) -> Gate:
        if not self._slots.acquire(blocking=False):
            raise QueueFull(self.size)
        return self

    def __exit__(self, *exc: object) -> None:
        self._slots.release()


@dataclass
class Running:
    """One job in flight: what it is, how far it got, and the switch that stops it after its current step."""

    api: str  # which API started it: rest, openai, a1111
    task: str
    started: float = field(default_factory=time.time)  # seconds since the epoch
    stop: threading.Event = field(default_factory=threading.Event)
    interrupted: bool = False  # stopped by an API's interrupt, not by a disconnect
    step: StepEvent | None = None  # the latest step event (with its preview, when one was made)

    def on_event(self, event: object) -> None:
        """A task's `on_event`: keep the latest step (vqa's text pieces are not progress)."""
        if isinstance(event, StepEvent):
            self.step = event

    @property
    def progress(self) -> float:
        """Fraction of the request's steps done, 0-1."""
        return self.step.done / self.step.total if self.step and self.step.total else 0.0


class Jobs:
    """The gate and the running jobs of every HTTP API of one app."""

    def __init__(self, queue_size: int):
        self.gate = Gate(queue_size)
        self._running: dict[int, Running] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()

    def running(self, api: str | None = None) -> list[Running]:
        """The jobs in flight (of `api`, if given), oldest first."""
        with self._lock:
            return [j for j in self._running.values() if api is None or j.api == api]

    def interrupt(self, api: str) -> int:
        """Stop every job of `api` after its current step; return how many were asked to stop."""
        jobs = self.running(api)
        for job in jobs:
            job.interrupted = True
            job.stop.set()
        return len(jobs)

    async def run(self, request: Request, job: Running, work: Callable[[Running], T]) -> T:
        """Run `work(job)` in a worker thread within the gate (QueueFull when it is full); a client that
        disconnects sets `job.stop`, so the GPU is not spent on nobody. Returns what `work` returned."""
        with self.gate:
            key = next(self._ids)
            with self._lock:
                self._running[key] = job
            try:
                work_done = asyncio.ensure_future(anyio.to_thread.run_sync(lambda: work(job)))
                while not work_done.done():
                    await asyncio.wait({work_done}, timeout=DISCONNECT_POLL_S)
                    if not work_done.done() and not job.stop.is_set() and await request.is_disconnected():
                        log.info("%s client disconnected: cancelling its %s job", job.api, job.task)
                        job.stop.set()
                return work_done.result()
            finally:
                with self._lock:
                    self._running.pop(key, None)


@dataclass(frozen=True)
class Failure:
    """Why a job gave no outcome, for an API to answer in its own shape."""

    status: int  # the HTTP status REST would answer
    kind: str  # invalid, queue_full, cancelled, interrupted, unavailable, out_of_memory, replica_lost
    message: str  # for invalid: the message without its field
    field: str | None = None  # for invalid: the task's field (the API maps it to its own name)


async def run_outcome(
    jobs: Jobs,
    registry: Registry,
    request: Request,
    api: str,
    task: str,
    make: Callable[[], TaskRequest],
    then: Callable[[Outcome, Running], Outcome] | None = None,
) -> Outcome | Failure:
    """`task` on the request `make()` builds (in the worker thread: decoding images is work too), through
    the job path, delivered; every expected failure as a Failure rather than an exception. `then` (the
    outcome, the job) runs more work on the outcome in the same job (A1111's hires fix)."""

    def work(job: Running) -> Outcome | Failure:
        try:
            outcome = run_task(registry, task, make(), job.on_event, job.stop.is_set)
            return outcome if then is None else then(outcome, job)
        except InvalidInput as err:
            return Failure(422, "invalid", str(err).partition(": ")[2], err.field)
        except ModelUnavailableError as err:
            return Failure(503, "unavailable", str(err))
        except WorkerLost as err:
            return Failure(503, "replica_lost", str(err))
        except Cancelled:
            if job.interrupted:
                return Failure(200, "interrupted", "interrupted")
            return Failure(499, "cancelled", "cancelled: the client disconnected")
        except torch.OutOfMemoryError:
            recover_from_oom(registry)
            return Failure(503, "out_of_memory", out_of_memory_message())

    try:
        return await jobs.run(request, Running(api, task), work)
    except QueueFull as err:
        return Failure(503, "queue_full", str(err.detail))
