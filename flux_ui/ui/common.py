"""The Gradio app, built by a factory; with flux_ui/ui/tabs/, the only code that imports gradio.

Every event that touches the GPU shares one concurrency group (`GPU`, see `gpu_event`): up to --queue-size
requests are let in at once and validated at once (a bad field is refused without waiting behind a running
job); valid jobs then take turns at the GPU in arrival order (`core.turns.Line`, the registry's one line,
shared with the HTTP APIs), told their place in line.
Gradio's bounded queue holds what comes beyond that. Model and input errors become `gr.Error` here and
only here.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import gradio as gr
import torch

from flux_ui.core.errors import Cancelled, InvalidInput, ModelUnavailableError, WorkerLost
from flux_ui.core.settings import Settings
from flux_ui.media.uploads import upload_dir
from flux_ui.models.faults import out_of_memory_message, recover_from_oom
from flux_ui.models.registry import Registry
from flux_ui.output.deliver import Delivered, deliver
from flux_ui.tasks import StepEvent, TaskResult, TaskSpec
from flux_ui.tasks.jobs import Job
from flux_ui.ui.progress import Told, gallery_preview, progress_line

log = logging.getLogger(__name__)
GPU = "gpu"  # the concurrency id of every event that runs models
WAIT_POLL_S = 0.5  # how often a job waiting for its turn updates its place in line and checks Cancel
E = TypeVar("E")
T = TypeVar("T")


def gpu_event(settings: Settings) -> dict:
    """Keyword arguments of every event that runs models: raw values go to the task's validator (whose
    messages name the field; Gradio's range and choice checks do not), and up to --queue-size requests of
    the GPU group are let in at once, to be validated and then wait in `Line` (see the module docstring)."""
    return {"concurrency_id": GPU, "concurrency_limit": max(1, settings.queue_size), "preprocess": False}


def invalid(err: InvalidInput | ValueError) -> gr.Error:
    """The gr.Error for bad input: its message names the field, the value and the fix. One log line, no
    traceback: the caller's mistake is not the server's."""
    log.info("invalid input: %s", err)
    return gr.Error(str(err), title="Invalid input", print_exception=False)


@dataclass
class UiContext:
    """What every tab needs: the registry, and the running jobs of each browser session (for Cancel)."""

    registry: Registry
    running: dict[str, Job] = field(default_factory=dict)  # session hash -> its running job
    # (session hash, task name) -> the gallery items of its last finished run: what a Cancel shows again
    shown: dict[tuple[str, str], list] = field(default_factory=dict)
    tabs: dict[str, object] = field(default_factory=dict)  # tab id -> the handles its build() returned
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def settings(self) -> Settings:
        return self.registry.settings

    def run_images(
        self,
        spec: TaskSpec,
        raw: object,
        request: gr.Request | None,
        progress: gr.Progress | None = None,
        noun: str = "image",
        others: int = 2,
    ) -> Generator[object, None, tuple[list, TaskResult, str] | None]:
        """What every image tab does with a request: validate `raw` with `spec` (a bad field becomes
        gr.Error at once, before any waiting), run it in turn with live previews in the gallery (the
        event's first output) and one line of progress in the info line (its last output: the place in
        line, the step, decoding; the outputs between are left alone: `others` counts them and the info
        line), deliver the images
        (safety screen, saving, warnings). Returns (gallery items, result, summary text):
        `gallery, result, text = yield from ctx.run_images(...)`; or None when the session's Cancel
        stopped it: the gallery then shows again what it showed before the run (never a half-made
        preview) and the info line says where the run stopped.

        The events that call this set `show_progress="hidden"` (`image_event`): Gradio's overlay would
        cover the previews, and the info line is the one progress indicator in the page. `progress` gets
        the same words all the same: API clients (gradio_client's `job.status().progress_data`) read them."""
        try:
            job = spec.validate(raw, self.settings, self.registry.loras)
        except InvalidInput as err:
            raise invalid(err) from None
        skips = (gr.skip(),) * (others - 1)  # the outputs between the gallery and the info line
        shown = gallery_preview(noun)
        last: list[StepEvent] = []

        told = Told(progress)

        def on_step(ev: StepEvent) -> tuple | None:
            last[:] = [ev]
            if not told.line((ev.done, ev.total), progress_line(ev), ev.preview is not None or ev.step >= ev.steps):
                return None
            return (shown(ev), *skips, progress_line(ev))

        def waiting(ahead: int) -> tuple:
            plural = "s" if ahead != 1 else ""
            text = f"Waiting for the GPU: {ahead} job{plural} ahead" if ahead else "Loading models…"
            if ahead and self.registry.startup.active:  # --preload holds the turn (its phase is shown on top)
                text = "Waiting for start-up: the default model is loading and compiling"
            told.line(0, text, True)
            return (gr.skip(), *skips, text)

        key = (request.session_hash if request is not None else None, spec.name)
        updates = self.stream(
            lambda on_step, stop: spec.execute(self.registry, job, on_step, stop),
            request,
            on_step,
            (gr.skip(), *skips, gr.skip()),
            waiting,
            keep_cancelled=True,
        )
        try:
            while True:
                yield next(updates)
                told.flush()
        except StopIteration as done:
            result = done.value
        except Cancelled:
            where = f" at step {last[0].step} of {last[0].steps}" if last else " before it started"
            if last and last[0].total > last[0].steps:
                where += f" (image {last[0].image_index + 1})"
            with self.lock:
                before = self.shown.get(key, [])
            yield (before, *skips, f"**Cancelled**{where}. Nothing was saved.")
            return None
        finally:
            updates.close()  # a closed page closes this generator: the job stops (see `stream`)
        gallery, notes = self.save(result, getattr(request, "username", None), spec.name)
        if key[0]:
            with self.lock:
                self.shown[key] = gallery
        text = "\n\n".join(line for line in (summary(result, notes), spec.describe(result)) if line)
        return gallery, result, text

    def stream(
        self,
        task: Callable[[Callable[[E], None], Callable[[], bool]], T],
        request: gr.Request | None,
        show: Callable[[E], object | None],
        idle: object,
        waiting: Callable[[int], object | None] | None = None,
        keep_cancelled: bool = False,
    ) -> Generator[object, None, T]:
        """Wait for a turn at the GPU, then run `task` as a Job; yield `show(event)` for each event that
        `show` maps to a UI update (not None), and return the task's result
        (`result = yield from ctx.stream(...)`). `waiting(jobs ahead)` maps the place in line to an update (or
        None), first when the job joins the line, then as the place changes, and `waiting(0)` when the turn
        comes.

        `idle` (an update that changes nothing, such as a gr.skip() per output) is yielded whenever
        nothing was yielded for WAIT_POLL_S: Gradio can close a generator only where it yields, and closing
        it is how a cancelled event (a client's cancel, a closed page) stops its job.

        Registers the job for the session's Cancel button (which also takes a waiting job out of line)
        and turns task failures into gr.Error; a Cancel too, unless `keep_cancelled` (then the caller gets
        Cancelled, to show what a cancelled run leaves).
        """
        job = Job(task)
        key = request.session_hash if request is not None else None
        if key:
            with self.lock:
                self.running[key] = job
        ticket = self.registry.line.join()
        events = None
        try:
            told = None
            while True:
                if waiting is not None and (ahead := self.registry.line.ahead(ticket)) != told:
                    update = waiting(told := ahead)
                    if update is not None:
                        yield update
                if self.registry.line.wait(ticket, WAIT_POLL_S):
                    break
                if job.cancel_event.is_set():
                    raise Cancelled()
                yield idle
            if told and waiting is not None and (update := waiting(0)) is not None:
                yield update  # its turn: says so
            events = job.follow(WAIT_POLL_S)
            last = time.monotonic()
            for ev in events:
                update = None if ev is None else show(ev)
                if update is None and time.monotonic() - last >= WAIT_POLL_S:
                    update = idle  # steps without previews still yield now and then (see the docstring)
                if update is not None:
                    last = time.monotonic()
                    yield update
        except Cancelled:
            if keep_cancelled:
                raise
            raise gr.Error("Generation cancelled.", title="Cancelled", print_exception=False) from None
        except ModelUnavailableError as err:
            raise gr.Error(str(err), title="Model not available", duration=None) from None
        except WorkerLost as err:
            raise gr.Error(str(err), title="Job lost", duration=None) from None
        except InvalidInput as err:
            raise invalid(err) from None
        except torch.OutOfMemoryError:
            recover_from_oom(self.registry)
            raise gr.Error(out_of_memory_message(), title="Out of memory", duration=None) from None
        finally:
            if events is not None:
                events.close()  # tells a job still running to stop after its current step
            if job.running:
                # Closed by Gradio (a cancelled event): this runs on the server's event loop, which must not
                # wait for the step to end. The turn passes on once the job has stopped, from a thread.
                threading.Thread(target=self._leave_after, args=(job, ticket), daemon=True).start()
            else:
                self.registry.line.leave(ticket)
            if key:
                with self.lock:
                    self.running.pop(key, None)
        return job.result

    def _leave_after(self, job: Job, ticket: object) -> None:
        job.join()
        self.registry.line.leave(ticket)

    def cancel(self, request: gr.Request) -> None:
        """Ask the session's running job to stop after its current step."""
        with self.lock:
            job = self.running.get(request.session_hash)
        if job is not None:
            job.cancel()

    def save(
        self, result: TaskResult, user: str | None = None, task: str | None = None
    ) -> tuple[list[tuple[object, str]], list[str]]:
        """Save every image (recorded in the history as `user`'s, made by `task`); return gallery items and
        warnings. An image that cannot be saved (a full disk, say) is still returned, as a picture, with a
        warning that it was not saved."""
        try:  # --safety-checker: flagged images are blurred first; without the classifier, nothing is shown
            delivered, notes = deliver(self.registry, result, user, task)
        except ModelUnavailableError as err:
            raise gr.Error(str(err), title="Safety classifier not available", duration=None) from None
        gallery = [_gallery_item(d) for d in delivered]
        if notes:
            gr.Warning(notes[0])
        return gallery, notes


def _gallery_item(d: Delivered) -> tuple[object, str]:
    """The saved file through its unguessable link; the picture itself if it was not saved (or the link
    could not be made: it is still shown, and Gradio caches it under a hashed name)."""
    if d.saved is not None:
        try:
            return publish(d.saved), f"seed {d.meta.seed}"
        except OSError as err:
            log.error("could not link %s for the gallery: %s", d.saved, err)
    return d.image, f"seed {d.meta.seed}" + ("" if d.saved else " (not saved)")


def publish(path: Path) -> str:
    """Where the gallery shows a saved image: a hard link (a copy across file systems) in a folder of its
    own, named by 128 random bits, inside Gradio's upload folder, which Gradio serves as it is.

    The outputs folder itself is never among Gradio's allowed paths, so `file=outputs/<date>/00001-3.png`
    serves nothing: only those who were handed an image's link can fetch it (README, "Sharing and
    logins"). The download keeps the saved file's name and its embedded parameters."""
    folder = upload_dir() / f"result-{secrets.token_hex(16)}"
    folder.mkdir(parents=True)
    link = folder / path.name
    try:
        os.link(path, link)
    except OSError:  # another file system, or one without hard links
        shutil.copyfile(path, link)
    return str(link)


def image_event(settings: Settings) -> dict:
    """`gpu_event` for the image tabs' run events: no Gradio progress overlay (it would cover the live
    preview); `UiContext.run_images` writes the progress into the info line instead."""
    return {**gpu_event(settings), "show_progress": "hidden"}


def summary(result: TaskResult, notes: list[str]) -> str:
    t = result.timings
    line = f"Seed {result.seed} · {t['total']:.1f} s (models {t['load']:.1f} s, generation {t['generate']:.1f} s)"
    return "\n\n".join([line, *notes])
