"""Redux variation: one to four reference images (and an optional prompt) in, variations out.

FLUX.1 Redux [dev] is an image prior: its SigLIP encoder and Redux embedder turn each reference image into
tokens in T5's embedding space, which are appended to the prompt's T5 tokens; FLUX.1 [dev]'s transformer
then generates from that text-plus-image conditioning. The registry lends the prior (with the shared text
encoders) and the [dev] pipeline.

How the parts are weighted:

    prompt_embeds        = [prompt_embeds_scale * T5(prompt) ; sum_i strength_i * Redux(image_i)]
    pooled_prompt_embeds =  pooled_prompt_embeds_scale * CLIP(prompt)

With one image whose strength equals `prompt_embeds_scale`, this is exactly what diffusers'
FluxPriorReduxPipeline returns for the same two scales. With several images diffusers scales and sums whole
rows, each carrying its own copy of the prompt, so the prompt would count once per image and its weight
could not be set apart from the images'; here it counts once, with its own scale. An empty prompt is
encoded as "" (as the authors' reference code does), not replaced by zeros.
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
from flux_ui.core.variants import get_variant
from flux_ui.media.images import image_hash, load_image
from flux_ui.models.registry import Registry
from flux_ui.tasks import Request, StepCallback, TaskResult, TaskSpec
from flux_ui.tasks.batch import Batch, generate_batch
from flux_ui.tasks.params import (
    check_fast,
    check_guidance,
    check_num_images,
    check_number,
    check_prompt,
    check_seed,
    check_size,
    check_steps,
    parse_resolution,
)

log = logging.getLogger(__name__)

VARIANT = "redux-dev"
MAX_REFERENCES = 4  # reference images per request
MAX_SCALE = 2.0  # strengths and prompt scales: above this the conditioning leaves what the model has seen


@dataclass(frozen=True)
class ReduxParams:
    """One Redux request as sent. Defaults of None take the published Redux defaults ([dev], 28 steps,
    guidance 2.5)."""

    images: tuple[object | None, ...]  # 1-4 reference images, anything images.load_image reads; None: empty slot
    strengths: tuple[object, ...]  # one per image: scale of its Redux tokens, 0-2 (1 = as trained)
    prompt: object = ""  # optional text mixed in with the images
    prompt_embeds_scale: object = 1.0  # scale of the prompt's T5 tokens, 0-2
    pooled_prompt_embeds_scale: object = 1.0  # scale of the prompt's pooled CLIP vector, 0-2
    width: object = 1024  # pixels, a multiple of 16
    height: object = 1024  # pixels, a multiple of 16
    steps: object | None = None  # denoising steps
    guidance: object | None = None  # distilled guidance
    seed: object = -1  # -1 picks a random seed; variation i uses seed + i
    num_images: object = 1  # variations, made one after another
    fast: object = False  # fast mode: fewer full transformer evaluations (flux_ui.models.fast)


@dataclass(frozen=True)
class ReduxJob:
    """A validated Redux request (see ReduxParams): empty slots dropped, images decoded to RGB."""

    images: tuple[Image.Image, ...]
    strengths: tuple[float, ...]  # one per image
    prompt: str
    prompt_embeds_scale: float
    pooled_prompt_embeds_scale: float
    width: int
    height: int
    steps: int
    guidance: float
    seed: int
    num_images: int
    fast: bool = False  # fast mode (flux_ui.models.fast)


def validate_redux(p: ReduxParams, settings: Settings) -> ReduxJob:
    """`p` checked, images decoded and defaults filled in; raise InvalidInput on the first bad field.

    `images` may hold None for empty slots (a form with four image inputs); they are dropped here. Errors
    name the slot, `image_<n>` and `strength_<n>` (1-based), as in the API.
    """
    variant = get_variant(VARIANT)
    base = get_variant(variant.base)
    if len(p.strengths) != len(p.images):
        raise InvalidInput("strength_1", f"expected {len(p.images)} strengths, one per image, got {len(p.strengths)}")
    used = [(n, im, s) for n, (im, s) in enumerate(zip(p.images, p.strengths, strict=True), 1) if im is not None]
    if not used:
        raise InvalidInput("image_1", "is missing; upload at least one reference image")
    if len(used) > MAX_REFERENCES:
        raise InvalidInput(f"image_{used[MAX_REFERENCES][0]}", f"at most {MAX_REFERENCES} reference images are used")
    images = tuple(load_image(im, f"image_{n}") for n, im, _ in used)
    strengths = tuple(check_number(f"strength_{n}", s, 0.0, MAX_SCALE) for n, _, s in used)
    if not any(strengths):
        raise InvalidInput(f"strength_{used[0][0]}", "every strength is 0, so no image would count; raise one above 0")
    prompt = check_prompt(p.prompt, settings, optional=True)
    width, height = check_size(p.width, p.height, settings)
    return ReduxJob(
        images=images,
        strengths=strengths,
        prompt=prompt,
        prompt_embeds_scale=check_number("prompt_embeds_scale", p.prompt_embeds_scale, 0.0, MAX_SCALE),
        pooled_prompt_embeds_scale=check_number(
            "pooled_prompt_embeds_scale", p.pooled_prompt_embeds_scale, 0.0, MAX_SCALE
        ),
        width=width,
        height=height,
        steps=check_steps(p.steps, base.default_steps, settings),
        guidance=check_guidance(p.guidance, variant.default_guidance),
        seed=check_seed(p.seed),
        num_images=check_num_images(p.num_images, settings),
        fast=check_fast(p.fast, settings),
    )


@torch.inference_mode()
def redux_conditioning(prior, params: ReduxJob, device: str, max_sequence_length: int):
    """(prompt_embeds, pooled_prompt_embeds) for the [dev] pipeline, weighted as the module docstring says.

    `prior` is the FluxPriorReduxPipeline the registry lends, with the shared text encoders.
    """
    text, pooled, _ = prior.encode_prompt(
        prompt=params.prompt, prompt_2=None, device=device, max_sequence_length=max_sequence_length
    )
    features = prior.encode_image(list(params.images), device, 1)  # SigLIP's last hidden state, per image
    tokens = prior.image_embedder(features).image_embeds  # (images, tokens, T5 width)
    weights = torch.tensor(params.strengths, device=tokens.device, dtype=tokens.dtype)[:, None, None]
    image_tokens = (tokens * weights).sum(dim=0, keepdim=True)
    prompt_embeds = torch.cat([text * params.prompt_embeds_scale, image_tokens.to(text.dtype)], dim=1)
    return prompt_embeds, pooled * params.pooled_prompt_embeds_scale


@on_gpu
def redux_variation(
    registry: Registry,
    params: ReduxJob,
    on_step: StepCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TaskResult:
    """Make `params.num_images` variations.

    The conditioning is computed once; variation i starts from the noise of seed + i (drawn on the CPU).
    """
    variant = get_variant(VARIANT)
    base = get_variant(variant.base)
    seed = resolve_seed(params.seed)
    size = (params.width, params.height)
    extra = {
        "Source hash": ", ".join(image_hash(im) for im in params.images),
        "Redux strengths": ", ".join(f"{s:g}" for s in params.strengths),
        "Prompt embeds scale": f"{params.prompt_embeds_scale:g}",
        "Pooled prompt embeds scale": f"{params.pooled_prompt_embeds_scale:g}",
        "Base model": base.name,
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
        fast=params.fast,
    )
    with registry.pipeline(variant.name) as prior, registry.pipeline(base.name) as pipe:
        timings["load"] = time.perf_counter() - start
        t = time.perf_counter()
        embeds = redux_conditioning(prior, params, registry.settings.device, base.max_sequence_length)
        timings["encode"] = time.perf_counter() - t
        images, phases = generate_batch(registry, pipe, batch, on_step, should_stop, embeds=embeds)
        timings |= phases
    timings["total"] = time.perf_counter() - start
    log.info(
        "redux_variation %d reference(s) -> %dx%d x%d, %d steps: %.2f s",
        len(params.images),
        params.width,
        params.height,
        params.num_images,
        params.steps,
        timings["total"],
    )
    return TaskResult(images=images, seed=seed, timings=timings)


def from_request(r: Request) -> ReduxParams:
    refs = (r.image, *r.images)
    width, height = parse_resolution(r.resolution, (1024, 1024))
    return ReduxParams(
        refs,
        tuple(r.strengths) or (1.0,) * len(refs),
        r.prompt,
        width=width,
        height=height,
        steps=r.steps,
        guidance=r.guidance,
        seed=r.seed,
        num_images=r.num_images,
        fast=r.fast,
    )


SPEC = TaskSpec(
    name="redux_variation",
    label="Redux variation",
    params=ReduxParams,
    validate=lambda p, settings, library: validate_redux(p, settings),
    run=redux_variation,
    from_request=from_request,
)
