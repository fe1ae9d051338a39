"""Task parameters as dataclasses, validated early with errors that name the field, the value and the fix."""

from __future__ import annotations

import math
import re

from flux_ui.core.errors import InvalidInput
from flux_ui.core.seeds import SEED_MAX
from flux_ui.core.settings import Settings
from flux_ui.core.variants import FLUX1, Variant
from flux_ui.models import fast

MIN_SIDE = 64  # pixels; FLUX works in 16-pixel patches (8x VAE, 2x2 packing)
MAX_SIDE = 4096  # pixels, whatever the megapixel limit
MAX_GUIDANCE = 100.0
_RESOLUTION = re.compile(r"^\s*(\d{1,5})\s*[x×X]\s*(\d{1,5})\s*$")


def check_int(field: str, value: object) -> int:
    """An integer, also from a float with no fractional part (JSON and sliders send 256.0)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(field, f"expected a whole number, got {value!r}")
    if value != int(value):
        raise InvalidInput(field, f"expected a whole number, got {value!r}")
    return int(value)


def check_range(field: str, value: float, low: float, high: float, fix: str = "") -> None:
    if not low <= value <= high:
        raise InvalidInput(field, f"{value} is out of range; use {plain(low)} to {plain(high)}{fix}")


def plain(number: float) -> str:
    """A limit as a person types it: 4294967295, not 4.29497e+09 (`:g` keeps six digits); 0.5, not 0.500000."""
    return str(int(number)) if float(number).is_integer() else f"{number:.10g}"


def check_text(field: str, value: str) -> str:
    """`value`, if it is text the tokenizers can read: a lone UTF-16 surrogate (which JSON can carry but
    UTF-8 cannot) or a NUL is refused with its position."""
    for i, ch in enumerate(value):
        if "\ud800" <= ch <= "\udfff" or ch == "\x00":
            raise InvalidInput(field, f"holds an invalid character (U+{ord(ch):04X}) at position {i}; remove it")
    return value


def check_prompt(
    prompt: object,
    settings: Settings,
    field: str = "prompt",
    hint: str = "describe the image you want",
    *,
    optional: bool = False,
) -> str:
    """Stripped text, not empty unless `optional` (`hint` says what to write instead), not over the length
    limit, and readable by the tokenizers (`check_text`)."""
    if not isinstance(prompt, str):
        raise InvalidInput(field, f"expected text, got {type(prompt).__name__}")
    text = prompt.strip()
    if not text and not optional:
        raise InvalidInput(field, f"is empty; {hint}")
    if len(text) > settings.max_prompt_chars:
        raise InvalidInput(
            field,
            f"is {len(text)} characters long; shorten it to at most {settings.max_prompt_chars}",
        )
    return check_text(field, text)


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


def check_number(field: str, value: object, low: float, high: float) -> float:
    """A finite number (not a bool) within [low, high], as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(field, f"expected a number, got {value!r}")
    check_range(field, float(value), low, high)
    return float(value)


def check_float(field: str, value: object) -> float:
    """A finite number (ints too); bools and strings are refused."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(field, f"expected a number, got {value!r}")
    return float(value)


def check_steps(value: object, default: int, settings: Settings) -> int:
    """Denoising steps; None takes `default` (the variant's published value)."""
    steps = default if value is None else check_int("steps", value)
    check_range("steps", steps, 1, settings.max_steps)
    return steps


def check_guidance(value: object, default: float) -> float:
    """Distilled guidance; None takes `default` (the variant's published value)."""
    guidance = check_float("guidance", default if value is None else value)
    check_range("guidance", guidance, 0.0, MAX_GUIDANCE)
    return guidance


def check_fast(value: object, settings: Settings, variant: Variant | None = None) -> bool:
    """Fast mode on or off: a bool, and on only for a FLUX.1 model and where `fast.unavailable` finds
    nothing against it."""
    if not isinstance(value, bool):
        raise InvalidInput("fast", f"expected true or false, got {value!r}")
    if value and variant is not None and variant.family != FLUX1:
        # The step mask and its published figures are FLUX.1's; [klein] is a 4-step model already.
        raise InvalidInput("fast", f"is for the FLUX.1 models; {variant.label} runs without it, turn it off")
    if value and (reason := fast.unavailable(settings)):
        raise InvalidInput("fast", reason)
    return value


def check_num_images(value: object, settings: Settings) -> int:
    n = check_int("num_images", value)
    check_range("num_images", n, 1, settings.max_images)
    return n


def parse_resolution(value: str | None, default: tuple[int, int]) -> tuple[int, int]:
    """(width, height) from "WIDTHxHEIGHT" (the APIs' `resolution` field; also "1024 × 768"); `default`
    for None. The numbers are checked by `check_size`."""
    if value is None:
        return default
    m = _RESOLUTION.match(value)
    if not m:
        raise InvalidInput("resolution", f'expected "WIDTHxHEIGHT" such as "1024x1024", got {value!r}')
    return int(m.group(1)), int(m.group(2))
