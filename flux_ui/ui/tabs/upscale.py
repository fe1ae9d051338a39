"""The Upscale tab: an image enlarged 1.5-4x by an upscaler model (or Lanczos), then refined at low denoise
by any text-to-image variant (hires fix). A tab of its own rather than a mode of image to image: its
fields (scale, upscaler, tiling) and its defaults (strength 0.3, the output size set by the scale) are
not image to image's, and a hand-off here brings the picture's own prompt and model along."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from flux_ui.core.errors import InvalidInput
from flux_ui.core.variants import FLUX1, get_variant, variants_for
from flux_ui.media.images import load_image
from flux_ui.models import upscalers
from flux_ui.tasks.upscale import (
    AUTO,
    DEFAULT_SCALE,
    DEFAULT_STRENGTH,
    LANCZOS,
    MAX_SCALE,
    MIN_SCALE,
    SPEC,
    TILE,
    TILE_ABOVE_MP,
    TILINGS,
    UpscaleParams,
    target_size,
)
from flux_ui.ui import examples, forms
from flux_ui.ui.common import UiContext, image_event
from flux_ui.ui.handoff import Receiver, track_selection

NOTE = (
    f"**Hires fix**: the upscaler enlarges, then image to image at a low strength ({DEFAULT_STRENGTH:g} by "
    "default) redraws fine detail; the prompt should describe the picture (a hand-off brings its own). "
    f"Strength 0 upscales only. Above {TILE_ABOVE_MP:g} MP the pass runs in {TILE} px tiles blended at "
    "their overlaps; keep the strength low there (each tile is redrawn from the whole picture's prompt). "
    "Upscaler models (ESRGAN, 4x-UltraSharp...) are found in `upscale_models/` (ComfyUI) or "
    "`ESRGAN/` (Forge, A1111) below a --models-dir folder."
)


@dataclass
class UpscaleTab:
    """Components other tabs hand images to."""

    receive: Receiver  # a hand-off: the picture, with its prompt and model when it carries them
    upscaler: gr.Dropdown  # the upscaler menu
    refresh_upscalers: Callable[[str], dict]  # current choice -> the menu's update from a fresh scan
    gallery: gr.Gallery
    selected: gr.State  # index of the result the user clicked
    send_row: gr.Row  # where the hand-off buttons go


def parameters_of(path: str) -> tuple[str, str | None]:
    """(prompt, variant) read from a PNG's parameters, when a text-to-image model made it (image to image
    and earlier upscales included); ("", None) otherwise: a Kontext instruction or a Fill prompt does not
    describe the whole picture, which is what the refine pass needs."""
    fields = forms.embedded_fields(path)
    name = fields.get("Variant")
    if name not in {v.name for v in variants_for("text_to_image", FLUX1)}:
        return "", None
    return fields.get("Prompt", ""), name


def upscaler_menu(settings, current: str = AUTO) -> dict:
    """The upscaler menu's choices and help from a scan of the folders; `current` stays chosen if it is
    still there, else "auto"."""
    found = list(upscalers.find(settings))
    choices = [AUTO, LANCZOS, *found]
    return {
        "choices": choices,
        "value": current if current in choices else AUTO,
        "info": f"{len(found)} model(s) found" if found else "no model found: Lanczos",
    }


def size_note(image: object, scale: object, settings) -> str:
    """The output size a request would get, said before anything runs."""
    path = image.get("path") if isinstance(image, dict) else image
    if not path:
        return "Output: the input's size times the scale, in multiples of 16 (upload an image)."
    try:
        picture = load_image(path, "image")
        width, height = target_size(picture, float(scale), settings)
    except (InvalidInput, TypeError, ValueError) as err:
        return f"⚠️ {err}"
    tiles = " (the refine pass in tiles)" if width * height > TILE_ABOVE_MP * 1e6 else ""
    return f"Output **{width}×{height}** from the {picture.width}×{picture.height} input{tiles}."


def build(ctx: UiContext) -> UpscaleTab:
    settings = ctx.settings
    dev = get_variant("dev")

    def upscale_image(
        image: dict | str | None,
        prompt: str = "",
        scale: float = DEFAULT_SCALE,
        upscaler: str = AUTO,
        strength: float = DEFAULT_STRENGTH,
        variant: str = "dev",
        steps: int = dev.default_steps,
        guidance: float = dev.default_guidance,
        seed: int = -1,
        tiling: str = "auto",
        request: gr.Request = None,
        progress: gr.Progress = gr.Progress(),
    ):
        """Upscale an image 1.5-4x with an upscaler model (or Lanczos), then refine it at low denoise.

        Args:
            image: the input image (PNG, JPEG or WebP).
            prompt: what the image shows, for the refine pass; <lora:NAME:WEIGHT> tags apply LoRAs.
            scale: output side / input side, 1.5 to 4 (rounded to multiples of 16).
            upscaler: "auto" (the first model found, else Lanczos), "lanczos", or a model's name.
            strength: the refine pass's denoise, 0 (upscale only) up to 1; 0.3 by default.
            variant: dev, schnell or krea-dev, for the refine pass.
            steps: steps of the full schedule; about strength x steps run per tile.
            guidance: distilled guidance (dev 3.5, Krea 4.5); ignored by schnell.
            seed: -1 for a random seed.
            tiling: the refine pass in tiles: auto (above 1.5 MP), on or off.
        """
        raw = UpscaleParams(image, prompt, scale, upscaler, strength, variant, steps, guidance, seed, tiling)
        yield from forms.gallery_seed_info(ctx, SPEC, raw, request, progress)

    def receive(path: str):
        text, name = parameters_of(path)
        return path, text, name or gr.skip()

    with gr.Tab("Upscale", id="upscale"), gr.Row():
        with gr.Column(scale=1):
            image = gr.Image(
                label="Input image", type="filepath", sources=["upload", "clipboard"], elem_id="upscale-image"
            )
            prompt = gr.Textbox(
                label="Prompt (what the image shows; <lora:NAME:WEIGHT> tags apply LoRAs)",
                lines=2,
                elem_id="upscale-prompt",
            )
            examples.offer([image, prompt], examples.UPSCALE)
            with gr.Row():
                scale = gr.Slider(
                    MIN_SCALE, MAX_SCALE, value=DEFAULT_SCALE, step=0.25, label="Scale", elem_id="upscale-scale"
                )
                upscaler = gr.Dropdown(**upscaler_menu(settings), label="Upscaler", elem_id="upscale-upscaler")
            note = gr.Markdown(size_note(None, DEFAULT_SCALE, settings), elem_id="upscale-size-note")
            strength = gr.Slider(
                0.0, 1.0, value=DEFAULT_STRENGTH, step=0.01, label="Refine strength (0: upscale only)",
                elem_id="upscale-strength",
            )  # fmt: skip
            with gr.Row():
                variant = forms.flux1_model_menu("upscale-variant")
                tiling = gr.Dropdown(list(TILINGS), value="auto", label="Tiles", elem_id="upscale-tiling")
            steps, guidance = forms.steps_and_guidance(
                settings, dev.default_steps, dev.default_guidance, "upscale-steps"
            )
            seed = forms.seed_box("upscale-seed")
            run_btn, cancel_btn = forms.run_and_cancel("Upscale", "upscale-run", "upscale-cancel")
            gr.Markdown(NOTE)
        with gr.Column(scale=1):
            gallery = forms.result_gallery("Result", "upscale-gallery", columns=1)
            send_row, last_seed, info = forms.result_footer("upscale-seed-used", "upscale-info")
        selected = track_selection(gallery)  # inside the tab: a component between tabs confuses the tab bar

    variant.input(forms.variant_defaults, variant, [steps, guidance], api_visibility="private")
    run = gr.on(
        [run_btn.click, prompt.submit],
        upscale_image,
        [image, prompt, scale, upscaler, strength, variant, steps, guidance, seed, tiling],
        [gallery, last_seed, info],
        api_name="upscale",
        # The image is decoded by the validator (images.load_image), which knows our limits and names the field.
        **image_event(settings),
    )
    forms.finish_run(ctx, run, last_seed, cancel_btn)
    forms.note_follows(note, lambda img, sc: size_note(img, sc, settings), [image, scale])
    return UpscaleTab(
        receive=Receiver([image, prompt, variant], receive),
        upscaler=upscaler,
        refresh_upscalers=lambda current: gr.update(**upscaler_menu(settings, current)),
        gallery=gallery,
        selected=selected,
        send_row=send_row,
    )
