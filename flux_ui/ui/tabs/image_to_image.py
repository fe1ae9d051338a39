"""The image-to-image tab: an input image redrawn from a prompt, with a denoise strength, by any
text-to-image variant and the LoRAs the prompt's tags name."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from flux_ui.core.variants import get_variant
from flux_ui.tasks.image_to_image import AUTO, DEFAULT_STRENGTH, SPEC, ImageToImageParams
from flux_ui.ui import examples, fast_mode, forms
from flux_ui.ui.common import UiContext, image_event
from flux_ui.ui.handoff import track_selection

SIZES = [AUTO, *(f"{w}x{h}" for w, h in forms.PRESETS.values())]
STRENGTH_NOTE = (
    "**Strength** is how much of the schedule is run again: 0.2-0.4 keeps the composition and changes "
    "details, 0.6-0.8 keeps colours and layout loosely, 1 ignores the input (the text-to-image result of "
    "the same seed and size). About strength × steps steps run. 0 is refused: nothing would change."
)


@dataclass
class ImageToImageTab:
    """Components other tabs hand images to."""

    image: gr.Image  # the input; hand-off buttons put a gallery image here
    gallery: gr.Gallery
    selected: gr.State  # index of the result the user clicked
    send_row: gr.Row  # where the hand-off buttons go


def build(ctx: UiContext) -> ImageToImageTab:
    settings = ctx.settings
    dev = get_variant("dev")

    def generate(
        image: dict | str | None,
        prompt: str,
        strength: float = DEFAULT_STRENGTH,
        variant: str = "dev",
        size: str = AUTO,
        steps: int = dev.default_steps,
        guidance: float = dev.default_guidance,
        seed: int = -1,
        num_images: int = 1,
        fast: bool = False,
        request: gr.Request = None,
        progress: gr.Progress = gr.Progress(),
    ):
        """Redraw an image from a prompt with FLUX.1 [dev], [schnell] or Krea [dev].

        Args:
            image: the input image (PNG, JPEG or WebP; 64 px to 20 megapixels).
            prompt: what the result should show; <lora:NAME:WEIGHT> tags apply LoRAs (see /loras).
            strength: denoise strength, above 0 up to 1; 1 ignores the input.
            variant: dev, schnell or krea-dev.
            size: "auto" (the input's size within the megapixel limit, multiples of 16) or WIDTHxHEIGHT.
            steps: steps of the full schedule; about strength x steps of them run.
            guidance: distilled guidance (dev 3.5, Krea 4.5); ignored by schnell.
            seed: -1 for a random seed; image i uses seed + i.
            num_images: how many images to make from the input.
            fast: fast mode: about half the steps computed in full (cache-dit's step cache), softer detail.
        """
        raw = ImageToImageParams(image, prompt, strength, variant, size, steps, guidance, seed, num_images, fast=fast)
        yield from forms.gallery_seed_info(ctx, SPEC, raw, request, progress)

    with gr.Tab("Image to image", id="i2i"), gr.Row():
        with gr.Column(scale=1):
            image = gr.Image(label="Input image", type="filepath", sources=["upload", "clipboard"], elem_id="i2i-image")
            prompt = gr.Textbox(
                label="Prompt (<lora:NAME:WEIGHT> tags apply LoRAs)",
                lines=3,
                placeholder="The same street at night, in the rain…",
                elem_id="i2i-prompt",
            )
            strength = gr.Slider(
                0.0, 1.0, value=DEFAULT_STRENGTH, step=0.01, label="Denoise strength", elem_id="i2i-strength"
            )
            examples.offer([image, prompt, strength], examples.IMAGE_TO_IMAGE)
            gr.Markdown(STRENGTH_NOTE)
            with gr.Row():
                variant = forms.flux1_model_menu("i2i-variant")
                size = gr.Dropdown(
                    SIZES,
                    value=AUTO,
                    label="Output size",
                    info="auto: the input's size, scaled to the megapixel limit in multiples of 16",
                    allow_custom_value=True,
                    elem_id="i2i-size",
                )
            steps, guidance = forms.steps_and_guidance(settings, dev.default_steps, dev.default_guidance, "i2i-steps")
            seed, num_images = forms.seed_and_count(settings, "i2i-seed")
            fast = fast_mode.checkbox(settings, "i2i-fast")
            generate_btn, cancel_btn = forms.run_and_cancel("Generate", "i2i-generate", "i2i-cancel")
        with gr.Column(scale=1):
            gallery = forms.result_gallery("Images", "i2i-gallery")
            send_row, last_seed, info = forms.result_footer("i2i-seed-used", "i2i-info")
        selected = track_selection(gallery)  # inside the tab: a component between tabs confuses the tab bar

    variant.input(forms.variant_defaults, variant, [steps, guidance], api_visibility="private")
    run = gr.on(
        [generate_btn.click, prompt.submit],
        generate,
        [image, prompt, strength, variant, size, steps, guidance, seed, num_images, fast],
        [gallery, last_seed, info],
        api_name="image_to_image",
        # The image is decoded by the validator (images.load_image), which knows our limits and names the field.
        **image_event(settings),
    )
    forms.finish_run(ctx, run, last_seed, cancel_btn)
    return ImageToImageTab(image=image, gallery=gallery, selected=selected, send_row=send_row)
