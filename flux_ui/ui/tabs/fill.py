"""The Fill tab: paint a mask over a picture (inpaint), or extend its canvas (outpaint), with FLUX.1 Fill [dev].

The editor (image plus brush layer) is what people use; the `fill` API endpoint takes a plain `image` and
`mask` instead. Clicking Fill first splits the editor into those two (hidden) inputs, then runs the very
endpoint that API clients call.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from flux_ui.core.variants import get_variant
from flux_ui.tasks.fill import SPEC, FillParams
from flux_ui.ui import examples, fast_mode, forms
from flux_ui.ui.common import UiContext, image_event
from flux_ui.ui.editor import mask_editor, split_editor
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
        yield from forms.gallery_seed_info(ctx, SPEC, raw, request, progress)

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
            steps, guidance = forms.steps_and_guidance(
                settings,
                variant.default_steps,
                variant.default_guidance,
                "fill-steps",
                guidance_max=50.0,
                guidance_step=0.5,
            )
            seed, num_images = forms.seed_and_count(settings, "fill-seed")
            fast = fast_mode.checkbox(settings, "fill-fast")
            run_btn, cancel_btn = forms.run_and_cancel("Fill", "fill-run", "fill-cancel")
            gr.Markdown(
                f"`{variant.repo_id}` · white or painted = repaint · the result has the canvas's size, scaled to "
                f"at most {settings.max_megapixels:g} MP · non-commercial license (`{variant.license}`)"
            )
        with gr.Column(scale=1):
            gallery = forms.result_gallery("Images", "fill-gallery")
            send_row, last_seed, info = forms.result_footer("fill-seed-used", "fill-info")
        selected = track_selection(gallery)  # inside the tab: a component between tabs confuses the tab bar

    split = run_btn.click(split_editor, editor, [image, mask], api_visibility="private")
    done = split.success(
        run,
        [image, mask, prompt, *sides, steps, guidance, seed, num_images, fast],
        [gallery, last_seed, info],
        api_name="fill",
        **image_event(settings),
    )
    forms.finish_run(ctx, done, last_seed, cancel_btn)
    return FillTab(image=editor, prompt=prompt, gallery=gallery, selected=selected, send_row=send_row)
