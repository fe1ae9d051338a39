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

from flux_ui.core.errors import Cancelled, InvalidInput, ModelUnavailableError
from flux_ui.core.settings import Settings
from flux_ui.core.variants import SQUARE_AND_WIDE
from flux_ui.media.uploads import checked_upload, upload_dir
from flux_ui.models.faults import out_of_memory_message, recover_from_oom
from flux_ui.models.registry import Registry
from flux_ui.output.deliver import Delivered, deliver
from flux_ui.tasks import StepCallback, StepEvent, TaskResult, TaskSpec
from flux_ui.tasks.jobs import Job

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
    tabs: dict[str, object] = field(default_factory=dict)  # tab id -> the handles its build() returned
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def settings(self) -> Settings:
        return self.registry.settings

    def follow(
        self,
        task: Callable[[StepCallback, Callable[[], bool]], TaskResult],
        request: gr.Request | None,
        progress: gr.Progress,
        show: Callable[[StepEvent], object | None],
        idle: object,
    ) -> Generator[object, None, TaskResult]:
        """`stream` for image tasks, driving the progress bar from their step events and saying the place in
        line while the job waits for its turn."""

        def on_step(ev: StepEvent) -> object | None:
            progress((ev.done, ev.total), desc=f"Image {ev.image_index + 1}, step {ev.step}/{ev.steps}")
            return show(ev)

        def waiting(ahead: int) -> None:
            plural = "s" if ahead != 1 else ""
            progress(0, desc=f"Waiting for the GPU: {ahead} job{plural} ahead" if ahead else "Loading models…")

        waiting(0)
        return (yield from self.stream(task, request, on_step, idle, waiting))

    def run_images(
        self,
        spec: TaskSpec,
        raw: object,
        request: gr.Request | None,
        progress: gr.Progress,
        noun: str = "image",
        others: int = 2,
    ) -> Generator[object, None, tuple[list, TaskResult, str]]:
        """What every image tab does with a request: validate `raw` with `spec` (a bad field becomes
        gr.Error at once, before any waiting), run it in turn with live previews in the gallery (the
        event's first output; `others` more outputs are left alone meanwhile), deliver the images (safety
        screen, saving, warnings). Returns (gallery items, result, summary text):
        `gallery, result, text = yield from ctx.run_images(...)`."""
        try:
            job = spec.validate(raw, self.settings, self.registry.loras)
        except InvalidInput as err:
            raise invalid(err) from None
        show = gallery_preview(noun, others)
        result = yield from self.follow(
            lambda on_step, stop: spec.run(self.registry, job, on_step, stop),
            request,
            progress,
            show,
            (gr.skip(),) * (1 + others),
        )
        gallery, notes = self.save(result, getattr(request, "username", None), spec.name)
        text = "\n\n".join(line for line in (summary(result, notes), spec.describe(result)) if line)
        return gallery, result, text

    def stream(
        self,
        task: Callable[[Callable[[E], None], Callable[[], bool]], T],
        request: gr.Request | None,
        show: Callable[[E], object | None],
        idle: object,
        waiting: Callable[[int], None] | None = None,
    ) -> Generator[object, None, T]:
        """Wait for a turn at the GPU, then run `task` as a Job; yield `show(event)` for each event that
        `show` maps to a UI update (not None), and return the task's result
        (`result = yield from ctx.stream(...)`). While in line, `waiting(jobs ahead)` is called as the
        place changes, and `waiting(0)` when the turn comes.

        `idle` (an update that changes nothing, such as a gr.skip() per output) is yielded whenever
        nothing was yielded for WAIT_POLL_S: Gradio can close a generator only where it yields, and closing
        it is how a cancelled event (a client's cancel, a closed page) stops its job.

        Registers the job for the session's Cancel button (which also takes a waiting job out of line)
        and turns task failures into gr.Error.
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
            while not self.registry.line.wait(ticket, WAIT_POLL_S):
                if job.cancel_event.is_set():
                    raise Cancelled()
                if waiting is not None and (ahead := self.registry.line.ahead(ticket)) != told:
                    waiting(told := ahead)
                yield idle
            if told and waiting is not None:
                waiting(0)  # its turn: says so
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
            raise gr.Error("Generation cancelled.", title="Cancelled", print_exception=False) from None
        except ModelUnavailableError as err:
            raise gr.Error(str(err), title="Model not available", duration=None) from None
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


def refuse_foreign_files(demo: gr.Blocks) -> None:
    """Refuse, before Gradio touches it, any file payload of an event that names a path outside the
    upload folder, with a gr.Error naming the event's parameter ("image: is not a file uploaded to this
    server; upload it again"), whether or not the path exists.

    Gradio refuses such paths too (once the app counts as launched, see serve.build_app), but its message
    names the path and not the field, and it has no hook before it: so `preprocess_data` of this Blocks
    is wrapped. URLs are left to Gradio (it fetches only public addresses)."""
    from gradio import utils as gr_utils
    from gradio_client import utils as client_utils

    original = demo.preprocess_data

    async def preprocess_data(block_fn, inputs, *args, **kwargs):
        names = [name for name, *_ in gr_utils.get_function_params(block_fn.fn)] if block_fn.fn else []
        for i, value in enumerate(inputs):
            name = names[i] if i < len(names) else getattr(block_fn.inputs[i], "label", None) or f"input {i}"

            def check(payload: dict, name: str = name) -> dict:
                path = payload.get("path")
                if isinstance(path, str) and path and not client_utils.is_http_url_like(path):
                    try:
                        checked_upload(path, name)
                    except InvalidInput as err:
                        log.warning("refused a file payload for %r outside the upload folder", name)
                        raise invalid(err) from None
                return payload

            client_utils.traverse(value, check, client_utils.is_file_obj)
            check_shape(block_fn, i, value, name)
        return await original(block_fn, inputs, *args, **kwargs)

    demo.preprocess_data = preprocess_data


def check_shape(block_fn, index: int, value: object, name: str) -> None:
    """Gradio validates a value against its component's data model (a chat history must be a list of
    messages) and, if it does not fit, answers with pydantic's raw text and logs a traceback; here the
    same validation comes first and names the parameter."""
    from pydantic import ValidationError

    model = getattr(block_fn.inputs[index], "data_model", None)
    if model is None or value is None or index in block_fn.component_prop_inputs:
        return
    try:
        model.model_validate(value)
    except ValidationError as err:
        first = err.errors()[0] if err.errors() else {"msg": "does not fit", "loc": ()}
        where = "/".join(str(p) for p in first.get("loc", ())) or "the value"
        raise invalid(InvalidInput(name, f"is not in the expected form ({where}: {first['msg']})")) from None


def gallery_preview(noun: str = "image", others: int = 2) -> Callable[[StepEvent], tuple | None]:
    """A `show` for `UiContext.follow`: each step's live preview goes to the gallery (the event's first
    output) until the images arrive; the `others` outputs are left as they are."""

    def show(ev: StepEvent) -> tuple | None:
        if ev.preview is None:
            return None
        caption = f"preview · {noun} {ev.image_index + 1}, step {ev.step}/{ev.steps}"
        return ([(ev.preview, caption)], *(gr.skip(),) * others)

    return show


def summary(result: TaskResult, notes: list[str]) -> str:
    t = result.timings
    line = f"Seed {result.seed} · {t['total']:.1f} s (models {t['load']:.1f} s, generation {t['generate']:.1f} s)"
    return "\n\n".join([line, *notes])


ASPECTS = ("1:1", "4:3", "3:4", "3:2", "2:3", "16:9", "9:16", "21:9", "9:21")  # of SQUARE_AND_WIDE, in order


PRESETS = {f"{a}  ·  {w}×{h}": (w, h) for a, (w, h) in zip(ASPECTS, SQUARE_AND_WIDE, strict=True)}


CUSTOM = "Custom"


MAX_SLIDER_SIDE = 2048  # the megapixel limit is checked separately
