"""A run's progress in the page: the info line, the live preview in the gallery, and gr.Progress for API
clients (`Told`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import gradio as gr

from flux_ui.tasks import StepEvent

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
