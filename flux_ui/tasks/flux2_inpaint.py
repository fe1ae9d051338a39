"""FLUX.2 [klein] inpainting: repaint the masked area of a picture, through diffusers' Flux2KleinInpaintPipeline.

The picture is scaled to the working size (at most the megapixel limit, multiples of 16) and the mask with it;
the pipeline noises the picture's latents to `strength` and denoises, keeping the unmasked area's latents
as they were at every step. With strength 1 the masked area is drawn afresh; lower keeps more of it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from flux_ui.core.gpu import on_gpu
from flux_ui.core.seeds import resolve_seed
from flux_ui.core.settings import Settings
from flux_ui.core.variants import get_variant
from flux_ui.media.images import image_hash, load_image, working_size
from flux_ui.models.registry import Registry
from flux_ui.tasks import Request, StepCallback, TaskResult, TaskSpec
from flux_ui.tasks.batch import Batch, generate_batch
from flux_ui.tasks.fill import check_mask
from flux_ui.tasks.flux2_edit import DEFAULT_VARIANT, check_flux2_variant
from flux_ui.tasks.image_to_image import check_strength
from flux_ui.tasks.params import check_guidance, check_num_images, check_prompt, check_seed, check_steps

log = logging.getLogger(__name__)

DEFAULT_STRENGTH = 1.0  # the masked area is drawn from noise


@dataclass(frozen=True)
class Flux2InpaintParams:
    """One FLUX.2 inpainting request as sent. Defaults of None take the variant's published defaults."""

    image: object  # the picture: anything images.load_image reads
    mask: object  # white (or, with transparency, painted) = repaint; resized to `image`
    prompt: object  # what the repainted area should show
    variant: object = DEFAULT_VARIANT  # a FLUX.2 [klein] variant (they have the inpainting pipeline)
    strength: object | None = None  # 0 < strength <= 1: how far the masked area is noised; None: 1
    steps: object | None = None  # denoising steps at strength 1 (fewer run below it)
    guidance: object | None = None  # [klein] base: CFG scale; distilled: none
    seed: object = -1  # -1 picks a random seed; image i uses seed + i
    num_images: object = 1


@dataclass(frozen=True)
class Flux2InpaintJob:
    """A validated FLUX.2 inpainting request (see Flux2InpaintParams); image and mask at the working size."""

    image: Image.Image  # RGB, sides multiples of 16
    mask: Image.Image  # binary "L" at the image's size, 255 = repaint
    prompt: str
    variant: str
    strength: float
    steps: int
    guidance: float | None
    seed: int
    num_images: int


def validate_flux2_inpaint(p: Flux2InpaintParams, settings: Settings) -> Flux2InpaintJob:
    """`p` checked, image and mask decoded and scaled to the working size; raise InvalidInput on the first
    bad field."""
    name = check_flux2_variant(p.variant, inpaint=True)
    variant = get_variant(name)
    image = load_image(p.image, "image")
    mask = check_mask(p.mask, image.size, outpainting=False)
    prompt = check_prompt(p.prompt, settings)
    steps = check_steps(p.steps, variant.default_steps, settings)
    size = working_size(image.width, image.height, settings.max_pixels)
    if size != image.size:
        image = image.resize(size, Image.Resampling.LANCZOS)
        mask = mask.resize(size, Image.Resampling.NEAREST)
    return Flux2InpaintJob(
        image=image,
        mask=mask,
        prompt=prompt,
        variant=name,
        strength=check_strength(DEFAULT_STRENGTH if p.strength is None else p.strength, steps),
        steps=steps,
        guidance=check_guidance(p.guidance, variant.default_guidance) if variant.uses_guidance else None,
        seed=check_seed(p.seed),
        num_images=check_num_images(p.num_images, settings),
    )


@on_gpu
def flux2_inpaint(
    registry: Registry,
    params: Flux2InpaintJob,
    on_step: StepCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TaskResult:
    """Repaint the masked area of `params.image`, `params.num_images` times (seed + i each)."""
    variant = get_variant(params.variant)
    seed = resolve_seed(params.seed)
    size = params.image.size
    coverage = sum(params.mask.histogram()[128:]) / (size[0] * size[1])
    extra = {
        "Source hash": image_hash(params.image),
        "Strength": f"{params.strength:g}",
        "Repainted": f"{coverage:.0%}",
    }
    timings: dict[str, float] = {}
    start = time.perf_counter()
    batch = Batch(
        prompt=params.prompt,
        variant=variant,
        seed=seed,
        steps=params.steps,
        guidance=params.guidance,
        num_images=params.num_images,
        size=size,
        extra=extra,
        steps_run=params.steps - int(max(params.steps - params.steps * params.strength, 0)),  # diffusers' truncation
    )
    with registry.pipeline(variant.name, pipeline_class=variant.inpaint_pipeline_class) as pipe:
        timings["load"] = time.perf_counter() - start
        images, phases = generate_batch(
            registry,
            pipe,
            batch,
            on_step,
            should_stop,
            image=params.image,
            mask_image=params.mask,
            strength=params.strength,
        )
        timings |= phases
    timings["total"] = time.perf_counter() - start
    log.info("flux2_inpaint %s %dx%d x%d: %.2f s", variant.name, *size, params.num_images, timings["total"])
    return TaskResult(images=images, seed=seed, timings=timings)


def from_request(r: Request) -> Flux2InpaintParams:
    return Flux2InpaintParams(
        r.image, r.mask, r.prompt, r.variant or DEFAULT_VARIANT, r.strength, r.steps, r.guidance, r.seed, r.num_images
    )


def describe(result: TaskResult) -> str:
    extra = result.images[0].meta.extra
    return f"Repainted {extra['Repainted']} of the picture · strength {extra['Strength']}"


SPEC = TaskSpec(
    name="flux2_inpaint",
    label="FLUX.2 inpaint",
    params=Flux2InpaintParams,
    validate=lambda p, settings, library: validate_flux2_inpaint(p, settings),
    run=flux2_inpaint,
    from_request=from_request,
    describe=describe,
)
