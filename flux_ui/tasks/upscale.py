"""Upscale and hires fix: an image enlarged 1.5-4x, then redrawn at low denoise so that the new pixels
get real detail instead of blur.

1. Enlarge: with an upscaler model (ESRGAN family and the others spandrel reads, from the models folders:
   see `flux_ui.models.upscalers`), run in tiles and brought to the asked size with Lanczos (most models
   are 4x; a 2x model runs twice for 4x); or, with none installed or `upscaler="lanczos"`, a Lanczos
   resize alone.
2. Refine (unless strength is 0): image to image over the enlarged picture with any text-to-image variant
   and LoRAs, at a low strength (0.3 by default) that keeps the composition and redraws the detail.

Beyond about 1.5 megapixels the refine pass runs in tiles of 1024 px overlapping by 128 px, blended with
feathered weights (`flux_ui.media.tiles`). diffusers has no tiled diffusion for FLUX (its `enable_tiling`
tiles only the VAE; there is no MultiDiffusion-style FLUX pipeline), and one whole-image pass past FLUX's
training sizes costs attention quadratic in the tokens (16,384 image tokens at 4 MP) and drifts into
repeated motifs; each 1 MP tile is a size FLUX knows. This is the Ultimate-SD-Upscale recipe users know
from A1111 and ComfyUI.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from flux_ui.core.errors import InvalidInput
from flux_ui.core.gpu import on_gpu
from flux_ui.core.policies import tile_vae
from flux_ui.core.seeds import resolve_seed
from flux_ui.core.settings import Settings
from flux_ui.core.variants import FLUX1, VARIANTS, get_variant, variants_for
from flux_ui.media.images import image_hash, load_image
from flux_ui.media.metadata import ImageMeta, first_pass, read_parameters
from flux_ui.media.tiles import Blender, Box, layout
from flux_ui.models import sources, upscalers
from flux_ui.models.loras.library import LoraLibrary, LoraRequest, parse_prompt
from flux_ui.models.registry import Registry
from flux_ui.tasks import GeneratedImage, Request, StepCallback, TaskResult, TaskSpec, step_callback
from flux_ui.tasks.batch import cut_notes
from flux_ui.tasks.image_to_image import PIPELINE_CLASS, check_strength, encode_image
from flux_ui.tasks.params import MAX_SIDE, check_number, check_seed, check_size
from flux_ui.tasks.text_to_image import TextToImageParams, validate_text_to_image

log = logging.getLogger(__name__)

AUTO = "auto"  # upscaler: the first model found in the models folders, else Lanczos
LANCZOS = "lanczos"  # upscaler: a plain resize
MIN_SCALE, MAX_SCALE = 1.5, 4.0
DEFAULT_SCALE = 2.0
DEFAULT_STRENGTH = 0.3  # hires fix's usual denoise: new detail, same picture
TILINGS = ("auto", "on", "off")  # refine pass in tiles: above TILE_ABOVE_MP, always, never
TILE = 1024  # pixels per side of a refine tile: FLUX's home size
TILE_OVERLAP = 128  # pixels shared by neighbouring refine tiles, cross-faded
TILE_ABOVE_MP = 1.5  # with tiling "auto", images over this many megapixels are refined in tiles
MAX_MODEL_PASSES = 3  # a 2x model reaches 4x in two passes; more would only blur what a resize does


@dataclass(frozen=True)
class UpscaleParams:
    """One upscale / hires-fix request as sent. Defaults of None take the variant's published defaults."""

    image: object  # the input: anything images.load_image reads
    prompt: object = ""  # what the image shows (the refine pass's prompt; may name LoRAs); unused at strength 0
    scale: object = DEFAULT_SCALE  # 1.5 to 4: output side / input side (rounded to multiples of 16)
    upscaler: object = AUTO  # "auto", "lanczos", or an upscaler model's name (its file name without suffix)
    strength: object = DEFAULT_STRENGTH  # refine pass denoise, 0 (no pass: upscale only) up to 1
    variant: object = "dev"  # the refine pass's text-to-image variant: dev, schnell, krea-dev
    steps: object | None = None  # steps of the full schedule; about strength x steps run per tile
    guidance: object | None = None  # distilled guidance; unused by [schnell]
    seed: object = -1  # -1 picks a random seed
    tiling: object = "auto"  # refine in tiles: auto (above 1.5 MP), on, off
    loras: LoraRequest = ()  # (name, weight) pairs; the prompt's tags are added


@dataclass(frozen=True)
class UpscaleJob:
    """A validated upscale request (see UpscaleParams)."""

    image: Image.Image  # RGB, as sent
    prompt: str  # as written, LoRA tags included ("" at strength 0)
    scale: float
    upscaler: str  # the model's name, or "lanczos"
    upscaler_path: Path | None  # the model's file; None for Lanczos
    strength: float  # 0: upscale only
    variant: str  # the refine pass's ("dev", unused, at strength 0)
    width: int  # output size, multiples of 16
    height: int
    steps: int  # of the full schedule (0 when no pass runs, and so in the metadata)
    guidance: float | None
    seed: int
    tiled: bool  # whether the refine pass runs in tiles
    loras: LoraRequest
    # Upscale only (strength 0): the text-to-image generation the input's parameters record, if it is one of
    # ours (`metadata.first_pass`); the output records it, so its parameters still say how it was made.
    first_pass: ImageMeta | None = None

    @property
    def steps_run(self) -> int:
        """Denoising steps per tile (FluxImg2ImgPipeline's count; see ImageToImageJob.steps_run)."""
        return self.steps - int(max(self.steps - self.steps * self.strength, 0)) if self.strength else 0


def scaled(image: Image.Image, scale: float) -> tuple[int, int]:
    """The input's sides times `scale`, each to the nearest multiple of 16 (FLUX's patch size)."""
    return tuple(max(16, round(side * scale / 16) * 16) for side in image.size)


def fits(size: tuple[int, int], settings: Settings) -> bool:
    return size[0] * size[1] <= settings.max_pixels and max(size) <= MAX_SIDE


def target_size(image: Image.Image, scale: float, settings: Settings) -> tuple[int, int]:
    """The output (width, height) of `scaled`; InvalidInput on `scale` when that is over the megapixel or
    side limit, naming the largest scale that fits."""
    width, height = scaled(image, scale)
    if not fits((width, height), settings):
        best = next((s / 100 for s in range(int(scale * 100), 0, -1) if fits(scaled(image, s / 100), settings)), 0)
        hint = f"use at most {best:g}" if best >= MIN_SCALE else "send a smaller image"
        limit = (
            f"over the limit of {settings.max_megapixels:g} megapixels"
            if width * height > settings.max_pixels
            else f"over {MAX_SIDE} px a side"
        )
        raise InvalidInput(
            "scale",
            f"{scale:g} makes {width}x{height} ({width * height / 1e6:.2f} megapixels) from the "
            f"{image.width}x{image.height} input, {limit}; {hint} (or raise --max-megapixels)",
        )
    return check_size(width, height, settings)


def pick_upscaler(value: object, settings: Settings) -> tuple[str, Path | None]:
    """(name, file) of the upscaler asked for: "auto" takes the first model found, else Lanczos."""
    if not isinstance(value, str):
        raise InvalidInput("upscaler", f"expected a name, got {value!r}")
    name = value.strip()
    found = upscalers.find(settings)
    if name.lower() == AUTO:
        return next(iter(found.items()), (LANCZOS, None))
    if name.lower() == LANCZOS:
        return LANCZOS, None
    if name not in found:
        names = ", ".join([AUTO, LANCZOS, *found])
        where = "upscale_models/ or ESRGAN/ below a --models-dir folder"
        raise InvalidInput(
            "upscaler", f"no upscaler model named {name!r}; choose one of: {names} (models go in {where})"
        )
    return name, found[name]


def validate_upscale(p: UpscaleParams, settings: Settings, library: LoraLibrary | None = None) -> UpscaleJob:
    """`p` checked, the image decoded, defaults filled in; raise InvalidInput on the first bad field.

    The refine pass's fields go through text to image's own validation, so both accept the same values."""
    image = load_image(p.image, "image")
    scale = check_number("scale", p.scale, MIN_SCALE, MAX_SCALE)
    width, height = target_size(image, scale, settings)
    name, path = pick_upscaler(p.upscaler, settings)
    strength = check_number("strength", p.strength, 0.0, 1.0)
    if not isinstance(p.tiling, str) or p.tiling not in TILINGS:
        raise InvalidInput("tiling", f"unknown tiling {p.tiling!r}; choose one of: {', '.join(TILINGS)}")
    tiled = p.tiling == "on" or (p.tiling == "auto" and width * height > TILE_ABOVE_MP * 1_000_000)
    if strength == 0:  # upscale only: the refine pass's prompt, model, steps and LoRAs are not used
        seed = check_seed(p.seed)
        made = first_pass(read_parameters(image))
        return UpscaleJob(image, "", scale, name, path, 0.0, "dev", width, height, 0, None, seed, False, (), made)
    hint = "describe the image (the refine pass redraws it from this prompt), or set strength 0 to upscale only"
    if isinstance(p.prompt, str) and not p.prompt.strip():
        raise InvalidInput("prompt", f"is empty; {hint}")
    if isinstance(p.variant, str) and p.variant in VARIANTS and get_variant(p.variant).family != FLUX1:
        names = ", ".join(v.name for v in variants_for("text_to_image", FLUX1))
        raise InvalidInput("variant", f"the refine pass runs FLUX.1 ({names}); FLUX.2 has no image-to-image pipeline")
    base = validate_text_to_image(
        TextToImageParams(p.prompt, p.variant, width, height, p.steps, p.guidance, p.seed, 1, p.loras),
        settings,
        library,
    )
    return UpscaleJob(
        image=image,
        prompt=base.prompt,
        scale=scale,
        upscaler=name,
        upscaler_path=path,
        strength=check_strength(strength, base.steps),
        variant=base.variant,
        width=width,
        height=height,
        steps=base.steps,
        guidance=base.guidance,
        seed=base.seed,
        tiled=tiled,
        loras=base.loras,
    )


def enlarge(registry: Registry, params: UpscaleJob) -> Image.Image:
    """Step 1: the input at the output size, through the upscaler model (lent by the registry as an
    auxiliary entry, evicted before any FLUX part) and a Lanczos resize to the exact size; or Lanczos alone."""
    size = (params.width, params.height)
    if params.upscaler_path is None:
        return params.image.resize(size, Image.Resampling.LANCZOS)
    path, device = params.upscaler_path, registry.settings.device
    what, setting = f"upscaler {params.upscaler}", "--models-dir (upscale_models/)"

    def read() -> upscalers.Upscaler:
        return sources.load_file(what, path, setting, lambda: upscalers.load(path, device))

    image = params.image
    with registry.lend_aux(f"upscaler:{path}", what, str(path), setting, read) as model:
        for _ in range(MAX_MODEL_PASSES):
            if image.width >= params.width and image.height >= params.height:
                break
            image = upscalers.upscale(model, image)
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)


def refine(
    registry: Registry,
    params: UpscaleJob,
    image: Image.Image,
    seed: int,
    on_step: StepCallback | None,
    should_stop: Callable[[], bool] | None,
) -> tuple[Image.Image, list[Box], tuple[str, ...], dict[str, float]]:
    """Step 2: image to image over `image` at `params.strength`, in tiles when `params.tiled`; returns the
    image, the tiles, notes for the user and timings. One CPU generator of `seed` draws every tile's
    noise in turn, so a seed gives the same result on any device."""
    size = (params.width, params.height)
    boxes = layout(size, TILE, TILE_OVERLAP, multiple=16) if params.tiled else [Box(0, 0, *size)]
    variant = get_variant(params.variant)
    text, _ = parse_prompt(params.prompt)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    with registry.pipeline(variant.name, loras=params.loras, pipeline_class=PIPELINE_CLASS) as pipe:
        timings["load"] = time.perf_counter() - t
        settings = registry.settings
        if tile_vae(settings.vae_tiling, settings.policy, (boxes[0].width, boxes[0].height)):
            pipe.vae.enable_tiling()
        else:
            pipe.vae.disable_tiling()
        notes = tuple(cut_notes(pipe, text, variant.max_sequence_length))
        t = time.perf_counter()
        with torch.inference_mode():
            prompt_embeds, pooled, _ = pipe.encode_prompt(
                prompt=text, prompt_2=None, device=settings.device, max_sequence_length=variant.max_sequence_length
            )
        timings["encode"] = time.perf_counter() - t
        t = time.perf_counter()
        generator = torch.Generator("cpu").manual_seed(seed)
        extra = {} if params.guidance is None else {"guidance_scale": params.guidance}
        blender = Blender(size, boxes)
        steps, total = params.steps_run, params.steps_run * len(boxes)
        for i, box in enumerate(boxes):
            tile_size = (box.width, box.height)
            latents = encode_image(pipe, image.crop(box.crop), tile_size)
            with torch.inference_mode():
                out = pipe(
                    prompt_embeds=prompt_embeds,
                    pooled_prompt_embeds=pooled,
                    image=latents,
                    strength=params.strength,
                    width=box.width,
                    height=box.height,
                    num_inference_steps=params.steps,
                    generator=generator,
                    max_sequence_length=variant.max_sequence_length,
                    callback_on_step_end=step_callback(registry, on_step, should_stop, i, steps, total, tile_size),
                    output_type="np",
                    **extra,
                )
            blender.add(box, out.images[0])
        timings["generate"] = time.perf_counter() - t
    pixels = (blender.result() * 255.0).round().clip(0, 255).astype(np.uint8)
    return Image.fromarray(pixels), boxes, notes, timings


@on_gpu
def upscale(
    registry: Registry,
    params: UpscaleJob,
    on_step: StepCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TaskResult:
    """Enlarge `params.image` to width x height and, unless strength is 0, refine it (see the module
    docstring). The metadata records A1111's hires keys (upscale, upscaler, denoising strength), the
    tiles and the input's hash and size."""
    start = time.perf_counter()
    seed = resolve_seed(params.seed)
    big = enlarge(registry, params)
    timings = {"upscale": time.perf_counter() - start, "load": 0.0, "generate": 0.0}
    extra = {
        "Hires upscale": f"{params.scale:g}",
        "Hires upscaler": params.upscaler,
        "Denoising strength": f"{params.strength:g}",
        "Source hash": image_hash(params.image),
        "Source size": f"{params.image.width}x{params.image.height}",
    }
    notes: tuple[str, ...] = ()
    if params.strength > 0:
        big, boxes, notes, phases = refine(registry, params, big, seed, on_step, should_stop)
        timings |= phases
        columns = len({b.x for b in boxes})
        extra["Hires tiles"] = f"{columns}x{len(boxes) // columns} of {boxes[0].width}x{boxes[0].height}"
    meta = ImageMeta(
        prompt=params.prompt,
        variant=params.variant,
        seed=seed,
        steps=params.steps,
        guidance=params.guidance,
        width=params.width,
        height=params.height,
        loras=params.loras,
        extra=extra,
    )
    if params.strength == 0 and params.first_pass is not None:
        meta = carried(params, extra)
    timings["total"] = time.perf_counter() - start
    log.info(
        "upscale %dx%d -> %dx%d with %s, strength %g, %s: %.2f s",
        *params.image.size,
        params.width,
        params.height,
        params.upscaler,
        params.strength,
        extra.get("Hires tiles", "no refine pass"),
        timings["total"],
    )
    return TaskResult(images=[GeneratedImage(big, meta, notes)], seed=seed, timings=timings)


def carried(params: UpscaleJob, extra: dict[str, str]) -> ImageMeta:
    """The metadata of an upscale without a refine pass whose input records its generation: that
    generation (prompt, model, seed, steps, first-pass Size...), then the upscale's keys, the scale counted
    from the first pass (two 2x upscales say 4) and the image's own size as "Hires resize"."""
    made = params.first_pass
    assert made is not None  # noqa: S101 - the caller checks it
    scale = params.scale if made.width == params.image.width else round(params.width / made.width, 2)
    hires = {"Hires upscale": f"{scale:g}", "Hires resize": f"{params.width}x{params.height}"}
    return replace(made, extra={**made.extra, **extra, **hires})


def from_request(r: Request) -> UpscaleParams:
    return UpscaleParams(
        r.image,
        r.prompt,
        DEFAULT_SCALE if r.scale is None else r.scale,
        r.upscaler or AUTO,
        DEFAULT_STRENGTH if r.strength is None else r.strength,
        r.variant or "dev",
        r.steps,
        r.guidance,
        r.seed,
        r.tiling or "auto",
    )


def describe(result: TaskResult) -> str:
    image, x = result.images[0].image, result.images[0].meta.extra
    how = f"refined at strength {x['Denoising strength']}" if "Hires tiles" in x else "no refine pass"
    tiles = f" · tiles {x['Hires tiles']}" if "Hires tiles" in x else ""
    return (
        f"Output {image.width}×{image.height} from the {x['Source size']} input · {x['Hires upscaler']} · {how}{tiles}"
    )


SPEC = TaskSpec(
    name="upscale",
    label="Upscale",
    params=UpscaleParams,
    validate=validate_upscale,
    run=upscale,
    from_request=from_request,
    describe=describe,
)
