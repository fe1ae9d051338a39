"""Text to image with FLUX.1 [dev], [schnell] and Krea [dev], and every FLUX.2 model ([dev], [klein])."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from flux_ui.core.errors import InvalidInput
from flux_ui.core.gpu import on_gpu
from flux_ui.core.seeds import resolve_seed
from flux_ui.core.settings import Settings
from flux_ui.core.variants import get_variant, variants_for
from flux_ui.models.loras.library import LoraLibrary, LoraRequest, check_request, parse_prompt
from flux_ui.models.registry import Registry
from flux_ui.tasks import Request, StepCallback, TaskResult, TaskSpec
from flux_ui.tasks.batch import Batch, generate_batch
from flux_ui.tasks.params import (
    check_fast,
    check_guidance,
    check_num_images,
    check_prompt,
    check_seed,
    check_size,
    check_steps,
    parse_resolution,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextToImageParams:
    """One text-to-image request as sent. Defaults of None take the variant's published defaults."""

    prompt: object  # may name LoRAs as <lora:NAME:WEIGHT>; the tags are not sent to the encoders
    variant: object = "dev"  # a text-to-image variant name: dev, schnell, krea-dev, flux2-dev, flux2-klein-4b...
    width: object = 1024  # pixels, a multiple of 16
    height: object = 1024  # pixels, a multiple of 16
    steps: object | None = None  # denoising steps; None: the variant's default
    guidance: object | None = None  # distilled guidance; None: the variant's default; unused by [schnell]
    seed: object = -1  # -1 picks a random seed; image i of a batch uses seed + i
    num_images: object = 1  # images generated one after another
    loras: LoraRequest = ()  # (name, weight) pairs; validation adds those the prompt's tags name
    fast: object = False  # fast mode: fewer full transformer evaluations (flux_ui.models.fast)


@dataclass(frozen=True)
class TextToImageJob:
    """A validated text-to-image request (see TextToImageParams)."""

    prompt: str  # as written, LoRA tags included (the metadata records it so)
    variant: str
    width: int
    height: int
    steps: int
    guidance: float | None  # None for [schnell] and FLUX.2 [klein] distilled, which take no guidance
    seed: int  # -1: random
    num_images: int
    loras: LoraRequest  # those of the request and the prompt's tags
    fast: bool = False  # fast mode (flux_ui.models.fast)


def validate_text_to_image(
    p: TextToImageParams, settings: Settings, library: LoraLibrary | None = None
) -> TextToImageJob:
    """`p` checked and with defaults filled in; raise InvalidInput on the first bad field.

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
    if not isinstance(p.variant, str):
        raise InvalidInput("variant", f"expected a name such as dev, schnell or krea-dev, got {p.variant!r}")
    try:
        variant = get_variant(p.variant)
    except ValueError as err:
        raise InvalidInput("variant", str(err).removeprefix("variant: ")) from None
    if variant.task != "text_to_image":
        names = ", ".join(v.name for v in variants_for("text_to_image"))
        raise InvalidInput("variant", f"{variant.label} is not a text-to-image model; use one of: {names}")
    width, height = check_size(p.width, p.height, settings)
    return TextToImageJob(
        prompt=prompt,
        variant=variant.name,
        width=width,
        height=height,
        steps=check_steps(p.steps, variant.default_steps, settings),
        guidance=check_guidance(p.guidance, variant.default_guidance) if variant.uses_guidance else None,
        seed=check_seed(p.seed),
        num_images=check_num_images(p.num_images, settings),
        loras=loras,
        fast=check_fast(p.fast, settings, variant),
    )


@on_gpu
def text_to_image(
    registry: Registry,
    params: TextToImageJob,
    on_step: StepCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TaskResult:
    """Generate `params.num_images` images.

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
        fast=params.fast,
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


def from_request(r: Request) -> TextToImageParams:
    width, height = parse_resolution(r.resolution, (1024, 1024))
    return TextToImageParams(
        r.prompt, r.variant or "dev", width, height, r.steps, r.guidance, r.seed, r.num_images, fast=r.fast
    )


SPEC = TaskSpec(
    name="text_to_image",
    label="Text to image",
    params=TextToImageParams,
    validate=validate_text_to_image,
    run=text_to_image,
    from_request=from_request,
)
