"""FLUX.2 edit: one to several reference images and an instruction in, the edited (or composed) image out.

FLUX.2 takes reference images natively: diffusers' Flux2Pipeline and Flux2KleinPipeline encode each with the
VAE and append its latents to the sequence the transformer attends to, each at its own position in time
(so "the cat of image 2 on the sofa of image 1" can be said). What Kontext users stitched side by side is
one list here. The pipelines scale each reference down to at most 1 megapixel and crop it to multiples of
16; without a size, the output takes the first reference's size after that.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from flux_ui.core.errors import InvalidInput
from flux_ui.core.gpu import on_gpu
from flux_ui.core.seeds import resolve_seed
from flux_ui.core.settings import Settings
from flux_ui.core.variants import FLUX2, family_variants, get_variant
from flux_ui.media.images import image_hash, load_image, working_size
from flux_ui.models.registry import Registry
from flux_ui.tasks import Request, StepCallback, TaskResult, TaskSpec
from flux_ui.tasks.batch import Batch, generate_batch
from flux_ui.tasks.kontext import AUTO
from flux_ui.tasks.params import (
    check_guidance,
    check_num_images,
    check_prompt,
    check_seed,
    check_size,
    check_steps,
    parse_resolution,
)

log = logging.getLogger(__name__)

DEFAULT_VARIANT = "flux2-klein-4b"  # Apache-2.0, and the smallest
# References per request: the UI's slots. BFL names up to 10 for [dev]; each one lengthens every step's
# sequence by its latent tokens (4096 for a 1 MP reference), so a few already cost much more than one.
MAX_REFERENCES = 4
REFERENCE_PIXELS = 1024 * 1024  # what the pipelines scale each reference down to
MAX_ASPECT = 8  # the pipelines refuse references more elongated than 8:1


@dataclass(frozen=True)
class Flux2EditParams:
    """One FLUX.2 edit as sent. Defaults of None take the variant's published defaults."""

    images: tuple[object | None, ...]  # 1-4 references, anything images.load_image reads; None: an empty slot
    instruction: object  # what to make of them, e.g. "put the cat from image 2 on the sofa of image 1"
    variant: object = DEFAULT_VARIANT  # a FLUX.2 variant: flux2-dev, flux2-klein-4b, flux2-klein-9b, ...
    size: object = AUTO  # "auto" (the first reference's working size) or "WIDTHxHEIGHT", multiples of 16
    steps: object | None = None  # denoising steps
    guidance: object | None = None  # [dev]: distilled guidance; [klein] base: CFG scale; distilled: none
    seed: object = -1  # -1 picks a random seed; image i uses seed + i
    num_images: object = 1  # edits made one after another, from the same references


@dataclass(frozen=True)
class Flux2EditJob:
    """A validated FLUX.2 edit (see Flux2EditParams): empty slots dropped, references decoded to RGB."""

    images: tuple[Image.Image, ...]
    instruction: str
    variant: str
    width: int
    height: int
    steps: int
    guidance: float | None
    seed: int
    num_images: int


def check_flux2_variant(value: object, field: str = "variant", inpaint: bool = False) -> str:
    """A FLUX.2 variant's name (with `inpaint`, one that has an inpainting pipeline); InvalidInput otherwise."""
    valid = [v.name for v in family_variants(FLUX2) if not inpaint or v.inpaint_pipeline_class]
    if not isinstance(value, str) or value not in valid:
        raise InvalidInput(field, f"expected a FLUX.2 model{' that inpaints' if inpaint else ''}: {', '.join(valid)}")
    return value


def reference_size(image: Image.Image) -> tuple[int, int]:
    """The size the pipelines give a reference: at most 1 megapixel, sides floored to multiples of 16."""
    return working_size(image.width, image.height, REFERENCE_PIXELS)


def _check_reference(value: object, field: str) -> Image.Image:
    image = load_image(value, field)  # at least 64 px a side, as the pipelines require
    ratio = max(image.width / image.height, image.height / image.width)
    if ratio > MAX_ASPECT:
        raise InvalidInput(
            field, f"{image.width}x{image.height} is more elongated than {MAX_ASPECT}:1; crop it closer to square"
        )
    return image


def _output_size(size: object, first: Image.Image, settings: Settings) -> tuple[int, int]:
    if isinstance(size, str) and size.strip().lower() == AUTO:
        return check_size(*reference_size(first), settings)
    if not isinstance(size, str):
        raise InvalidInput("size", f"expected 'auto' or WIDTHxHEIGHT, got {size!r}")
    try:
        return check_size(*parse_resolution(size, (0, 0)), settings)
    except InvalidInput as err:  # reported under the field the caller sent
        raise InvalidInput("size", str(err).split(": ", 1)[-1]) from None


def validate_flux2_edit(p: Flux2EditParams, settings: Settings) -> Flux2EditJob:
    """`p` checked, references decoded, defaults filled in; raise InvalidInput on the first bad field
    (`image_<n>`, 1-based, for a reference)."""
    name = check_flux2_variant(p.variant)
    variant = get_variant(name)
    used = [(n, im) for n, im in enumerate(p.images, 1) if im is not None]
    if not used:
        raise InvalidInput("image_1", "is missing; upload at least one reference image")
    if len(used) > MAX_REFERENCES:
        raise InvalidInput(f"image_{used[MAX_REFERENCES][0]}", f"at most {MAX_REFERENCES} reference images are used")
    images = tuple(_check_reference(im, f"image_{n}") for n, im in used)
    instruction = check_prompt(p.instruction, settings, "instruction", "say what to make of the reference images")
    width, height = _output_size(p.size, images[0], settings)
    return Flux2EditJob(
        images=images,
        instruction=instruction,
        variant=name,
        width=width,
        height=height,
        steps=check_steps(p.steps, variant.default_steps, settings),
        guidance=check_guidance(p.guidance, variant.default_guidance) if variant.uses_guidance else None,
        seed=check_seed(p.seed),
        num_images=check_num_images(p.num_images, settings),
    )


@on_gpu
def flux2_edit(
    registry: Registry,
    params: Flux2EditJob,
    on_step: StepCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TaskResult:
    """Make `params.num_images` images from the references and the instruction (encoded once; image i
    starts from the noise of seed + i, drawn on the CPU)."""
    variant = get_variant(params.variant)
    seed = resolve_seed(params.seed)
    extra = {
        "References": str(len(params.images)),
        "Reference hashes": ", ".join(image_hash(im) for im in params.images),
        "Reference sizes": ", ".join(f"{im.width}x{im.height}" for im in params.images),
    }
    timings: dict[str, float] = {}
    start = time.perf_counter()
    batch = Batch(
        prompt=params.instruction,
        variant=variant,
        seed=seed,
        steps=params.steps,
        guidance=params.guidance,
        num_images=params.num_images,
        size=(params.width, params.height),
        extra=extra,
    )
    with registry.pipeline(variant.name) as pipe:
        timings["load"] = time.perf_counter() - start
        images, phases = generate_batch(registry, pipe, batch, on_step, should_stop, image=list(params.images))
        timings |= phases
    timings["total"] = time.perf_counter() - start
    log.info(
        "flux2_edit %s, %d reference(s) -> %dx%d x%d, %d steps: %.2f s",
        variant.name,
        len(params.images),
        params.width,
        params.height,
        params.num_images,
        params.steps,
        timings["total"],
    )
    return TaskResult(images=images, seed=seed, timings=timings)


def from_request(r: Request) -> Flux2EditParams:
    return Flux2EditParams(
        (r.image, *r.images),
        r.prompt,
        r.variant or DEFAULT_VARIANT,
        r.resolution or AUTO,
        r.steps,
        r.guidance,
        r.seed,
        r.num_images,
    )


def describe(result: TaskResult) -> str:
    meta = result.images[0].meta
    return f"Output {meta.width}×{meta.height} · {meta.extra['References']} reference(s)"


SPEC = TaskSpec(
    name="flux2_edit",
    label="FLUX.2 edit",
    params=Flux2EditParams,
    validate=lambda p, settings, library: validate_flux2_edit(p, settings),
    run=flux2_edit,
    from_request=from_request,
    describe=describe,
)
