"""The fast-mode checkbox the FLUX.1 image tabs share (text to image, image to image, Kontext, Redux, Fill,
Control)."""

from __future__ import annotations

import gradio as gr

from flux_ui.core.settings import Settings
from flux_ui.models import fast


def checkbox(settings: Settings, elem_id: str) -> gr.Checkbox:
    """Off by default; its help states the method, the speed-up and the published quality with their
    source. Where the server cannot run fast mode (group offloading), it is shown greyed out with the reason."""
    reason = fast.unavailable(settings)
    return gr.Checkbox(
        value=False,
        label="Fast mode",
        info=fast.HELP if reason is None else f"Fast mode {reason}.",
        interactive=reason is None,
        elem_id=elem_id,
    )
