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
from flux_ui.core.variants import SQUARE_AND_WIDE, get_variant
from flux_ui.media.uploads import checked_upload, upload_dir
from flux_ui.models.faults import out_of_memory_message, recover_from_oom
from flux_ui.models.registry import Registry
from flux_ui.output.deliver import Delivered, deliver
from flux_ui.tasks import StepEvent, TaskResult, TaskSpec
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
        params = gr_utils.get_function_params(block_fn.fn) if block_fn.fn else []
        names = [name for name, *_ in params]
        inputs = with_trailing_defaults(block_fn, inputs, params)
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


def with_trailing_defaults(block_fn, inputs: list, params: list) -> list:
    """`inputs` with the handler's defaults for trailing inputs a caller did not send.

    Fields are only ever added at the end of an event's inputs (Kontext's extra references, fast mode);
    a client written before one was added sends fewer values, and Gradio refuses those outright ("didn't
    receive enough input values"). Where every missing parameter has a default, the call goes on as the
    client meant it; otherwise Gradio's own error stands."""
    missing = range(len(inputs), len(block_fn.inputs))
    if not missing or len(params) < len(block_fn.inputs) or not all(params[i][1] for i in missing):
        return inputs
    return [*inputs, *(params[i][2] for i in missing)]


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


TEXT_EVERY_S = 0.25  # the info line's progress changes at most this often (a preview always shows)


class Told:
    """One run's progress, said twice: in the info line (the page) and to gr.Progress, which API clients
    read (`job.status().progress_data` in gradio_client). A client's status shows only the newest message
    and a yielded output is one, so gr.Progress hears the words of an info-line update only once that
    update has been yielded (`flush`); between info-line updates (at most every TEXT_EVERY_S, or with a
    preview) it hears each step at once."""

    def __init__(self, progress: gr.Progress | None):
        self.progress = progress
        self.pending: tuple[object, str] | None = None
        self.shown_at = float("-inf")

    def line(self, value: object, text: str, now: bool) -> bool:
        """Whether `text` goes to the info line now (`now`, or none for TEXT_EVERY_S); if not, gr.Progress
        hears it at once."""
        if now or time.monotonic() - self.shown_at >= TEXT_EVERY_S:
            self.shown_at = time.monotonic()
            self.pending = (value, text)
            return True
        if self.progress is not None:
            self.progress(value, desc=text)
        return False

    def flush(self) -> None:
        """After an update is yielded: gr.Progress hears its words."""
        if self.pending is not None and self.progress is not None:
            self.progress(self.pending[0], desc=self.pending[1])
        self.pending = None


def gallery_preview(noun: str = "image") -> Callable[[StepEvent], object]:
    """Each step's live preview as the gallery's value (captioned as a preview, which `handoff.pick`
    refuses), or gr.skip() for a step without one."""

    def show(ev: StepEvent) -> object:
        if ev.preview is None:
            return gr.skip()
        return [(ev.preview, f"{PREVIEW} · {noun} {ev.image_index + 1}, step {ev.step}/{ev.steps}")]

    return show


PREVIEW = "preview"  # the first word of a live preview's caption


def progress_line(ev: StepEvent) -> str:
    """The info line during a run: which image, which step, or decoding after the last step."""
    which = f"Image {ev.image_index + 1} of {ev.total // ev.steps}" if ev.total > ev.steps else "Image"
    if ev.step >= ev.steps:
        return f"{which}: decoding…"
    return f"{which}, step {ev.step}/{ev.steps}"


def variant_defaults(name: str) -> tuple[dict, dict]:
    """Updates for a tab's steps and guidance sliders when the variant `name` is picked: its published
    defaults, and the guidance slider hidden for guidance-free variants ([schnell])."""
    v = get_variant(name)
    guidance = gr.update(value=v.default_guidance, visible=True) if v.uses_guidance else gr.update(visible=False)
    return gr.update(value=v.default_steps), guidance


def image_event(settings: Settings) -> dict:
    """`gpu_event` for the image tabs' run events: no Gradio progress overlay (it would cover the live
    preview); `UiContext.run_images` writes the progress into the info line instead."""
    return {**gpu_event(settings), "show_progress": "hidden"}


def summary(result: TaskResult, notes: list[str]) -> str:
    t = result.timings
    line = f"Seed {result.seed} · {t['total']:.1f} s (models {t['load']:.1f} s, generation {t['generate']:.1f} s)"
    return "\n\n".join([line, *notes])


ASPECTS = ("1:1", "4:3", "3:4", "3:2", "2:3", "16:9", "9:16", "21:9", "9:21")  # of SQUARE_AND_WIDE, in order


PRESETS = {f"{a}  ·  {w}×{h}": (w, h) for a, (w, h) in zip(ASPECTS, SQUARE_AND_WIDE, strict=True)}


CUSTOM = "Custom"


MAX_SLIDER_SIDE = 2048  # the megapixel limit is checked separately


def seed_used_box(elem_id: str) -> gr.Number:
    """The "Seed used" box, hidden until the session's first finished run: Gradio draws an empty Number
    as 0, which reads as if seed 0 had been used."""
    return gr.Number(label="Seed used", interactive=False, precision=0, visible=False, elem_id=elem_id)


def reveal_seed(run, box: gr.Number) -> None:
    """Once `run` (a tab's main event) has finished, show its "Seed used" box if it holds a seed. A
    separate event, so that the API's output stays the plain number (an update would reach gradio_client
    as a dict)."""

    def show_seed(seed: float | None):
        return gr.update(visible=seed is not None)

    run.success(show_seed, box, box, queue=False, show_progress="hidden", api_visibility="private")
