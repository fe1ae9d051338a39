"""Task functions: the registry and validated parameters in, a result dataclass out. No UI code here.

One module per task; this package holds what they share: step events with live previews, cancellation,
the result types and seed handling.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image

from flux_ui.core.errors import Cancelled
from flux_ui.media.metadata import ImageMeta
from flux_ui.models.registry import Registry


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


@dataclass
class TaskResult:
    images: list[GeneratedImage]
    seed: int  # the seed of the first image; image i used seed + i
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase


StepCallback = Callable[[StepEvent], None]


def step_callback(
    registry: Registry,
    on_step: StepCallback | None,
    should_stop: Callable[[], bool] | None,
    image_index: int,
    steps: int,
    total: int,
    size: tuple[int, int],
):
    """A diffusers `callback_on_step_end` that reports progress, makes previews and honours cancel."""
    every = registry.settings.preview_every

    def callback(pipe, i, t, kwargs):
        step = i + 1
        if should_stop is not None and should_stop():
            raise Cancelled()
        if on_step is not None:
            preview = None
            if every > 0 and step % every == 0 and step < steps:
                latents = pipe._unpack_latents(kwargs["latents"], size[1], size[0], pipe.vae_scale_factor)
                preview = registry.previewer().to_image(latents, size)
            on_step(StepEvent(image_index, step, steps, image_index * steps + step, total, preview))
        return {}

    return callback
