"""Fill with FLUX.1 Fill [dev]: repaint a masked area (inpaint) and/or extend the canvas (outpaint)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from flux_ui.core.errors import InvalidInput
from flux_ui.core.gpu import on_gpu
from flux_ui.core.seeds import resolve_seed
from flux_ui.core.settings import Settings
from flux_ui.core.variants import get_variant
from flux_ui.media.images import alpha_or_luminance, image_hash, load_image, open_image, working_size
from flux_ui.models.registry import Registry
from flux_ui.tasks import Request, StepCallback, TaskResult, TaskSpec
from flux_ui.tasks.batch import Batch, generate_batch
from flux_ui.tasks.params import (
    MAX_SIDE,
    check_fast,
    check_guidance,
    check_int,
    check_num_images,
    check_prompt,
    check_seed,
    check_steps,
)

log = logging.getLogger(__name__)

VARIANT = "fill-dev"
SIDES = ("left", "right", "top", "bottom")
OUTPAINT_GREY = (128, 128, 128)  # what the new area holds before filling; the model never sees it (masked out)


@dataclass
class FillResult(TaskResult):
    repainted: float = 0.0  # fraction of the canvas the mask (and the outpainted area) covers


@dataclass(frozen=True)
class FillParams:
    """One Fill request as sent."""

    image: object  # the picture: PIL image, numpy array, file path or upload payload
    prompt: object  # what the filled area should show
    mask: object | None = None  # white (or, with transparency, painted) = repaint; resized to `image`
    left: object = 0  # pixels of `image` to add on the left and fill (outpainting)
    right: object = 0  # ... on the right
    top: object = 0  # ... at the top
    bottom: object = 0  # ... at the bottom
    steps: object | None = None  # denoising steps; None: 50, as published
    guidance: object | None = None  # distilled guidance; None: 30, as published
    seed: object = -1  # -1 picks a random seed; image i of a batch uses seed + i
    num_images: object = 1
    fast: object = False  # fast mode: fewer full transformer evaluations (flux_ui.models.fast)


@dataclass(frozen=True)
class FillJob:
    """A validated Fill request (see FillParams)."""

    image: Image.Image  # RGB
    prompt: str
    mask: Image.Image | None  # binary "L" at the image's size, 255 = repaint; None: outpainting only
    left: int
    right: int
    top: int
    bottom: int
    steps: int
    guidance: float
    seed: int
    num_images: int
    fast: bool = False  # fast mode (flux_ui.models.fast)

    @property
    def outpaint(self) -> tuple[int, int, int, int]:
        return (self.left, self.right, self.top, self.bottom)


def _check_outpaint(p: FillParams, size: tuple[int, int]) -> dict[str, int]:
    """Whole pixel counts >= 0 whose canvas stays within MAX_SIDE on each side it extends."""
    amounts = {side: check_int(side, getattr(p, side)) for side in SIDES}
    for side, value in amounts.items():
        if value < 0:
            raise InvalidInput(side, f"{value} is negative; use 0 or more pixels")
    for (a, b), base, what in ((("left", "right"), size[0], "wide"), (("top", "bottom"), size[1], "high")):
        total = base + amounts[a] + amounts[b]
        if total > MAX_SIDE and (amounts[a] or amounts[b]):
            raise InvalidInput(
                a if amounts[a] > amounts[b] else b,
                f"the canvas would be {total} px {what} (image {base} + {a} {amounts[a]} + {b} {amounts[b]}), "
                f"over the {MAX_SIDE} px limit; {a} and {b} together can add at most {max(MAX_SIDE - base, 0)}",
            )
    return amounts


def check_mask(value: object, size: tuple[int, int], outpainting: bool) -> Image.Image | None:
    """The binary mask at `size`, or None when there is none (allowed only when outpainting)."""
    if value is None:
        if outpainting:
            return None
        raise InvalidInput("mask", "is missing; paint over the area to fill, or set outpaint amounts")
    # Any size is accepted (and resized), so the 64 px minimum of images does not apply.
    raw = open_image(value, "mask", min_side=1)
    binary = alpha_or_luminance(raw).point(lambda v: 255 if v > 127 else 0)
    if binary.size != size:
        log.info("mask is %dx%d, the image %dx%d: resizing the mask", *binary.size, *size)
        binary = binary.resize(size, Image.Resampling.NEAREST)
    if binary.getextrema()[1] == 0:
        if outpainting:
            return None
        raise InvalidInput("mask", "is empty (nothing is white or painted); paint over the area to fill")
    return binary


def validate_fill(p: FillParams, settings: Settings) -> FillJob:
    """`p` checked, images decoded and defaults filled in; raise InvalidInput on the first bad field."""
    variant = get_variant(VARIANT)
    image = load_image(p.image, "image")
    prompt = check_prompt(p.prompt, settings)
    amounts = _check_outpaint(p, image.size)
    mask = check_mask(p.mask, image.size, outpainting=any(amounts.values()))
    return FillJob(
        image=image,
        prompt=prompt,
        mask=mask,
        **amounts,
        steps=check_steps(p.steps, variant.default_steps, settings),
        guidance=check_guidance(p.guidance, variant.default_guidance),
        seed=check_seed(p.seed),
        num_images=check_num_images(p.num_images, settings),
        fast=check_fast(p.fast, settings),
    )


def build_canvas(p: FillJob, max_pixels: int) -> tuple[Image.Image, Image.Image]:
    """The image and mask the model gets: the picture on a canvas grown by the outpaint amounts, the new
    area masked, both scaled to the working size (at most `max_pixels`, multiples of 16)."""
    image = p.image
    w, h = image.size
    canvas_size = (w + p.left + p.right, h + p.top + p.bottom)
    canvas = Image.new("RGB", canvas_size, OUTPAINT_GREY)
    canvas.paste(image, (p.left, p.top))
    mask = Image.new("L", canvas_size, 255)
    mask.paste(p.mask if p.mask is not None else Image.new("L", (w, h), 0), (p.left, p.top))
    size = working_size(*canvas_size, max_pixels)
    if size != canvas_size:
        log.info("fill canvas %dx%d -> working size %dx%d", *canvas_size, *size)
        canvas = canvas.resize(size, Image.Resampling.LANCZOS)
        mask = mask.resize(size, Image.Resampling.NEAREST)
    return canvas, mask


@on_gpu
def fill(
    registry: Registry,
    params: FillJob,
    on_step: StepCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FillResult:
    """Fill the masked and outpainted areas of `params.image`.

    The result has the canvas's working size; outside the mask the picture is re-rendered by the model
    (as FLUX.1 Fill does), not pasted back.
    """
    variant = get_variant(VARIANT)
    start = time.perf_counter()
    canvas, mask = build_canvas(params, registry.settings.max_pixels)
    extra = {"Source hash": image_hash(params.image)}
    if params.mask is not None:
        extra["Mask hash"] = image_hash(params.mask)
    if any(params.outpaint):
        extra["Outpaint"] = ", ".join(f"{s} {v}" for s, v in zip(SIDES, params.outpaint, strict=True))
    batch = Batch(
        prompt=params.prompt,
        variant=variant,
        seed=resolve_seed(params.seed),
        steps=params.steps,
        guidance=params.guidance,
        num_images=params.num_images,
        size=canvas.size,
        extra=extra,
        fast=params.fast,
    )
    with registry.pipeline(variant.name) as pipe:
        load = time.perf_counter() - start
        images, timings = generate_batch(registry, pipe, batch, on_step, should_stop, image=canvas, mask_image=mask)
    timings = {"load": load, **timings, "total": time.perf_counter() - start}
    repainted = float(np.asarray(mask).mean() / 255)
    log.info(
        "fill %dx%d, %.0f%% repainted, x%d, %d steps: %.2f s",
        *canvas.size,
        100 * repainted,
        batch.num_images,
        batch.steps,
        timings["total"],
    )
    return FillResult(images=images, seed=batch.seed, timings=timings, repainted=repainted)


def from_request(r: Request) -> FillParams:
    return FillParams(
        r.image,
        r.prompt,
        r.mask,
        r.left,
        r.right,
        r.top,
        r.bottom,
        r.steps,
        r.guidance,
        r.seed,
        r.num_images,
        fast=r.fast,
    )


def describe(result: FillResult) -> str:
    meta = result.images[0].meta
    return f"{meta.width}×{meta.height} px, {100 * result.repainted:.0f}% repainted"


SPEC = TaskSpec(
    name="fill",
    label="Fill",
    params=FillParams,
    validate=lambda p, settings, library: validate_fill(p, settings),
    run=fill,
    from_request=from_request,
    describe=describe,
)
