"""Task parameters as dataclasses, validated early with errors that name the field, the value and the fix."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from flux_ui.settings import Settings
from flux_ui.variants import get_variant

SEED_MAX = 2**32 - 1  # seeds are 32-bit, as in other SD UIs, so they can be typed and shared
MIN_SIDE = 64  # pixels; FLUX works in 16-pixel patches (8x VAE, 2x2 packing)
MAX_SIDE = 4096  # pixels, whatever the megapixel limit
MAX_GUIDANCE = 100.0


class InvalidInput(ValueError):
    """Bad user input; `field` is the parameter's API name."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class TextToImageParams:
    """One text-to-image request. Defaults of None take the variant's published defaults."""

    prompt: str
    variant: str = "dev"  # a text-to-image variant name: dev, schnell, krea-dev
    width: int = 1024  # pixels, a multiple of 16
    height: int = 1024  # pixels, a multiple of 16
    steps: int | None = None  # denoising steps; None: the variant's default
    guidance: float | None = None  # distilled guidance; None: the variant's default; unused by [schnell]
    seed: int = -1  # -1 picks a random seed; image i of a batch uses seed + i
    num_images: int = 1  # images generated one after another


def check_int(field: str, value: object) -> int:
    """An integer, also from a float with no fractional part (JSON and sliders send 256.0)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(field, f"expected a whole number, got {value!r}")
    if value != int(value):
        raise InvalidInput(field, f"expected a whole number, got {value!r}")
    return int(value)


def check_range(field: str, value: int | float, low: float, high: float, fix: str = "") -> None:
    if not low <= value <= high:
        raise InvalidInput(field, f"{value} is out of range; use {low:g} to {high:g}{fix}")


def check_prompt(prompt: object, settings: Settings, field: str = "prompt") -> str:
    if not isinstance(prompt, str):
        raise InvalidInput(field, f"expected text, got {type(prompt).__name__}")
    text = prompt.strip()
    if not text:
        raise InvalidInput(field, "is empty; describe the image you want")
    if len(text) > settings.max_prompt_chars:
        raise InvalidInput(
            field, f"is {len(text)} characters long; shorten it to at most {settings.max_prompt_chars}"
        )
    return text


def check_size(width: object, height: object, settings: Settings) -> tuple[int, int]:
    w, h = check_int("width", width), check_int("height", height)
    for field, v in (("width", w), ("height", h)):
        if v % 16:
            lower, upper = v // 16 * 16, (v // 16 + 1) * 16
            raise InvalidInput(field, f"{v} is not a multiple of 16; use {lower} or {upper}")
        check_range(field, v, MIN_SIDE, MAX_SIDE)
    if w * h > settings.max_pixels:
        raise InvalidInput(
            "width",
            f"{w}x{h} is {w * h / 1e6:.2f} megapixels, over the limit of {settings.max_megapixels:g}; "
            "pick a smaller size (or raise --max-megapixels)",
        )
    return w, h


def check_seed(seed: object) -> int:
    s = check_int("seed", seed)
    if s != -1:
        check_range("seed", s, 0, SEED_MAX, " (or -1 for a random seed)")
    return s


def validate_text_to_image(p: TextToImageParams, settings: Settings) -> TextToImageParams:
    """Return `p` checked and with defaults filled in; raise InvalidInput on the first bad field."""
    prompt = check_prompt(p.prompt, settings)
    try:
        variant = get_variant(p.variant)
    except ValueError as err:
        raise InvalidInput("variant", str(err).removeprefix("variant: ")) from None
    if variant.task != "text_to_image":
        raise InvalidInput("variant", f"{variant.label} is not a text-to-image model; use dev, schnell or krea-dev")
    width, height = check_size(p.width, p.height, settings)
    steps = variant.default_steps if p.steps is None else check_int("steps", p.steps)
    check_range("steps", steps, 1, settings.max_steps)
    guidance = None
    if variant.uses_guidance:
        guidance = variant.default_guidance if p.guidance is None else p.guidance
        if isinstance(guidance, bool) or not isinstance(guidance, int | float) or not math.isfinite(guidance):
            raise InvalidInput("guidance", f"expected a number, got {guidance!r}")
        check_range("guidance", float(guidance), 0.0, MAX_GUIDANCE)
        guidance = float(guidance)
    num_images = check_int("num_images", p.num_images)
    check_range("num_images", num_images, 1, settings.max_images)
    return replace(
        p,
        prompt=prompt,
        width=width,
        height=height,
        steps=steps,
        guidance=guidance,
        seed=check_seed(p.seed),
        num_images=num_images,
    )
