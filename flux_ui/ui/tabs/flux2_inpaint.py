"""The FLUX.2 inpaint tab: paint a mask over a picture and repaint it with a FLUX.2 [klein] model.

As in the Fill tab, the editor is what people use; clicking Inpaint splits it into the plain `image` and
`mask` inputs of the `flux2_inpaint` endpoint, which API clients call directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from flux_ui.core.variants import FLUX2, family_variants, get_variant
from flux_ui.tasks.flux2_edit import DEFAULT_VARIANT
from flux_ui.tasks.flux2_inpaint import DEFAULT_STRENGTH, SPEC, Flux2InpaintParams
from flux_ui.ui import forms
from flux_ui.ui.common import UiContext, image_event
from flux_ui.ui.editor import mask_editor, split_editor
from flux_ui.ui.handoff import track_selection


@dataclass
class Flux2InpaintTab:
    """Components other tabs hand images to."""

    image: gr.ImageEditor  # the picture (a handed image becomes its background)
    gallery: gr.Gallery
    selected: gr.State
    send_row: gr.Row


def build(ctx: UiContext) -> Flux2InpaintTab:
    settings = ctx.settings
    default = get_variant(DEFAULT_VARIANT)

    def run(
        image: str | None,
        mask: str | None = None,
        prompt: str = "",
        variant: str = DEFAULT_VARIANT,
        strength: float = DEFAULT_STRENGTH,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int = -1,
        num_images: int = 1,
        request: gr.Request = None,
        progress: gr.Progress = gr.Progress(),
    ):
        """Repaint the white area of `mask` in `image` with a FLUX.2 [klein] model.

        Args:
            image: the picture.
            mask: white (or opaque, if it has transparency) where to repaint; resized to the image.
            prompt: what the repainted area should show.
            variant: flux2-klein-4b (default), flux2-klein-9b, flux2-klein-base-4b or flux2-klein-base-9b.
            strength: above 0 up to 1: how far the masked area is noised (1 draws it afresh).
            steps: denoising steps at strength 1; None for the model's default (4, or 50 for base).
            guidance: [klein] base's CFG scale (4 by default); unused by the distilled models.
            seed: -1 for a random seed; image i uses seed + i.
            num_images: how many images to make.
        """
        raw = Flux2InpaintParams(image, mask, prompt, variant, strength, steps, guidance, seed, num_images)
        yield from forms.gallery_seed_info(ctx, SPEC, raw, request, progress)

    with gr.Tab("FLUX.2 inpaint", id="flux2_inpaint"), gr.Row():
        with gr.Column(scale=1):
            editor = mask_editor("Picture: paint over what to repaint", "flux2-inpaint-editor")
            image = gr.Image(type="filepath", format="png", image_mode=None, visible=False, label="image")
            mask = gr.Image(type="filepath", format="png", image_mode=None, visible=False, label="mask")
            prompt = gr.Textbox(label="Prompt", lines=2, elem_id="flux2-inpaint-prompt")
            with gr.Row():
                choices = [(v.label, v.name) for v in family_variants(FLUX2) if v.inpaint_pipeline_class]
                variant = gr.Dropdown(choices, value=DEFAULT_VARIANT, label="Model", elem_id="flux2-inpaint-variant")
                strength = gr.Slider(0.01, 1.0, value=DEFAULT_STRENGTH, step=0.01, label="Strength")
            steps, guidance = forms.steps_and_guidance(
                settings,
                default.default_steps,
                4.0,
                "flux2-inpaint-steps",
                guidance_max=10.0,
                visible=default.uses_guidance,
            )
            seed, num_images = forms.seed_and_count(settings, "flux2-inpaint-seed")
            run_btn, cancel_btn = forms.run_and_cancel("Inpaint", "flux2-inpaint-run", "flux2-inpaint-cancel")
            gr.Markdown(
                f"[klein] through diffusers' Flux2KleinInpaintPipeline · the result has the picture's size, scaled "
                f"to at most {settings.max_megapixels:g} MP · [klein] 4B is Apache-2.0, 9B non-commercial"
            )
        with gr.Column(scale=1):
            gallery = forms.result_gallery("Images", "flux2-inpaint-gallery")
            send_row, last_seed, info = forms.result_footer("flux2-inpaint-seed-used", "flux2-inpaint-info")
        selected = track_selection(gallery)

    split = run_btn.click(split_editor, editor, [image, mask], api_visibility="private")
    done = split.success(
        run,
        [image, mask, prompt, variant, strength, steps, guidance, seed, num_images],
        [gallery, last_seed, info],
        api_name="flux2_inpaint",
        **image_event(settings),
    )
    forms.finish_run(ctx, done, last_seed, cancel_btn)
    variant.input(forms.variant_defaults, variant, [steps, guidance], api_visibility="private")
    return Flux2InpaintTab(image=editor, gallery=gallery, selected=selected, send_row=send_row)
