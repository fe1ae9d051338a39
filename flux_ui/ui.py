"""The Gradio app, built by a factory. The only module that imports gradio.

Every event that touches the GPU shares one concurrency group (`GPU`) with a limit of one, so jobs run
one at a time through Gradio's bounded queue. Model and input errors become `gr.Error` here and only here.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import gradio as gr
from PIL import Image

from flux_ui import __version__, tasks
from flux_ui.jobs import Job
from flux_ui.metadata import meta_from_parameters, read_parameters
from flux_ui.outputs import save_image
from flux_ui.params import SEED_MAX, InvalidInput, TextToImageParams, validate_text_to_image
from flux_ui.registry import Registry
from flux_ui.sources import ModelUnavailableError
from flux_ui.variants import SQUARE_AND_WIDE, get_variant, variants_for

log = logging.getLogger(__name__)
GPU = "gpu"  # the concurrency id of every event that runs models
CUSTOM = "Custom"


ASPECTS = ("1:1", "4:3", "3:4", "3:2", "2:3", "16:9", "9:16", "21:9", "9:21")  # of SQUARE_AND_WIDE, in order
PRESETS = {f"{a}  ·  {w}×{h}": (w, h) for a, (w, h) in zip(ASPECTS, SQUARE_AND_WIDE, strict=True)}
MAX_SLIDER_SIDE = 2048  # the megapixel limit is checked separately


def _variant_note(name: str) -> str:
    v = get_variant(name)
    use = "commercial use allowed" if v.commercial_use else "non-commercial license"
    return f"`{v.repo_id}` · {v.default_steps} steps by default · {use} (`{v.license}`)"


def build_ui(registry: Registry) -> gr.Blocks:
    """Build the Blocks app around `registry`; call `.queue(...)` and `.launch()` on the result."""
    settings = registry.settings
    running: dict[str, Job] = {}  # session hash -> its running job, for the cancel button
    running_lock = threading.Lock()
    t2i_variants = variants_for("text_to_image")

    def text_to_image(
        prompt: str,
        variant: str = "dev",
        width: int = 1024,
        height: int = 1024,
        steps: int = 28,
        guidance: float = 3.5,
        seed: int = -1,
        num_images: int = 1,
        request: gr.Request = None,
        progress: gr.Progress = gr.Progress(),
    ):
        """Generate images from a prompt with FLUX.1 [dev], [schnell] or Krea [dev].

        Args:
            prompt: what the image should show.
            variant: dev, schnell or krea-dev.
            width: pixels, a multiple of 16.
            height: pixels, a multiple of 16.
            steps: denoising steps (dev 28, schnell 4).
            guidance: distilled guidance (dev 3.5, Krea 4.5); ignored by schnell.
            seed: -1 for a random seed; image i of a batch uses seed + i.
            num_images: how many images to generate.
        """
        try:
            params = validate_text_to_image(
                TextToImageParams(
                    prompt=prompt,
                    variant=variant,
                    width=width,
                    height=height,
                    steps=steps,
                    guidance=guidance,
                    seed=seed,
                    num_images=num_images,
                ),
                settings,
            )
        except InvalidInput as err:
            raise gr.Error(str(err), title="Invalid input") from None
        job = Job(lambda on_step, stop: tasks.text_to_image(registry, params, on_step, stop))
        key = request.session_hash if request is not None else None
        if key:
            with running_lock:
                running[key] = job
        try:
            progress(0, desc="Loading models…")
            for ev in job:
                progress(
                    (ev.done, ev.total),
                    desc=f"Image {ev.image_index + 1}/{params.num_images}, step {ev.step}/{ev.steps}",
                )
                if ev.preview is not None:  # the gallery shows the live preview until the images arrive
                    yield [(ev.preview, f"preview · step {ev.step}/{ev.steps}")], gr.skip(), gr.skip()
        except tasks.Cancelled:
            raise gr.Error("Generation cancelled.", title="Cancelled") from None
        except ModelUnavailableError as err:
            raise gr.Error(str(err), title="Model not available", duration=None) from None
        finally:
            if key:
                with running_lock:
                    running.pop(key, None)
        result = job.result
        gallery, notes = [], []
        for item in result.images:
            try:
                path = save_image(item.image, item.meta, settings.outputs_dir)
                gallery.append((str(path), f"seed {item.meta.seed}"))
            except OSError as err:
                log.error("could not save image (seed %d): %s", item.meta.seed, err)
                notes.append(f"⚠ Not saved to disk ({err.strerror or err}); download it from the gallery.")
                gallery.append((item.image, f"seed {item.meta.seed} (not saved)"))
        if notes:
            gr.Warning(notes[0])
        t = result.timings
        info = f"Seed {result.seed} · {t['total']:.1f} s (models {t['load']:.1f} s, generation {t['generate']:.1f} s)"
        yield gallery, result.seed, "\n\n".join([info, *notes])

    def cancel(request: gr.Request):
        with running_lock:
            job = running.get(request.session_hash)
        if job is not None:
            job.cancel()

    def on_variant(name: str):
        v = get_variant(name)
        guidance = gr.update(value=v.default_guidance, visible=True) if v.uses_guidance else gr.update(visible=False)
        return gr.update(value=v.default_steps), guidance, _variant_note(name)

    def on_preset(label: str):
        if label not in PRESETS:
            return gr.skip(), gr.skip()
        w, h = PRESETS[label]
        return w, h

    def load_parameters(file: str | None):
        """Read the generation parameters embedded in a PNG and return them as form values."""
        if not file:
            raise gr.Error("image: upload a PNG made by FLUX UI or another SD UI.", title="Invalid input")
        try:
            with Image.open(file) as img:
                text = read_parameters(img)
        except (OSError, Image.DecompressionBombError) as err:
            raise gr.Error(f"image: not a readable image ({err}).", title="Invalid input") from None
        if not text:
            raise gr.Error("image: it carries no generation parameters.", title="Invalid input")
        try:
            meta = meta_from_parameters(text)
            variant = get_variant(meta.variant)
        except ValueError as err:
            raise gr.Error(str(err), title="Invalid input") from None
        guidance = meta.guidance if meta.guidance is not None else (variant.default_guidance or 0.0)
        return (
            meta.prompt,
            variant.name,
            meta.width,
            meta.height,
            meta.steps,
            gr.update(value=guidance, visible=variant.uses_guidance),
            meta.seed,
            CUSTOM,
        )

    def status():
        """What the registry has loaded, and where."""
        return registry.status()

    def free_memory():
        """Drop cached transformers (the shared encoders and VAE stay)."""
        registry.free_memory()
        return registry.status()

    with gr.Blocks(title="FLUX UI") as demo:
        gr.Markdown(f"# FLUX UI <small>v{__version__}</small>")
        if settings.tiny:
            gr.Markdown(
                "⚠️ **Tiny mode: these models have random weights.** Images are noise; this mode exists to "
                "try the interface and run the tests without downloading FLUX.",
                elem_id="tiny-banner",
            )
        with gr.Tab("Text to image", id="t2i"):
            with gr.Row():
                with gr.Column(scale=1):
                    prompt = gr.Textbox(label="Prompt", lines=3, placeholder="A red fox in fresh snow…", elem_id="prompt")
                    with gr.Row():
                        variant = gr.Dropdown(
                            [(v.label, v.name) for v in t2i_variants], value="dev", label="Model", elem_id="variant"
                        )
                        preset = gr.Dropdown([*PRESETS, CUSTOM], value=next(iter(PRESETS)), label="Aspect ratio")
                    variant_note = gr.Markdown(_variant_note("dev"))
                    with gr.Row():
                        width = gr.Slider(64, MAX_SLIDER_SIDE, value=1024, step=16, label="Width")
                        height = gr.Slider(64, MAX_SLIDER_SIDE, value=1024, step=16, label="Height")
                    with gr.Row():
                        steps = gr.Slider(1, settings.max_steps, value=28, step=1, label="Steps")
                        guidance = gr.Slider(0.0, 30.0, value=3.5, step=0.1, label="Guidance")
                    with gr.Row():
                        seed = gr.Number(value=-1, label="Seed (-1 = random)", precision=0, minimum=-1, maximum=SEED_MAX)
                        random_btn = gr.Button("🎲", scale=0, min_width=48)
                        reuse_btn = gr.Button("♻️", scale=0, min_width=48)
                        num_images = gr.Slider(1, settings.max_images, value=1, step=1, label="Images")
                    with gr.Row():
                        generate_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                        cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel")
                    with gr.Accordion("Load parameters from image", open=False):
                        params_file = gr.File(label="PNG with parameters", file_types=[".png"], elem_id="params-file")
                with gr.Column(scale=1):
                    gallery = gr.Gallery(label="Images", columns=2, format="png", elem_id="gallery")
                    last_seed = gr.Number(label="Seed used", interactive=False, precision=0)
                    info = gr.Markdown(label="info", elem_id="info")
        with gr.Tab("Models", id="models"):
            status_json = gr.JSON(label="Registry")
            with gr.Row():
                refresh_btn = gr.Button("Refresh")
                free_btn = gr.Button("Free memory")

        variant.input(on_variant, variant, [steps, guidance, variant_note], api_visibility="private")
        preset.input(on_preset, preset, [width, height], api_visibility="private")
        random_btn.click(lambda: -1, None, seed, api_visibility="private")
        reuse_btn.click(lambda s: s if s is not None else -1, last_seed, seed, api_visibility="private")
        inputs = [prompt, variant, width, height, steps, guidance, seed, num_images]
        gen = gr.on(
            [generate_btn.click, prompt.submit],
            text_to_image,
            inputs,
            [gallery, last_seed, info],
            api_name="text_to_image",
            concurrency_id=GPU,
            concurrency_limit=1,
        )
        cancel_btn.click(cancel, None, None, cancels=[gen], queue=False, api_visibility="private")
        params_file.upload(
            load_parameters, params_file, [*inputs[:-1], preset], api_name="load_parameters"
        )
        refresh_btn.click(status, None, status_json, api_name="status")
        free_btn.click(free_memory, None, status_json, api_name="free_memory", concurrency_id=GPU)
        demo.load(status, None, status_json, api_visibility="private")
    return demo
