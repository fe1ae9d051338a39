"""Structure control with FLUX.1 Canny [dev] and Depth [dev], or BFL's Canny/Depth LoRAs on [dev].

A control map (Canny edges, or depth from a small depth-estimation model) is computed from a source image
at the output size, or taken as uploaded; the model then generates an image that follows it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from flux_ui.core.errors import InvalidInput
from flux_ui.core.gpu import on_gpu
from flux_ui.core.seeds import resolve_seed
from flux_ui.core.settings import Settings
from flux_ui.core.variants import CONTROL_LORAS, get_variant
from flux_ui.media.control_maps import CANNY_HIGH, CANNY_LOW, CANNY_MAX, canny
from flux_ui.media.images import image_hash, load_image, working_size
from flux_ui.models import sources
from flux_ui.models.loras import control as control_lora
from flux_ui.models.registry import Registry
from flux_ui.tasks import Request, StepCallback, TaskResult, TaskSpec
from flux_ui.tasks.batch import Batch, generate_batch
from flux_ui.tasks.params import (
    check_fast,
    check_float,
    check_guidance,
    check_int,
    check_num_images,
    check_prompt,
    check_range,
    check_seed,
    check_steps,
)

log = logging.getLogger(__name__)

MODES = {"canny": "canny-dev", "depth": "depth-dev"}  # mode -> full-transformer variant
ROUTES = ("full", "lora")  # the full Canny/Depth transformer, or BFL's LoRA on the [dev] transformer
MAX_LORA_SCALE = 2.0


@dataclass
class ControlResult(TaskResult):
    control_image: Image.Image | None = None  # the control map the images follow, at their size


@dataclass(frozen=True)
class ControlParams:
    """One structure-control request as sent."""

    prompt: object  # what to generate
    image: object | None = None  # source image the control map is computed from
    mode: object = "canny"  # canny (edges) or depth
    route: object = "full"  # full: FLUX.1 Canny/Depth [dev]; lora: BFL's LoRA on FLUX.1 [dev]
    control_image: object | None = None  # a ready control map; replaces the one computed from `image`
    low_threshold: object = CANNY_LOW  # Canny: gradients above this are edges if connected to strong ones
    high_threshold: object = CANNY_HIGH  # Canny: gradients above this are edges
    lora_scale: object | None = None  # LoRA route: strength of the LoRA; None: 0.85, as BFL's reference
    steps: object | None = None  # denoising steps; None: 50, as published
    guidance: object | None = None  # distilled guidance; None: 30 for Canny, 10 for Depth, as published
    seed: object = -1  # -1 picks a random seed; image i of a batch uses seed + i
    num_images: object = 1
    fast: object = False  # fast mode: fewer full transformer evaluations (flux_ui.models.fast)


@dataclass(frozen=True)
class ControlJob:
    """A validated structure-control request (see ControlParams)."""

    prompt: str
    image: Image.Image | None  # RGB; None when a ready map was sent
    mode: str  # a key of MODES
    route: str  # one of ROUTES
    control_image: Image.Image | None  # RGB
    low_threshold: int
    high_threshold: int
    lora_scale: float
    steps: int
    guidance: float
    seed: int
    num_images: int
    fast: bool = False  # fast mode (flux_ui.models.fast)


def _check_choice(field: str, value: object, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise InvalidInput(field, f"unknown {field} {value!r}; choose one of: {', '.join(choices)}")
    return value


def validate_control(p: ControlParams, settings: Settings) -> ControlJob:
    """`p` checked, images decoded and defaults filled in; raise InvalidInput on the first bad field."""
    mode = _check_choice("mode", p.mode, MODES)
    route = _check_choice("route", p.route, ROUTES)
    variant = get_variant(MODES[mode])
    if p.image is None and p.control_image is None:
        raise InvalidInput("image", "is missing; upload a source image (or a ready map as control_image)")
    image = None if p.image is None else load_image(p.image, "image")
    control_image = None if p.control_image is None else load_image(p.control_image, "control_image")
    prompt = check_prompt(p.prompt, settings)
    low, high = check_int("low_threshold", p.low_threshold), check_int("high_threshold", p.high_threshold)
    check_range("low_threshold", low, 0, CANNY_MAX)
    check_range("high_threshold", high, 0, CANNY_MAX)
    if low > high:
        raise InvalidInput("low_threshold", f"{low} is above high_threshold ({high}); make it lower")
    scale = CONTROL_LORAS[mode].default_scale if p.lora_scale is None else check_float("lora_scale", p.lora_scale)
    check_range("lora_scale", scale, 0.0, MAX_LORA_SCALE)
    return ControlJob(
        prompt=prompt,
        image=image,
        mode=mode,
        route=route,
        control_image=control_image,
        low_threshold=low,
        high_threshold=high,
        lora_scale=scale,
        steps=check_steps(p.steps, variant.default_steps, settings),
        guidance=check_guidance(p.guidance, variant.default_guidance),
        seed=check_seed(p.seed),
        num_images=check_num_images(p.num_images, settings),
        fast=check_fast(p.fast, settings),
    )


def control_map(
    registry: Registry,
    image: Image.Image,
    mode: str,
    size: tuple[int, int],
    low: int = CANNY_LOW,
    high: int = CANNY_HIGH,
) -> Image.Image:
    """The control map of an RGB `image` at `size` (width, height): Canny edges of the image resized to
    `size`, or its depth map."""
    if mode == "canny":
        return canny(image.resize(size, Image.Resampling.LANCZOS), low, high)
    with depth_estimator(registry) as estimator:
        return estimator(image, size)


@contextmanager
def control_lora_pipeline(registry: Registry, mode: str) -> Iterator[object]:
    """Lend a FluxControlPipeline on the [dev] transformer with BFL's `mode` ("canny" or "depth") LoRA
    applied, holding the registry's lock; on leaving, the LoRA is removed and the transformer checked to be
    as it was. If it cannot be restored exactly, it is dropped from the cache (and reloaded when next used).

    No Canny/Depth transformer is loaded: the [dev] transformer (cached, or loaded as for text-to-image)
    is borrowed. The LoRA file is read once and kept as an auxiliary entry.
    """
    lora = CONTROL_LORAS[mode]
    settings = registry.settings
    policy = settings.policy
    # The control LoRA widens the transformer's input layer (a new module, which the offloading hooks
    # do not place) and adds PEFT layers, which cannot wrap float8 layers.
    blocker = None
    if policy.fp8_at_load or policy.group_offload:
        blocker = f"--memory-policy {policy.name}"
    elif settings.speed == "fp8":
        blocker = "the float8 layers of --speed fp8 (use --speed compile for this route)"
    if blocker:
        raise InvalidInput(
            "route",
            f"BFL's control LoRAs do not work with {blocker}; use route 'full' "
            f"(the FLUX.1 {mode.capitalize()} [dev] transformer)",
        )
    src = sources.resolve_source(settings, lora.name, lora.repo_id)  # a folder, repo, or the file itself
    setting = f"--model {lora.name}=FOLDER or FILE"

    def read() -> dict:
        if sources.is_file(src):  # --models-dir or --model NAME=FILE: a bad file is named with the reason
            return sources.load_file(
                lora.label, Path(src), setting, lambda: control_lora.read(src, lora.weight_name), settings
            )
        return control_lora.read(src, lora.weight_name)

    with (
        registry.lend_aux(f"lora:{lora.name}", lora.label, src, setting, read, filename=lora.weight_name) as state_dict,
        registry.pipeline(lora.base, pipeline_class="FluxControlPipeline") as pipe,
    ):
        before = control_lora.snapshot(pipe.transformer, lora.name)
        try:
            control_lora.apply(pipe, state_dict, lora.name)
            yield pipe
        finally:
            try:
                restored = control_lora.remove(pipe.transformer, before)
            except Exception:  # noqa: BLE001 - whatever failed, this transformer must not be lent again
                log.exception("removing control LoRA %s failed", lora.name)
                restored = False
            if not restored:
                registry.forget_transformer(lora.base)


@contextmanager
def depth_estimator(registry: Registry) -> Iterator[object]:
    """Lend the depth-estimation model (an auxiliary entry: loaded once, evicted before FLUX parts),
    holding the registry's lock while in use."""
    from flux_ui.media.control_maps import DEPTH_ESTIMATOR_REPO, load_depth_estimator

    src = sources.resolve_source(registry.settings, "depth-estimator", DEPTH_ESTIMATOR_REPO)
    with registry.lend_aux(
        "depth-estimator",
        "Depth estimator",
        src,
        "--model depth-estimator=FOLDER",
        lambda: load_depth_estimator(src, registry.settings.dtype),
    ) as estimator:
        yield estimator


def output_size(p: ControlJob, settings: Settings) -> tuple[int, int]:
    """The source's (or the uploaded map's) size, scaled down to the megapixel limit, multiples of 16."""
    reference = p.control_image if p.control_image is not None else p.image
    assert reference is not None  # noqa: S101 - validate_control requires one of them
    return working_size(*reference.size, settings.max_pixels)


@on_gpu
def control(
    registry: Registry,
    params: ControlJob,
    on_step: StepCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ControlResult:
    """Generate images that follow the control map."""
    start = time.perf_counter()
    size = output_size(params, registry.settings)
    extra = {"Control": params.mode, "Control route": params.route}
    if params.control_image is not None:
        cmap = params.control_image.resize(size, Image.Resampling.BICUBIC)
        extra["Control map"] = "uploaded"
    else:
        assert params.image is not None  # noqa: S101 - validate_control requires one of them
        cmap = control_map(registry, params.image, params.mode, size, params.low_threshold, params.high_threshold)
        if params.mode == "canny":
            extra["Canny thresholds"] = f"{params.low_threshold}/{params.high_threshold}"
        extra["Source hash"] = image_hash(params.image)
    extra["Control hash"] = image_hash(cmap)
    map_time = time.perf_counter() - start

    lora = CONTROL_LORAS[params.mode]
    use_lora = params.route == "lora"
    batch = Batch(
        prompt=params.prompt,
        variant=get_variant(lora.base if use_lora else MODES[params.mode]),
        seed=resolve_seed(params.seed),
        steps=params.steps,
        guidance=params.guidance,
        num_images=params.num_images,
        size=size,
        loras=((lora.name, params.lora_scale),) if use_lora else (),
        extra=extra,
        fast=params.fast,
    )
    inputs = {"control_image": cmap}
    if use_lora:
        inputs["joint_attention_kwargs"] = {"scale": params.lora_scale}
    t = time.perf_counter()
    lend = control_lora_pipeline(registry, params.mode) if use_lora else registry.pipeline(MODES[params.mode])
    with lend as pipe:
        load = time.perf_counter() - t
        images, timings = generate_batch(registry, pipe, batch, on_step, should_stop, **inputs)
    timings = {"control_map": map_time, "load": load, **timings, "total": time.perf_counter() - start}
    log.info(
        "control %s (%s) %dx%d x%d, %d steps: %.2f s",
        params.mode,
        params.route,
        *size,
        batch.num_images,
        batch.steps,
        timings["total"],
    )
    return ControlResult(images=images, seed=batch.seed, timings=timings, control_image=cmap)


def from_request(r: Request) -> ControlParams:
    return ControlParams(
        r.prompt,
        r.image,
        r.mode,
        r.route,
        r.control_image,
        steps=r.steps,
        guidance=r.guidance,
        seed=r.seed,
        num_images=r.num_images,
        fast=r.fast,
    )


SPEC = TaskSpec(
    name="control",
    label="Control",
    params=ControlParams,
    validate=lambda p, settings, library: validate_control(p, settings),
    run=control,
    from_request=from_request,
)
