"""Task functions: the registry and validated parameters in, a result dataclass out. No UI code here."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from PIL import Image

from flux_ui.metadata import ImageMeta
from flux_ui.params import SEED_MAX, TextToImageParams
from flux_ui.registry import Registry
from flux_ui.variants import get_variant

log = logging.getLogger(__name__)


class Cancelled(Exception):
    """Raised inside a pipeline's step callback when the user cancels; the job stops after that step."""


@dataclass
class StepEvent:
    """Progress of one denoising step, with a preview every few steps."""

    image_index: int  # which image of the request (0-based)
    step: int  # steps done for this image (1-based)
    steps: int  # steps per image
    done: int  # steps done over the whole request
    total: int  # steps over the whole request
    preview: Image.Image | None = None


@dataclass
class GeneratedImage:
    image: Image.Image
    meta: ImageMeta


@dataclass
class TaskResult:
    images: list[GeneratedImage]
    seed: int  # the seed of the first image; image i used seed + i
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase


StepCallback = Callable[[StepEvent], None]


def resolve_seed(seed: int) -> int:
    return random.randint(0, SEED_MAX - 16) if seed == -1 else seed


def _step_callback(
    registry: Registry,
    on_step: StepCallback | None,
    should_stop: Callable[[], bool] | None,
    image_index: int,
    steps: int,
    total: int,
    size: tuple[int, int],
):
    """A diffusers `callback_on_step_end` that reports progress, makes previews and honours cancel."""
    every = registry.settings.preview_every

    def callback(pipe, i, t, kwargs):
        step = i + 1
        if should_stop is not None and should_stop():
            raise Cancelled()
        if on_step is not None:
            preview = None
            if every > 0 and step % every == 0 and step < steps:
                latents = pipe._unpack_latents(kwargs["latents"], size[1], size[0], pipe.vae_scale_factor)
                preview = registry.previewer().to_image(latents, size)
            on_step(StepEvent(image_index, step, steps, image_index * steps + step, total, preview))
        return {}

    return callback


def text_to_image(
    registry: Registry,
    params: TextToImageParams,
    on_step: StepCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TaskResult:
    """Generate `params.num_images` images; `params` must have passed `validate_text_to_image`.

    The prompt is encoded once; image i is denoised from the noise of seed + i (drawn on the CPU, so a
    seed gives the same image on any device).
    """
    variant = get_variant(params.variant)
    seed = resolve_seed(params.seed)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    images: list[GeneratedImage] = []
    with registry.pipeline(variant.name) as pipe:
        timings["load"] = time.perf_counter() - start
        t = time.perf_counter()
        with torch.inference_mode():
            prompt_embeds, pooled, _ = pipe.encode_prompt(
                prompt=params.prompt,
                prompt_2=None,
                device=registry.settings.device,
                max_sequence_length=variant.max_sequence_length,
            )
        timings["encode"] = time.perf_counter() - t
        t = time.perf_counter()
        total = params.steps * params.num_images
        for i in range(params.num_images):
            callback = _step_callback(
                registry, on_step, should_stop, i, params.steps, total, (params.width, params.height)
            )
            kwargs = {} if params.guidance is None else {"guidance_scale": params.guidance}
            with torch.inference_mode():
                out = pipe(
                    prompt_embeds=prompt_embeds,
                    pooled_prompt_embeds=pooled,
                    width=params.width,
                    height=params.height,
                    num_inference_steps=params.steps,
                    generator=torch.Generator("cpu").manual_seed(seed + i),
                    max_sequence_length=variant.max_sequence_length,
                    callback_on_step_end=callback,
                    **kwargs,
                )
            meta = ImageMeta(
                prompt=params.prompt,
                variant=variant.name,
                seed=seed + i,
                steps=params.steps,
                guidance=params.guidance,
                width=params.width,
                height=params.height,
            )
            images.append(GeneratedImage(out.images[0], meta))
        timings["generate"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - start
    log.info(
        "text_to_image %s %dx%d x%d, %d steps: %.2f s", variant.name, params.width, params.height,
        params.num_images, params.steps, timings["total"],
    )
    return TaskResult(images=images, seed=seed, timings=timings)
