"""The FLUX.2 edit tab: one to four reference images and an instruction, with any FLUX.2 model."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from flux_ui.core.variants import FLUX2, SQUARE_AND_WIDE, family_variants, get_variant
from flux_ui.tasks.flux2_edit import AUTO, DEFAULT_VARIANT, MAX_REFERENCES, SPEC, Flux2EditParams
from flux_ui.ui import forms
from flux_ui.ui.common import UiContext, image_event
from flux_ui.ui.handoff import track_selection

SIZES = [AUTO, *(f"{w}x{h}" for w, h in SQUARE_AND_WIDE)]


@dataclass
class Flux2EditTab:
    """Components other tabs hand images to."""

    image: gr.Image  # the first reference slot
    gallery: gr.Gallery
    selected: gr.State  # index of the result the user clicked
    send_row: gr.Row  # where the hand-off buttons go


def variant_note(name: str) -> str:
    v = get_variant(name)
    use = "commercial use allowed" if v.commercial_use else "non-commercial license"
    guidance = f"guidance {v.default_guidance:g}" if v.uses_guidance else "no guidance (step-distilled)"
    return f"`{v.repo_id}` · {v.default_steps} steps, {guidance} by default · {use} (`{v.license}`)"


def build(ctx: UiContext) -> Flux2EditTab:
    settings = ctx.settings
    default = get_variant(DEFAULT_VARIANT)

    def edit(
        image_1: str | None,
        image_2: str | None = None,
        image_3: str | None = None,
        image_4: str | None = None,
        instruction: str = "",
        variant: str = DEFAULT_VARIANT,
        size: str = AUTO,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int = -1,
        num_images: int = 1,
        request: gr.Request = None,
        progress: gr.Progress = gr.Progress(),
    ):
        """Make an image from one to four reference images as an instruction says, with a FLUX.2 model.

        Args:
            image_1: the first reference (PNG, JPEG or WebP; 64 px to 20 megapixels, at most 8:1).
            image_2: a second reference, or None.
            image_3: a third reference, or None.
            image_4: a fourth reference, or None.
            instruction: what to make of them, e.g. "put the cat from image 2 on the sofa of image 1".
            variant: flux2-klein-4b (default), flux2-klein-9b, flux2-klein-base-4b, flux2-klein-base-9b or flux2-dev.
            size: "auto" (the first reference's size, at most 1 megapixel) or WIDTHxHEIGHT.
            steps: denoising steps; None for the model's default (4 for [klein], 50 for base and [dev]).
            guidance: [dev]'s distilled guidance or [klein] base's CFG scale (4 by default); unused by [klein].
            seed: -1 for a random seed; image i uses seed + i.
            num_images: how many images to make.
        """
        raw = Flux2EditParams(
            (image_1, image_2, image_3, image_4), instruction, variant, size, steps, guidance, seed, num_images
        )
        yield from forms.gallery_seed_info(ctx, SPEC, raw, request, progress, noun="edit")

    def on_variant(name: str):
        return (*forms.variant_defaults(name), variant_note(name))

    with gr.Tab("FLUX.2 edit", id="flux2_edit"), gr.Row():
        with gr.Column(scale=1):
            with gr.Row():
                slots = [
                    gr.Image(
                        label=f"Reference {n}",
                        type="filepath",
                        sources=["upload", "clipboard"],
                        elem_id=f"flux2-image-{n}",
                    )
                    for n in range(1, MAX_REFERENCES + 1)
                ]
            instruction = gr.Textbox(
                label="Instruction",
                lines=2,
                placeholder="The cat from image 2 sitting on the sofa of image 1…",
                elem_id="flux2-instruction",
            )
            with gr.Row():
                choices = [(v.label, v.name) for v in family_variants(FLUX2)]
                variant = gr.Dropdown(choices, value=DEFAULT_VARIANT, label="Model", elem_id="flux2-variant")
                size = gr.Dropdown(SIZES, value=AUTO, label="Output size", allow_custom_value=True)
            note = gr.Markdown(variant_note(DEFAULT_VARIANT), elem_id="flux2-variant-note")
            steps, guidance = forms.steps_and_guidance(
                settings, default.default_steps, 4.0, "flux2-steps", guidance_max=10.0, visible=default.uses_guidance
            )
            seed, num_images = forms.seed_and_count(settings, "flux2-seed")
            edit_btn, cancel_btn = forms.run_and_cancel("Edit", "flux2-edit", "flux2-cancel")
            gr.Markdown(
                "FLUX.2 reads every reference itself: say which image you mean (“image 1”, “the second image”). "
                "Each reference is scaled to at most 1 megapixel; more references make each step slower."
            )
        with gr.Column(scale=1):
            gallery = forms.result_gallery("Result", "flux2-gallery")
            send_row, last_seed, info = forms.result_footer("flux2-seed-used", "flux2-info")
        selected = track_selection(gallery)  # inside the tab: a component between tabs confuses the tab bar

    run = gr.on(
        [edit_btn.click, instruction.submit],
        edit,
        [*slots, instruction, variant, size, steps, guidance, seed, num_images],
        [gallery, last_seed, info],
        api_name="flux2_edit",
        **image_event(settings),
    )
    forms.finish_run(ctx, run, last_seed, cancel_btn)
    variant.input(on_variant, variant, [steps, guidance, note], api_visibility="private")
    return Flux2EditTab(image=slots[0], gallery=gallery, selected=selected, send_row=send_row)
