"""Text to image with FLUX.1 [dev], [schnell] and Krea [dev]."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from flux_ui.core.errors import InvalidInput
from flux_ui.core.gpu import on_gpu
from flux_ui.core.seeds import resolve_seed
from flux_ui.core.settings import Settings
from flux_ui.core.variants import get_variant
from flux_ui.models.loras.library import LoraLibrary, LoraRequest, check_request, parse_prompt
from flux_ui.models.registry import Registry
from flux_ui.tasks import StepCallback, TaskResult
from flux_ui.tasks.batch import Batch, generate_batch
from flux_ui.tasks.params import MAX_GUIDANCE, check_int, check_prompt, check_range, check_seed, check_size

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextToImageParams:
    """One text-to-image request. Defaults of None take the variant's published defaults."""

    prompt: str  # may name LoRAs as <lora:NAME:WEIGHT>; the tags are not sent to the encoders
    variant: str = "dev"  # a text-to-image variant name: dev, schnell, krea-dev
    width: int = 1024  # pixels, a multiple of 16
    height: int = 1024  # pixels, a multiple of 16
    steps: int | None = None  # denoising steps; None: the variant's default
    guidance: float | None = None  # distilled guidance; None: the variant's default; unused by [schnell]
    seed: int = -1  # -1 picks a random seed; image i of a batch uses seed + i
    num_images: int = 1  # images generated one after another
    loras: LoraRequest = ()  # (name, weight) pairs; validation adds those the prompt's tags name


def validate_text_to_image(
    p: TextToImageParams, settings: Settings, library: LoraLibrary | None = None
) -> TextToImageParams:
    """Return `p` checked and with defaults filled in; raise InvalidInput on the first bad field.

    The prompt's `<lora:NAME:WEIGHT>` tags join `p.loras`; with a `library`, unknown LoRA names are
    refused here rather than when the job runs.
    """
    prompt = check_prompt(p.prompt, settings)
    text, tagged = parse_prompt(prompt)
    if not text:
        raise InvalidInput("prompt", "has only LoRA tags; describe the image you want")
    loras = check_request(list(dict.fromkeys([*p.loras, *tagged])))  # validating twice changes nothing
    if library is not None:
        for name, _ in loras:
            library.get(name)
    try:
        variant = get_variant(p.variant)
    except ValueError as err:
        raise InvalidInput("variant", str(err).removeprefix("variant: ")) from None
    if variant.task != "text_to_image":
        raise InvalidInput(
            "variant",
            f"{variant.label} is not a text-to-image model; use dev, schnell or krea-dev",
        )
    width, height = check_size(p.width, p.height, settings)
    steps = variant.default_steps if p.steps is None else check_int("steps", p.steps)
    check_range("steps", steps, 1, settings.max_steps)
    guidance = None
    if variant.uses_guidance:
        guidance = variant.default_guidance if p.guidance is None else p.guidance
        if isinstance(guidance, bool) or not isinstance(guidance, int | float) or not math.isfinite(guidance):
            raise InvalidInput("guidance", f"expected a number, got {guidance!r}")
        check_range("guidance", float(guidance), 0.0, MAX_GUIDANCE)
        guidance = float(guidance)
    num_images = check_int("num_images", p.num_images)
    check_range("num_images", num_images, 1, settings.max_images)
    return replace(
        p,
        prompt=prompt,
        width=width,
        height=height,
        steps=steps,
        guidance=guidance,
        seed=check_seed(p.seed),
        num_images=num_images,
        loras=loras,
    )


@on_gpu
def text_to_image(
    registry: Registry,
    params: TextToImageParams,
    on_step: StepCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TaskResult:
    """Generate `params.num_images` images; `params` must have passed `validate_text_to_image`.

    The prompt (without its LoRA tags) is encoded once; image i is denoised from the noise of seed + i
    (drawn on the CPU, so a seed gives the same image on any device). The LoRAs of `params.loras` are
    active throughout, and recorded in each image's metadata with the prompt as it was written.
    """
    variant = get_variant(params.variant)
    seed = resolve_seed(params.seed)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    text, _ = parse_prompt(params.prompt)
    batch = Batch(
        prompt=params.prompt,
        encoder_prompt=text,
        variant=variant,
        seed=seed,
        steps=params.steps,
        guidance=params.guidance,
        num_images=params.num_images,
        size=(params.width, params.height),
        loras=params.loras,
    )
    with registry.pipeline(variant.name, loras=params.loras) as pipe:
        timings["load"] = time.perf_counter() - start
        images, phases = generate_batch(registry, pipe, batch, on_step, should_stop)
        timings |= phases
    timings["total"] = time.perf_counter() - start
    log.info(
        "text_to_image %s %dx%d x%d, %d steps: %.2f s",
        variant.name,
        params.width,
        params.height,
        params.num_images,
        params.steps,
        timings["total"],
    )
    return TaskResult(images=images, seed=seed, timings=timings)
