"""The Redux variation tab: up to four reference images, each with its strength, and an optional prompt."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from flux_ui.core.variants import get_variant
from flux_ui.tasks.redux import MAX_REFERENCES, MAX_SCALE, SPEC, ReduxParams
from flux_ui.ui import examples, fast_mode, forms
from flux_ui.ui.common import UiContext, image_event
from flux_ui.ui.handoff import track_selection

VARIANT = get_variant("redux-dev")
BASE = get_variant(VARIANT.base)
PROMPT_NOTE = (
    "Redux tends to drown the prompt out. To let the prompt through, lower the image strengths below 1 and "
    "keep the prompt scales at 1 or above. *Prompt scale* weights the words of the prompt, *pooled prompt "
    "scale* its overall summary; with one image, its strength and both scales at 1, the result is the plain "
    "Redux variation."
)


@dataclass
class ReduxTab:
    """Components other tabs hand images to."""

    image: gr.Image  # the first reference image
    gallery: gr.Gallery  # variations
    selected: gr.State  # index of the variation the user clicked
    send_row: gr.Row  # where the hand-off buttons go


def build(ctx: UiContext) -> ReduxTab:
    settings = ctx.settings

    def variations(
        image_1: dict | str | None,
        image_2: dict | str | None = None,
        image_3: dict | str | None = None,
        image_4: dict | str | None = None,
        strength_1: float = 1.0,
        strength_2: float = 1.0,
        strength_3: float = 1.0,
        strength_4: float = 1.0,
        prompt: str | None = None,
        prompt_embeds_scale: float = 1.0,
        pooled_prompt_embeds_scale: float = 1.0,
        width: int = 1024,
        height: int = 1024,
        steps: int = BASE.default_steps,
        guidance: float = VARIANT.default_guidance,
        seed: int = -1,
        num_images: int = 1,
        fast: bool = False,
        request: gr.Request = None,
        progress: gr.Progress = gr.Progress(),
    ):
        """Make variations of one to four reference images with FLUX.1 Redux [dev] on FLUX.1 [dev].

        Args:
            image_1: first reference image (PNG, JPEG or WebP; 64 px to 20 megapixels); image_2-4 optional.
            strength_1: weight of image_1's Redux tokens, 0-2 (1 = as trained); strength_2-4 likewise.
            prompt: optional text mixed in with the images (None or "" for none).
            prompt_embeds_scale: weight of the prompt's T5 tokens, 0-2.
            pooled_prompt_embeds_scale: weight of the prompt's pooled CLIP vector, 0-2.
            width: pixels, a multiple of 16.
            height: pixels, a multiple of 16.
            steps: denoising steps (28 by default).
            guidance: distilled guidance (2.5 by default).
            seed: -1 for a random seed; variation i uses seed + i.
            num_images: how many variations to make.
            fast: fast mode: about half the steps computed in full (cache-dit's step cache), softer detail.
        """
        slots = (image_1, image_2, image_3, image_4)
        raw = ReduxParams(
            # Empty slots stay None, so that errors name the slot the user sees.
            images=tuple(None if value in (None, "", {}) else value for value in slots),
            strengths=(strength_1, strength_2, strength_3, strength_4),
            prompt="" if prompt is None else prompt,  # None: the API's way of leaving it out
            prompt_embeds_scale=prompt_embeds_scale,
            pooled_prompt_embeds_scale=pooled_prompt_embeds_scale,
            width=width,
            height=height,
            steps=steps,
            guidance=guidance,
            seed=seed,
            num_images=num_images,
            fast=fast,
        )
        yield from forms.gallery_seed_info(ctx, SPEC, raw, request, progress, noun="variation")

    def on_preset(label: str):
        return forms.PRESETS.get(label, (gr.skip(), gr.skip()))

    with gr.Tab("Redux variation", id="redux"), gr.Row():
        with gr.Column(scale=1):
            images, strengths = [], []

            def reference(i: int) -> None:
                images.append(
                    gr.Image(
                        label=f"Reference {i}" if i == 1 else f"Reference {i} (optional)",
                        type="filepath",
                        sources=["upload", "clipboard"],
                        height=260 if i == 1 else 180,
                        elem_id=f"redux-image-{i}",
                    )
                )
                strengths.append(gr.Slider(0.0, MAX_SCALE, value=1.0, step=0.05, label=f"Strength {i}"))

            reference(1)  # one slot in view; the others, to mix several pictures, fold away
            with gr.Accordion(f"+ more references (up to {MAX_REFERENCES})", open=False, elem_id="redux-more"):
                for first in range(2, MAX_REFERENCES + 1, 2):  # two per row
                    with gr.Row():
                        for i in range(first, min(first + 2, MAX_REFERENCES + 1)):
                            with gr.Column(min_width=200):
                                reference(i)
            prompt = gr.Textbox(label="Prompt (optional)", lines=2, elem_id="redux-prompt")
            examples.offer([images[0]], examples.REDUX)
            with gr.Row():
                prompt_scale = gr.Slider(0.0, MAX_SCALE, value=1.0, step=0.05, label="Prompt scale")
                pooled_scale = gr.Slider(0.0, MAX_SCALE, value=1.0, step=0.05, label="Pooled prompt scale")
            gr.Markdown(PROMPT_NOTE)
            preset = gr.Dropdown(
                [*forms.PRESETS, forms.CUSTOM], value=next(iter(forms.PRESETS)), label="Aspect ratio", min_width=200
            )
            with gr.Row():
                width = gr.Slider(64, forms.MAX_SLIDER_SIDE, value=1024, step=16, label="Width", elem_id="redux-width")
                height = gr.Slider(
                    64, forms.MAX_SLIDER_SIDE, value=1024, step=16, label="Height", elem_id="redux-height"
                )
            steps, guidance = forms.steps_and_guidance(
                settings, BASE.default_steps, VARIANT.default_guidance, "redux-steps", guidance_max=10.0
            )
            seed, num_images = forms.seed_and_count(settings, "redux-seed", "Variations")
            fast = fast_mode.checkbox(settings, "redux-fast")
            generate_btn, cancel_btn = forms.run_and_cancel("Make variations", "redux-generate", "redux-cancel")
            gr.Markdown(f"Runs on {BASE.label}'s transformer (`{BASE.repo_id}`) · non-commercial license")
        with gr.Column(scale=1):
            gallery = forms.result_gallery("Variations", "redux-gallery")
            send_row, last_seed, info = forms.result_footer("redux-seed-used", "redux-info")
        selected = track_selection(gallery)  # inside the tab: a component between tabs confuses the tab bar

    preset.input(on_preset, preset, [width, height], api_visibility="private")
    inputs = [
        *images,
        *strengths,
        prompt,
        prompt_scale,
        pooled_scale,
        width,
        height,
        steps,
        guidance,
        seed,
        num_images,
        fast,
    ]
    run = gr.on(
        [generate_btn.click, prompt.submit],
        variations,
        inputs,
        [gallery, last_seed, info],
        api_name="redux_variation",
        # Images are decoded by the validator (see the Kontext tab).
        **image_event(settings),
    )
    forms.finish_run(ctx, run, last_seed, cancel_btn)
    return ReduxTab(image=images[0], gallery=gallery, selected=selected, send_row=send_row)
