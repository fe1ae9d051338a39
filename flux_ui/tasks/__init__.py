"""Task functions: the registry and validated parameters in, a result dataclass out. No UI code here.

One module per task; each ends with its `SPEC`, a `TaskSpec` that says everything a surface (the UI tabs,
REST, MCP, the Python API) needs to offer it, and `flux_ui.tasks.table.TASKS` collects them. This package
holds what the tasks share: the spec and request types, step events with live previews, cancellation and
the result types.

Each task has two parameter types: `...Params`, the raw values as a caller sent them (any type, images
in any form `media.images.load_image` reads), and `...Job`, what `validate` makes of them (every field
checked and typed, images decoded, defaults filled in). Task functions take only the latter.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from PIL import Image

from flux_ui.core.errors import Cancelled
from flux_ui.core.settings import Settings
from flux_ui.core.variants import FLUX1, FLUX2
from flux_ui.media.metadata import ImageMeta
from flux_ui.models.loras.library import LoraLibrary
from flux_ui.models.preview import unpack_flux2
from flux_ui.models.registry import Registry

P = TypeVar("P")  # a task's raw parameters
J = TypeVar("J")  # the same, validated
R = TypeVar("R")  # its result


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
    notes: tuple[str, ...] = ()  # what the user should be told about its making (a prompt cut short)


@dataclass
class TaskResult:
    images: list[GeneratedImage]
    seed: int  # the seed of the first image; image i used seed + i
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase
    replica: str | None = None  # the replica that made it (--replicas); None: this process


StepCallback = Callable[[StepEvent], None]


def step_callback(
    registry: Registry,
    on_step: StepCallback | None,
    should_stop: Callable[[], bool] | None,
    image_index: int,
    steps: int,
    total: int,
    size: tuple[int, int],
    family: str = FLUX1,
):
    """A diffusers `callback_on_step_end` that reports progress, makes previews (of a `family` pipeline's
    latents) and honours cancel."""
    every = registry.settings.preview_every

    def callback(pipe, i, t, kwargs):
        step = i + 1
        if should_stop is not None and should_stop():
            raise Cancelled()
        if on_step is not None:
            preview = None
            if every > 0 and step % every == 0 and step < steps:
                if family == FLUX2:
                    latents = unpack_flux2(pipe, kwargs["latents"], size)
                else:
                    latents = pipe._unpack_latents(kwargs["latents"], size[1], size[0], pipe.vae_scale_factor)
                preview = registry.previewer(family).to_image(latents, size)
            on_step(StepEvent(image_index, step, steps, image_index * steps + step, total, preview))
        return {}

    return callback


@dataclass(frozen=True)
class Request:
    """One request in the fields the APIs share (REST's `/generate` body, with images already decoded from
    base64 to bytes): each task's `from_request` picks what it uses. Fields a task does not use are ignored."""

    prompt: str = ""  # the prompt, Kontext's instruction or the VQA question
    image: object | None = None  # the input image (bytes, or anything load_image reads)
    images: tuple[object | None, ...] = ()  # Redux, FLUX.2 edit: more references
    strengths: tuple[object, ...] = ()  # Redux: one per reference
    strength: object | None = (
        None  # image to image, upscale, FLUX.2 inpaint: denoise strength; None: the task's default
    )
    scale: object | None = None  # upscale: output side / input side, 1.5-4; None: 2
    upscaler: str | None = None  # upscale: "auto", "lanczos" or an upscaler model's name; None: auto
    tiling: str | None = None  # upscale: refine pass in tiles, "auto", "on" or "off"; None: auto
    mask: object | None = None  # Fill, FLUX.2 inpaint: white = repaint
    control_image: object | None = None  # Control: a ready map
    resolution: str | None = None  # "WIDTHxHEIGHT"; Kontext also "auto"
    variant: str | None = None
    steps: object | None = None
    guidance: object | None = None
    seed: object = -1
    num_images: object = 1
    mode: str = "canny"
    route: str = "full"
    left: object = 0
    right: object = 0
    top: object = 0
    bottom: object = 0
    max_new_tokens: object | None = None
    fast: object = False  # fast mode (the FLUX.1 image tasks but upscale): see flux_ui.models.fast


_NUMBERED = re.compile(r"(image|strength)_(\d+)")


def api_field(field: str, resolution: str | None = None) -> str:
    """A task parameter's name in the APIs' shared fields (`Request`): the tasks name the UI's fields
    (`instruction`, `question`, `image_2`, `strength_1`, `width`); an API caller sent `prompt`,
    `images[0]`, `strengths[0]`, and `resolution` when it gave one."""
    if field in ("instruction", "question"):
        return "prompt"
    if field in ("width", "height", "size") and resolution is not None:
        return "resolution"
    if m := _NUMBERED.fullmatch(field):
        n = int(m.group(2))
        if m.group(1) == "strength":
            return f"strengths[{n - 1}]"
        return "image" if n == 1 else f"images[{n - 2}]"
    return field


def no_extra(result: Any) -> str:
    """`TaskSpec.describe` for tasks whose summary needs nothing beyond seed and timings."""
    return ""


@dataclass(frozen=True)
class TaskSpec(Generic[P, J, R]):
    """A task as every surface sees it. Adding a task is one module that ends with its TaskSpec, one line in
    `flux_ui.tasks.table`, and one tab layout (`flux_ui.ui.tabs`)."""

    name: str  # its name in every API: REST's `task`, the Gradio endpoint, the Python API's method
    label: str  # its tab's title
    params: type[P]  # the raw parameters
    validate: Callable[[P, Settings, LoraLibrary | None], J]  # raises InvalidInput naming the field
    run: Callable[[Registry, J, Callable | None, Callable[[], bool] | None], R]  # (registry, job, on_event, stop)
    from_request: Callable[[Request], P]  # the raw parameters from the APIs' shared fields
    describe: Callable[[R], str] = no_extra  # what the summary adds to seed and timings (a line, or "")
    images: bool = True  # whether results are images (TaskResult) delivered through `output.deliver`

    def execute(
        self,
        registry: Registry,
        job: J,
        on_event: Callable | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> R:
        """Run validated `job` where this server's GPU work goes: `run` on `registry`'s models, or, with
        --replicas, on a replica's (`registry.workers`). Every surface hands its jobs over here, after
        validating them and taking a turn in `registry.line`."""
        if registry.workers is None:
            return self.run(registry, job, on_event, should_stop)
        return registry.workers.run(self.name, job, on_event, should_stop)
