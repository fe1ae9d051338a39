"""Pieces of the image tabs' forms, built and wired the same way in every tab: the size presets, the
variant's default steps and guidance, the steps/guidance, seed and run/cancel rows, the result column
(gallery, hand-off row, "Seed used" box, info line), the run's outputs and wiring, and the parameters a
handed PNG brings into a form.

The helpers take every elem_id and label from the tab: they are public (the browser tests and users'
scripts find components by elem_id), and each tab keeps its own.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence

import gradio as gr
from PIL import Image

from flux_ui.core.errors import InvalidInput
from flux_ui.core.seeds import SEED_MAX
from flux_ui.core.settings import Settings
from flux_ui.core.variants import FLUX1, SQUARE_AND_WIDE, get_variant, variants_for
from flux_ui.media.metadata import parse_parameters, read_parameters
from flux_ui.media.uploads import checked_upload
from flux_ui.tasks import TaskSpec
from flux_ui.ui.common import UiContext


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


def flux1_model_menu(elem_id: str) -> gr.Dropdown:
    """The "Model" menu of the FLUX.1 text-to-image variants ([dev] first chosen), for tabs that redraw
    with one of them."""
    choices = [(v.label, v.name) for v in variants_for("text_to_image", FLUX1)]
    return gr.Dropdown(choices, value="dev", label="Model", elem_id=elem_id)


def steps_and_guidance(
    settings: Settings,
    steps: int,
    guidance: float,
    steps_id: str,
    *,
    guidance_max: float = 30.0,
    guidance_step: float = 0.1,
    **guidance_options: object,
) -> tuple[gr.Slider, gr.Slider]:
    """A row of the Steps slider (1 to --max-steps, starting at `steps`) and the Guidance slider (0 to
    `guidance_max`, starting at `guidance`); `guidance_options` are the latter's other options (elem_id,
    visible)."""
    with gr.Row():
        steps_slider = gr.Slider(1, settings.max_steps, value=steps, step=1, label="Steps", elem_id=steps_id)
        guidance_slider = gr.Slider(
            0.0, guidance_max, value=guidance, step=guidance_step, label="Guidance", **guidance_options
        )
    return steps_slider, guidance_slider


def seed_box(elem_id: str) -> gr.Number:
    """The Seed box, -1 (random) at first. No minimum/maximum here: the validator's message names the field
    and the fix."""
    return gr.Number(value=-1, label=f"Seed (-1 = random, up to {SEED_MAX})", elem_id=elem_id)


def seed_and_count(settings: Settings, seed_id: str, count_label: str = "Images") -> tuple[gr.Number, gr.Slider]:
    """A row of the Seed box and the slider of how many images to make (1 to --max-images)."""
    with gr.Row():
        seed = seed_box(seed_id)
        count = gr.Slider(1, settings.max_images, value=1, step=1, label=count_label)
    return seed, count


def run_and_cancel(label: str, run_id: str, cancel_id: str) -> tuple[gr.Button, gr.Button]:
    """A row of the tab's primary button (`label`) and its Cancel button."""
    with gr.Row():
        run = gr.Button(label, variant="primary", elem_id=run_id)
        cancel = gr.Button("Cancel", variant="stop", elem_id=cancel_id)
    return run, cancel


def result_gallery(label: str, elem_id: str, columns: int = 2) -> gr.Gallery:
    """The gallery a tab's results (and live previews) go to; PNG, so the embedded parameters survive a
    download."""
    return gr.Gallery(label=label, columns=columns, format="png", interactive=False, elem_id=elem_id)


def result_footer(seed_id: str, info_id: str, **info_options: object) -> tuple[gr.Row, gr.Number, gr.Markdown]:
    """What stands below a tab's gallery: the row the hand-off buttons go in (added once every tab exists),
    the "Seed used" box and the info line (progress while running, the summary after)."""
    return gr.Row(), seed_used_box(seed_id), gr.Markdown(elem_id=info_id, **info_options)


def gallery_seed_info(
    ctx: UiContext,
    spec: TaskSpec,
    raw: object,
    request: gr.Request | None,
    progress: gr.Progress | None,
    noun: str = "image",
) -> Generator[object, None, None]:
    """The body of an image tab's handler: run `raw` through `ctx.run_images` (its previews and progress
    lines), then yield the tab's outputs (gallery, seed used, info). Nothing more after a cancel: it is
    already shown."""
    done = yield from ctx.run_images(spec, raw, request, progress, noun=noun)
    if done is not None:
        gallery, result, text = done
        yield gallery, result.seed, text


def finish_run(ctx: UiContext, run, last_seed: gr.Number, cancel: gr.Button) -> None:
    """Wire what follows a tab's main event `run`: its "Seed used" box shown once it holds a seed, and the
    Cancel button stopping this session's job (see `UiContext.run_images`)."""
    reveal_seed(run, last_seed)
    cancel.click(ctx.cancel, None, None, queue=False, api_visibility="private")


def note_follows(note: gr.Markdown, describe: Callable[..., str], inputs: Sequence[gr.components.Component]) -> None:
    """Rewrite `note` with `describe(*values)` whenever one of `inputs` changes, before anything runs (raw
    values: an image is described from its upload, not copied again)."""
    gr.on([c.change for c in inputs], describe, list(inputs), note, preprocess=False, api_visibility="private")


def embedded_fields(path: str) -> dict[str, str]:
    """The generation parameters an uploaded or handed-over PNG carries, as fields ("Prompt", "Variant",
    ...); empty when it carries none or cannot be read: a picture with nothing to bring along into the form
    is no failure."""
    try:
        with Image.open(checked_upload(path, "image")) as img:
            text = read_parameters(img)
        return parse_parameters(text) if text else {}
    except (InvalidInput, OSError, ValueError, SyntaxError):
        return {}
