"""The Control tab: generate an image that follows the edges (Canny) or the depth of a source image.

The control map is computed from the source as soon as it (or the mode, or a threshold) changes, and
shown; uploading a map in its place uses that one instead. Generation runs on the full FLUX.1 Canny/Depth
[dev] transformers or, sharing the [dev] transformer already in memory, on BFL's Canny/Depth LoRAs.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from flux_ui.core.errors import InvalidInput, ModelUnavailableError
from flux_ui.core.variants import CONTROL_LORAS, get_variant
from flux_ui.media.control_maps import CANNY_HIGH, CANNY_LOW
from flux_ui.tasks.control import MODES, SPEC, ControlParams, control_map, output_size, validate_control
from flux_ui.ui import examples, fast_mode, forms
from flux_ui.ui.common import UiContext, image_event, invalid
from flux_ui.ui.handoff import track_selection

MODE_CHOICES = [("Canny edges", "canny"), ("Depth", "depth")]
ROUTE_CHOICES = [("Full Canny/Depth model", "full"), ("LoRA on FLUX.1 [dev] (no model swap)", "lora")]


@dataclass
class ControlTab:
    """Components other tabs hand images and prompts to."""

    image: gr.Image  # the source image the control map is computed from
    prompt: gr.Textbox
    gallery: gr.Gallery
    selected: gr.State  # index of the result the user clicked (hand-off source)
    send_row: gr.Row  # where the hand-off buttons go


def route_note(mode: str, route: str) -> str:
    if route == "lora":
        lora = CONTROL_LORAS[mode]
        return f"`{lora.repo_id}` on `{get_variant(lora.base).repo_id}` · non-commercial license"
    v = get_variant(MODES[mode])
    return f"`{v.repo_id}` · {v.default_steps} steps, guidance {v.default_guidance:g} · non-commercial license"


def mode_defaults(mode: str, steps: float, guidance: float) -> tuple:
    """Steps and guidance for a switch to `mode`: a value still at another mode's default becomes the new
    mode's default; one the user changed is kept (gr.skip())."""
    new = get_variant(MODES[mode])
    others = [get_variant(name) for m, name in MODES.items() if m != mode]
    steps_default = any(steps == v.default_steps for v in others)
    guidance_default = any(guidance == v.default_guidance for v in others)
    return (
        new.default_steps if steps_default else gr.skip(),
        new.default_guidance if guidance_default else gr.skip(),
    )


def build(ctx: UiContext) -> ControlTab:
    settings = ctx.settings
    canny_variant = get_variant(MODES["canny"])

    def generate(
        image: dict | None,
        prompt: str = "",
        mode: str = "canny",
        route: str = "full",
        control_image: dict | None = None,
        low_threshold: int = CANNY_LOW,
        high_threshold: int = CANNY_HIGH,
        lora_scale: float = CONTROL_LORAS["canny"].default_scale,
        steps: int = canny_variant.default_steps,
        guidance: float = canny_variant.default_guidance,
        seed: int = -1,
        num_images: int = 1,
        map_from_source: bool = False,
        fast: bool = False,
        request: gr.Request = None,
        progress: gr.Progress = gr.Progress(),
    ):
        """Generate images that follow the Canny edges or the depth of a source image.

        Args:
            image: the source image the control map is computed from.
            prompt: what to generate.
            mode: canny or depth.
            route: full (FLUX.1 Canny/Depth [dev]) or lora (BFL's LoRA on FLUX.1 [dev]).
            control_image: a ready control map to use instead of computing one (optional).
            low_threshold: Canny lower threshold (50 as published).
            high_threshold: Canny upper threshold (200 as published).
            lora_scale: strength of the LoRA on the lora route (0.85 as published).
            steps: denoising steps (50 as published).
            guidance: distilled guidance (Canny 30, Depth 10, as published).
            seed: -1 for a random seed; image i of a batch uses seed + i.
            num_images: how many images to generate.
            fast: fast mode: about half the steps computed in full (cache-dit's step cache), softer detail.
        """
        # In the UI the map shown may be the one computed from the source (not an upload): then it is
        # computed again here, so that the metadata records the source and the thresholds.
        raw = ControlParams(
            prompt,
            image,
            mode,
            route,
            None if map_from_source and image is not None else control_image,
            low_threshold,
            high_threshold,
            lora_scale,
            steps,
            guidance,
            seed,
            num_images,
            fast,
        )
        done = yield from ctx.run_images(SPEC, raw, request, progress, others=3)
        if done is not None:  # None: cancelled, and already shown
            gallery, result, text = done
            yield gallery, result.control_image, result.seed, text

    def compute_map(
        image: dict | None,
        mode: str = "canny",
        low_threshold: int = CANNY_LOW,
        high_threshold: int = CANNY_HIGH,
    ):
        """Compute the control map of a source image, at the size generation would use.

        Args:
            image: the source image.
            mode: canny or depth.
            low_threshold: Canny lower threshold.
            high_threshold: Canny upper threshold.
        """
        try:
            raw = ControlParams("map", image, mode, low_threshold=low_threshold, high_threshold=high_threshold)
            params = validate_control(raw, settings)
            return control_map(
                ctx.registry,
                params.image,
                params.mode,
                output_size(params, settings),
                params.low_threshold,
                params.high_threshold,
            )
        except InvalidInput as err:
            raise invalid(err) from None
        except ModelUnavailableError as err:
            raise gr.Error(str(err), title="Model not available", duration=None) from None

    def preview_map(image, mode, low_threshold, high_threshold):
        if image is None:  # the source was cleared
            return None, False
        return compute_map(image, mode, low_threshold, high_threshold), True

    def on_mode(mode: str, route: str, steps: float, guidance: float):
        return (
            *mode_defaults(mode, steps, guidance),
            gr.update(visible=mode == "canny"),
            gr.update(visible=route == "lora"),
            route_note(mode, route),
        )

    with gr.Tab("Control", id="control"), gr.Row():
        with gr.Column(scale=1):
            with gr.Row():
                image = gr.Image(
                    label="Source image", type="filepath", format="png", height=300, elem_id="control-image"
                )
                cmap = gr.Image(
                    label="Control map (or upload one)",
                    type="filepath",
                    format="png",
                    height=300,
                    elem_id="control-map",
                )
            with gr.Row():
                mode = gr.Radio(MODE_CHOICES, value="canny", label="Control", elem_id="control-mode")
                route = gr.Radio(ROUTE_CHOICES, value="full", label="Model", elem_id="control-route")
            with gr.Row() as thresholds:
                low = gr.Slider(0, 500, value=CANNY_LOW, step=1, label="Canny low threshold", elem_id="control-low")
                high = gr.Slider(0, 500, value=CANNY_HIGH, step=1, label="Canny high threshold", elem_id="control-high")
            map_btn = gr.Button("Compute map", size="sm", elem_id="control-map-btn")
            map_from_source = gr.State(False)  # the map shown was computed from the source, not uploaded
            note = gr.Markdown(route_note("canny", "full"))
            prompt = gr.Textbox(label="Prompt", lines=2, placeholder="A robot made of gold…", elem_id="control-prompt")
            examples.offer([image, prompt], examples.CONTROL)
            scale = gr.Slider(
                0.0, 2.0, value=CONTROL_LORAS["canny"].default_scale, step=0.05, label="LoRA scale", visible=False
            )
            steps, guidance = forms.steps_and_guidance(
                settings,
                canny_variant.default_steps,
                canny_variant.default_guidance,
                "control-steps",
                guidance_max=50.0,
                guidance_step=0.5,
            )
            seed, num_images = forms.seed_and_count(settings, "control-seed")
            fast = fast_mode.checkbox(settings, "control-fast")
            generate_btn, cancel_btn = forms.run_and_cancel("Generate", "control-generate", "control-cancel")
        with gr.Column(scale=1):
            gallery = forms.result_gallery("Images", "control-gallery")
            send_row, last_seed, info = forms.result_footer("control-seed-used", "control-info")
        selected = track_selection(gallery)  # inside the tab: a component between tabs confuses the tab bar

    gr.on(
        [mode.input, route.input],
        on_mode,
        [mode, route, steps, guidance],
        [steps, guidance, thresholds, scale, note],
        api_visibility="private",
    )
    map_inputs = [image, mode, low, high]
    # Maps are quick and validate as they start: one at a time in a group of their own (the depth
    # estimator takes the registry's lock), not among the --queue-size generations let in at once.
    maps = {"concurrency_id": "control-maps", "concurrency_limit": 1, "preprocess": False}
    # A new source, mode or threshold makes the shown map stale: clear it at once, then recompute it.
    gr.on(
        [image.change, mode.input, low.release, high.release],
        lambda: None,
        None,
        cmap,
        queue=False,
        api_visibility="private",
    ).then(
        preview_map,
        map_inputs,
        [cmap, map_from_source],
        **maps,
        api_visibility="private",
    )
    map_btn.click(
        compute_map,
        map_inputs,
        cmap,
        api_name="control_map",
        **maps,
    ).success(lambda: True, None, map_from_source, api_visibility="private")
    gr.on([cmap.upload, cmap.clear], lambda: False, None, map_from_source, queue=False, api_visibility="private")
    run = gr.on(
        [generate_btn.click, prompt.submit],
        generate,
        [image, prompt, mode, route, cmap, low, high, scale, steps, guidance, seed, num_images, map_from_source, fast],
        [gallery, cmap, last_seed, info],
        api_name="control",
        **image_event(settings),
    )
    forms.finish_run(ctx, run, last_seed, cancel_btn)
    return ControlTab(image=image, prompt=prompt, gallery=gallery, selected=selected, send_row=send_row)
