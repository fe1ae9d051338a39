"""Image to image: an input image, a prompt and a denoise strength in, a new image out, with any
text-to-image variant ([dev], [schnell], Krea [dev]) and LoRAs, through diffusers' FluxImg2ImgPipeline.

The input is resized to the output size and encoded once per request by the shared VAE (the mean of its
latent distribution, as FluxKontextPipeline encodes its reference); image i then starts from that latent
noised to the level `strength` picks on the schedule, with the noise of seed + i. The latent is handed to
the pipeline ready-made because FluxImg2ImgPipeline would otherwise sample it with the request's
generator, which shifts the noise by one draw: with the latent given, seed s draws the same noise as in
text to image, so strength 1 (pure noise, the full schedule) gives exactly the text-to-image picture of
that seed and size.

Strength 0 is refused rather than answered with the input: no denoising step would run (diffusers itself
raises), the seed would change nothing, and the "result" would be the input after a VAE round trip,
saved and labelled as a generation. A small strength such as 0.05 makes the lightest change there is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image

from flux_ui.core.errors import InvalidInput
from flux_ui.core.gpu import on_gpu
from flux_ui.core.seeds import resolve_seed
from flux_ui.core.settings import Settings
from flux_ui.core.variants import FLUX1, VARIANTS, get_variant, variants_for
from flux_ui.media.images import image_hash, load_image, working_size
from flux_ui.models.loras.library import LoraLibrary, LoraRequest, parse_prompt
from flux_ui.models.registry import Registry
from flux_ui.tasks import Request, StepCallback, TaskResult, TaskSpec
from flux_ui.tasks.batch import Batch, generate_batch
from flux_ui.tasks.params import check_number, check_size, parse_resolution
from flux_ui.tasks.text_to_image import TextToImageParams, validate_text_to_image

log = logging.getLogger(__name__)

PIPELINE_CLASS = "FluxImg2ImgPipeline"
AUTO = "auto"  # output size: the input's, scaled down to the megapixel limit in multiples of 16
DEFAULT_STRENGTH = 0.75  # A1111's and Forge's default denoising strength


@dataclass(frozen=True)
class ImageToImageParams:
    """One image-to-image request as sent. Defaults of None take the variant's published defaults."""

    image: object  # the input: anything images.load_image reads
    prompt: object  # what the result should show; may name LoRAs as <lora:NAME:WEIGHT>
    strength: object = DEFAULT_STRENGTH  # 0 < strength <= 1: how much of the schedule is rerun; 1 ignores the input
    variant: object = "dev"  # a text-to-image variant: dev, schnell, krea-dev
    size: object = AUTO  # "auto" (the input's size, within the megapixel limit) or "WIDTHxHEIGHT"
    steps: object | None = None  # steps of the full schedule; about strength x steps of them run
    guidance: object | None = None  # distilled guidance; unused by [schnell]
    seed: object = -1  # -1 picks a random seed; image i uses seed + i
    num_images: object = 1  # images made one after another from the same input
    loras: LoraRequest = ()  # (name, weight) pairs; the prompt's tags are added
    fast: object = False  # fast mode: fewer full transformer evaluations (flux_ui.models.fast)


@dataclass(frozen=True)
class ImageToImageJob:
    """A validated image-to-image request (see ImageToImageParams)."""

    image: Image.Image  # RGB, as uploaded; resized to width x height when encoded
    prompt: str  # as written, LoRA tags included
    strength: float  # in (0, 1]
    variant: str
    width: int
    height: int
    steps: int  # of the full schedule (what the metadata records, as other UIs do)
    guidance: float | None
    seed: int
    num_images: int
    loras: LoraRequest
    fast: bool = False  # fast mode (flux_ui.models.fast), over the steps that run

    @property
    def steps_run(self) -> int:
        """The denoising steps FluxImg2ImgPipeline runs: it skips the first steps - int(steps x strength)
        (its `get_timesteps`), so 0.6 of 28 runs 17."""
        return self.steps - int(max(self.steps - self.steps * self.strength, 0))


def output_size(size: object, image: Image.Image, settings: Settings) -> tuple[int, int]:
    """Parse the `size` field: "auto" (the input's size, scaled down to the megapixel limit, each side a
    multiple of 16) or "WIDTHxHEIGHT"."""
    if not isinstance(size, str):
        raise InvalidInput("size", f"expected 'auto' or WIDTHxHEIGHT, got {size!r}")
    try:
        if size.strip().lower() == AUTO:
            width, height = working_size(image.width, image.height, settings.max_pixels)
        else:
            width, height = parse_resolution(size, (0, 0))
        return check_size(width, height, settings)
    except InvalidInput as err:  # report it under the field the caller sent
        raise InvalidInput("size", str(err)) from None


def check_strength(value: object, steps: int) -> float:
    """The denoise strength: a number in (0, 1] that leaves at least one of `steps` steps to run."""
    strength = check_number("strength", value, 0.0, 1.0)
    if strength == 0:
        raise InvalidInput(
            "strength",
            "0 would leave the image unchanged (no denoising step runs); use a value above 0, "
            "e.g. 0.05 for the lightest change, or 1 to ignore the input",
        )
    if int(max(steps - steps * strength, 0)) >= steps:  # so small that steps x strength rounds to nothing
        raise InvalidInput("strength", f"{strength:g} is too small to run one of {steps} steps; use at least 0.01")
    return strength


def validate_image_to_image(
    p: ImageToImageParams, settings: Settings, library: LoraLibrary | None = None
) -> ImageToImageJob:
    """`p` checked, the image decoded, defaults filled in; raise InvalidInput on the first bad field.

    Prompt, LoRAs, variant, steps, guidance, seed and image count go through text to image's own
    validation, so both tasks accept and refuse the same values."""
    if isinstance(p.variant, str) and p.variant in VARIANTS and get_variant(p.variant).family != FLUX1:
        names = ", ".join(v.name for v in variants_for("text_to_image", FLUX1))
        raise InvalidInput(
            "variant", f"image to image runs FLUX.1 ({names}); edit with FLUX.2 in the FLUX.2 edit task (flux2_edit)"
        )
    image = load_image(p.image, "image")
    width, height = output_size(p.size, image, settings)
    base = validate_text_to_image(
        TextToImageParams(
            p.prompt, p.variant, width, height, p.steps, p.guidance, p.seed, p.num_images, p.loras, p.fast
        ),
        settings,
        library,
    )
    return ImageToImageJob(
        image=image,
        prompt=base.prompt,
        strength=check_strength(p.strength, base.steps),
        variant=base.variant,
        width=base.width,
        height=base.height,
        steps=base.steps,
        guidance=base.guidance,
        seed=base.seed,
        num_images=base.num_images,
        loras=base.loras,
        fast=base.fast,
    )


def encode_image(pipe, image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """`image` resized to `size` (width, height) by the pipeline's own image processor and encoded by its
    VAE into FLUX's latent space (the distribution's mean, shifted and scaled as the transformer expects):
    the form FluxImg2ImgPipeline takes as a ready latent."""
    vae = pipe.vae
    pixels = pipe.image_processor.preprocess(image, height=size[1], width=size[0])
    pixels = pixels.to(device=vae.device, dtype=vae.dtype)
    with torch.inference_mode():
        latents = vae.encode(pixels).latent_dist.mode()
    return (latents - vae.config.shift_factor) * vae.config.scaling_factor


@on_gpu
def image_to_image(
    registry: Registry,
    params: ImageToImageJob,
    on_step: StepCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TaskResult:
    """Redraw `params.image` as the prompt says, keeping as much of it as `1 - strength` leaves.

    The prompt (without its LoRA tags) and the image are encoded once; image i is denoised from the
    input's latent noised with seed + i (drawn on the CPU). The metadata records strength and the
    input's hash and size.
    """
    variant = get_variant(params.variant)
    seed = resolve_seed(params.seed)
    size = (params.width, params.height)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    text, _ = parse_prompt(params.prompt)
    batch = Batch(
        prompt=params.prompt,
        encoder_prompt=text,
        variant=variant,
        seed=seed,
        steps=params.steps,
        steps_run=params.steps_run,
        guidance=params.guidance,
        num_images=params.num_images,
        size=size,
        loras=params.loras,
        fast=params.fast,
        extra={
            "Denoising strength": f"{params.strength:g}",
            "Source hash": image_hash(params.image),
            "Source size": f"{params.image.width}x{params.image.height}",
        },
    )
    with registry.pipeline(variant.name, loras=params.loras, pipeline_class=PIPELINE_CLASS) as pipe:
        timings["load"] = time.perf_counter() - start
        t = time.perf_counter()
        latents = encode_image(pipe, params.image, size)
        timings["encode_image"] = time.perf_counter() - t
        images, phases = generate_batch(
            registry, pipe, batch, on_step, should_stop, image=latents, strength=params.strength
        )
        timings |= phases
    timings["total"] = time.perf_counter() - start
    log.info(
        "image_to_image %s %dx%d -> %dx%d x%d, strength %g (%d of %d steps): %.2f s",
        variant.name,
        params.image.width,
        params.image.height,
        params.width,
        params.height,
        params.num_images,
        params.strength,
        params.steps_run,
        params.steps,
        timings["total"],
    )
    return TaskResult(images=images, seed=seed, timings=timings)


def from_request(r: Request) -> ImageToImageParams:
    strength = DEFAULT_STRENGTH if r.strength is None else r.strength
    return ImageToImageParams(
        r.image,
        r.prompt,
        strength,
        r.variant or "dev",
        r.resolution or AUTO,
        r.steps,
        r.guidance,
        r.seed,
        r.num_images,
        fast=r.fast,
    )


def describe(result: TaskResult) -> str:
    meta = result.images[0].meta
    return (
        f"Output {meta.width}×{meta.height} from the {meta.extra['Source size']} input · "
        f"strength {meta.extra['Denoising strength']}"
    )


SPEC = TaskSpec(
    name="image_to_image",
    label="Image to image",
    params=ImageToImageParams,
    validate=validate_image_to_image,
    run=image_to_image,
    from_request=from_request,
    describe=describe,
)
