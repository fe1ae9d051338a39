"""Pieces of the image tabs' forms: the size presets, the variant's default steps and guidance, and the
"Seed used" box.
"""

from __future__ import annotations

import gradio as gr

from flux_ui.core.variants import SQUARE_AND_WIDE, get_variant


def variant_defaults(name: str) -> tuple[dict, dict]:
    """Updates for a tab's steps and guidance sliders when the variant `name` is picked: its published
    defaults, and the guidance slider hidden for guidance-free variants ([schnell])."""
    v = get_variant(name)
    guidance = gr.update(value=v.default_guidance, visible=True) if v.uses_guidance else gr.update(visible=False)
    return gr.update(value=v.default_steps), guidance


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
