"""The Fill tab: paint a mask over a picture (inpaint), or extend its canvas (outpaint), with FLUX.1 Fill [dev].

The editor (image plus brush layer) is what people use; the `fill` API endpoint takes a plain `image` and
`mask` instead. Clicking Fill first splits the editor into those two (hidden) inputs, then runs the very
endpoint that API clients call.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from flux_ui.core.seeds import SEED_MAX
from flux_ui.core.variants import get_variant
from flux_ui.tasks.fill import SPEC, FillParams
from flux_ui.ui import examples, fast_mode
from flux_ui.ui.common import UiContext, image_event
from flux_ui.ui.editor import mask_editor, split_editor
from flux_ui.ui.forms import reveal_seed, seed_used_box
from flux_ui.ui.handoff import track_selection

MAX_SLIDER_OUTPAINT = 1024  # pixels per side on the sliders; the API accepts more, up to the size limit


@dataclass
class FillTab:
    """Components other tabs hand images and prompts to."""

    image: gr.ImageEditor  # the picture to fill (hand an image to it: it becomes the background)
    prompt: gr.Textbox
    gallery: gr.Gallery
    selected: gr.State  # index of the result the user clicked (hand-off source)
    send_row: gr.Row  # where the hand-off buttons go


def build(ctx: UiContext) -> FillTab:
    settings = ctx.settings
    variant = get_variant("fill-dev")

    def run(
        image: dict | None,
        mask: dict | None = None,
        prompt: str = "",
        left: int = 0,
        right: int = 0,
        top: int = 0,
        bottom: int = 0,
        steps: int = variant.default_steps,
        guidance: float = variant.default_guidance,
        seed: int = -1,
        num_images: int = 1,
        fast: bool = False,
        request: gr.Request = None,
        progress: gr.Progress = gr.Progress(),
    ):
        """Fill the white area of `mask` in `image` and/or extend the image by the outpaint amounts, with
        FLUX.1 Fill [dev].

        Args:
            image: the picture to fill.
            mask: white (or opaque, if it has transparency) where to repaint; resized to the image. Optional
                when outpainting.
            prompt: what the filled area should show.
            left: pixels to add on the left and fill (outpainting).
            right: pixels to add on the right and fill.
            top: pixels to add at the top and fill.
            bottom: pixels to add at the bottom and fill.
            steps: denoising steps (50 as published).
            guidance: distilled guidance (30 as published).
            seed: -1 for a random seed; image i of a batch uses seed + i.
            num_images: how many images to generate.
            fast: fast mode: about half the steps computed in full (cache-dit's step cache), softer detail.
        """
        raw = FillParams(image, prompt, mask, left, right, top, bottom, steps, guidance, seed, num_images, fast)
        done = yield from ctx.run_images(SPEC, raw, request, progress)
        if done is not None:  # None: cancelled, and already shown
            gallery, result, text = done
            yield gallery, result.seed, text

    with gr.Tab("Fill", id="fill"), gr.Row():
        with gr.Column(scale=1):
            editor = mask_editor("Picture: paint over what to replace", "fill-editor")
            # The `fill` endpoint's own image inputs: filled from the editor when Fill is clicked.
            image = gr.Image(type="filepath", format="png", image_mode=None, visible=False, label="image")
            mask = gr.Image(type="filepath", format="png", image_mode=None, visible=False, label="mask")
            prompt = gr.Textbox(
                label="Prompt", lines=2, placeholder="What goes in the painted area…", elem_id="fill-prompt"
            )
            examples.offer([prompt], examples.FILL, label="Example prompts")
            with gr.Accordion("Outpaint: extend the canvas (pixels per side)", open=False), gr.Row():
                sides = [
                    gr.Slider(0, MAX_SLIDER_OUTPAINT, value=0, step=8, label=side.title(), elem_id=f"fill-{side}")
                    for side in ("left", "right", "top", "bottom")
                ]
            with gr.Row():
                steps = gr.Slider(
                    1, settings.max_steps, value=variant.default_steps, step=1, label="Steps", elem_id="fill-steps"
                )
                guidance = gr.Slider(0.0, 50.0, value=variant.default_guidance, step=0.5, label="Guidance")
            with gr.Row():
                seed = gr.Number(value=-1, label=f"Seed (-1 = random, up to {SEED_MAX})", elem_id="fill-seed")
                num_images = gr.Slider(1, settings.max_images, value=1, step=1, label="Images")
            fast = fast_mode.checkbox(settings, "fill-fast")
            with gr.Row():
                run_btn = gr.Button("Fill", variant="primary", elem_id="fill-run")
                cancel_btn = gr.Button("Cancel", variant="stop", elem_id="fill-cancel")
            gr.Markdown(
                f"`{variant.repo_id}` · white or painted = repaint · the result has the canvas's size, scaled to "
                f"at most {settings.max_megapixels:g} MP · non-commercial license (`{variant.license}`)"
            )
        with gr.Column(scale=1):
            gallery = gr.Gallery(label="Images", columns=2, format="png", elem_id="fill-gallery", interactive=False)
            send_row = gr.Row()  # hand-off buttons, added once every tab exists
            last_seed = seed_used_box("fill-seed-used")
            info = gr.Markdown(elem_id="fill-info")
        selected = track_selection(gallery)  # inside the tab: a component between tabs confuses the tab bar

    split = run_btn.click(split_editor, editor, [image, mask], api_visibility="private")
    done = split.success(
        run,
        [image, mask, prompt, *sides, steps, guidance, seed, num_images, fast],
        [gallery, last_seed, info],
        api_name="fill",
        **image_event(settings),
    )
    reveal_seed(done, last_seed)
    cancel_btn.click(ctx.cancel, None, None, queue=False, api_visibility="private")  # see run_images
    return FillTab(image=editor, prompt=prompt, gallery=gallery, selected=selected, send_row=send_row)
