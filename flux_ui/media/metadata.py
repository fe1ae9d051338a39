"""Generation parameters embedded in PNGs, in the `parameters` text chunk other SD UIs read and write.

The text follows the widely used layout: the prompt on the first line(s), then one line of
`Key: value` pairs separated by commas, values containing commas in double quotes:

    a red fox in the snow
    Steps: 28, Sampler: Euler, Schedule type: Simple, CFG scale: 1, Distilled CFG Scale: 3.5, Seed: 42,
    Size: 1024x1024, Model: FLUX.1 [dev], Variant: dev, Version: flux-ui 0.1.0

("Distilled CFG Scale" is the key other UIs use for FLUX's guidance.)
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image, PngImagePlugin

from flux_ui import __version__
from flux_ui.core.seeds import SEED_MAX  # params imports settings/policies/speed, none of which import metadata
from flux_ui.core.variants import VARIANTS

PNG_KEY = "parameters"
# The settings-line key of images made in fast mode ("15 of 28 steps in full (...)"); absent in exact mode.
# A key of its own, as other UIs add theirs: A1111, Civitai and sd-parsers list or skip keys they do not know.
FAST_MODE_KEY = "Fast mode"
MAX_PARAMETERS_CHARS = 65_536  # A1111 prompts are rarely over 10 kB; the cap bounds the work a hostile PNG can cause
MAX_STEPS = 1000
MAX_IMAGE_SIDE = 16_384  # pixels; generous for images from other UIs (upscaled ones too), not a generation limit
MAX_GUIDANCE = 1000.0  # absolute value; other UIs' guidance/CFG scales stay far below
# Key characters of a settings line: word characters (Unicode letters, digits, "_") and these; a key starts with
# a word character. Kept as in the regex the splitter replaced, so other UIs' keys ("Schedule type") still parse.
_KEY_PUNCT = frozenset(" -/")
_SHOWN_CHARS = 40  # at most this much of a bad value is quoted back in an error message
# <lora:NAME> or <lora:NAME:WEIGHT> in a prompt; NAME has no ':', '<' or '>'.
LORA_TAG = re.compile(r"<lora:([^<>:]*)(?::([^<>:]*))?>", re.IGNORECASE)


@dataclass(frozen=True)
class ImageMeta:
    """Everything needed to reproduce one image."""

    prompt: str
    variant: str  # variant name, a key of VARIANTS
    seed: int  # the seed actually used for this image
    steps: int
    guidance: float | None  # None for guidance-free variants ([schnell])
    width: int
    height: int
    loras: tuple[tuple[str, float], ...] = ()  # (adapter name, weight)
    extra: dict[str, str] = field(default_factory=dict)  # task-specific keys, e.g. "Source hash"
    version: str = __version__
    model_hash: str = ""  # A1111's "Model hash" of the transformer file (10 hex digits), "" if not a file
    lora_hashes: tuple[tuple[str, str], ...] = ()  # (LoRA name, A1111's 12-digit hash of its tensors)


def _quote(value: str) -> str:
    return json.dumps(value) if ("," in value or ":" in value or '"' in value) else value


def prompt_with_tags(prompt: str, loras: tuple[tuple[str, float], ...]) -> str:
    """`prompt` with a `<lora:NAME:WEIGHT>` tag for each LoRA it does not tag already, as A1111 and Forge
    write them: the tags are how other tools (Civitai, sd-parsers) read an image's LoRAs."""
    tagged = {m.group(1).strip() for m in LORA_TAG.finditer(prompt)}
    tags = [f"<lora:{n}:{w:g}>" for n, w in loras if n not in tagged]
    return " ".join([prompt, *tags]) if tags else prompt


def prompt_without_tags(prompt: str, names) -> str:
    """`prompt` less the tags of the LoRAs `names`: what our own images' prompts were before
    `prompt_with_tags` (their LoRAs are read from the "LoRAs" key, so the form does not get them twice)."""
    names = set(names)
    text = LORA_TAG.sub(lambda m: " " if m.group(1).strip() in names else m.group(0), prompt)
    return re.sub(r" *\n *", "\n", re.sub(r"[ \t]+", " ", text)).strip() if names else prompt


def format_parameters(meta: ImageMeta) -> str:
    """The `parameters` text for one image."""
    variant = VARIANTS.get(meta.variant)
    pairs: list[tuple[str, str]] = [
        ("Steps", str(meta.steps)),
        ("Sampler", "Euler"),
        ("Schedule type", "Simple"),
        ("CFG scale", "1"),
    ]
    if meta.guidance is not None:
        pairs.append(("Distilled CFG Scale", f"{meta.guidance:g}"))
    pairs += [
        ("Seed", str(meta.seed)),
        ("Size", f"{meta.width}x{meta.height}"),
        *([("Model hash", meta.model_hash)] if meta.model_hash else []),
        ("Model", variant.label if variant else meta.variant),
        ("Variant", meta.variant),
    ]
    if meta.loras:
        pairs.append(("LoRAs", ", ".join(f"{n}:{w:g}" for n, w in meta.loras)))
    if meta.lora_hashes:
        pairs.append(("Lora hashes", ", ".join(f"{n}: {h}" for n, h in meta.lora_hashes)))
    pairs += list(meta.extra.items())
    pairs.append(("Version", f"flux-ui {meta.version}"))
    line = ", ".join(f"{k}: {_quote(v)}" for k, v in pairs)
    return f"{prompt_with_tags(meta.prompt, meta.loras)}\n{line}"


def _is_word(ch: str) -> bool:
    """Whether `ch` is a word character as the regex `\\w` defines it for str (checked for every code point)."""
    return ch.isalnum() or ch == "_"


def _quoted_end(line: str, start: int) -> int:
    """The index just past the double-quoted string that starts at `line[start]`, or -1 if there is none.

    Inside the quotes a backslash escapes the next character (so `\\"` does not close); an unclosed quote
    or a backslash as the last character means no quoted string. One pass: O(length of the string).
    """
    n = len(line)
    if start >= n or line[start] != '"':
        return -1
    k = start + 1
    while k < n:
        ch = line[k]
        if ch == '"':
            return k + 1
        k += 2 if ch == "\\" else 1
    return -1


def _split_settings(line: str) -> list[tuple[str, str]]:
    """The `(key, raw value)` pairs of one settings line (no newlines), in order; values not yet stripped.

    A key is a run of word characters, spaces, "-" and "/" that starts with a word character and ends at a
    colon; its value is a double-quoted string (with backslash escapes) if a comma or the end of the line
    follows the closing quote, else everything up to the next comma. Text that forms no pair is skipped.

    Time is linear in len(line): each pass of the loop reads only characters between `i` and the position it
    moves `i` past, and a quoted scan stops at the first unescaped quote, which no later value can start
    before. (The `findall` regex this replaces retried every start position of a long colon-free run, each
    retry reading to the run's end: quadratic, about a minute for 100 kB, all of it holding the GIL.)
    """
    pairs: list[tuple[str, str]] = []
    n = len(line)
    i = 0
    while (colon := line.find(":", i)) >= 0:
        # The key: the run of key characters right before the colon, from its first word character. This is
        # the earliest start from `i` that reaches the colon, so the one a left-to-right search would find.
        start = colon
        while start > i and (_is_word(line[start - 1]) or line[start - 1] in _KEY_PUNCT):
            start -= 1
        while start < colon and not _is_word(line[start]):
            start += 1
        if start == colon:  # nothing key-like before this colon ("::", ". :"): look beyond it
            i = colon + 1
            continue
        j = colon + 1
        while j < n and line[j].isspace():
            j += 1
        end = _quoted_end(line, j)
        if end < 0 or (end < n and line[end] != ","):
            # Not a quoted value (or text follows its closing quote): the value runs to the next comma.
            end = line.find(",", j)
            end = n if end < 0 else end
        pairs.append((line[start:colon], line[j:end]))
        i = end + 1  # past the comma
    return pairs


def shown(value: str) -> str:
    """`value` quoted for an error message, cut to _SHOWN_CHARS characters (values may be ~64 K long)."""
    return repr(value) if len(value) <= _SHOWN_CHARS else repr(value[:_SHOWN_CHARS]) + "..."


def _unquote(key: str, value: str) -> str:
    """`value` stripped, and decoded if it is a JSON string in double quotes (as other UIs write commas)."""
    value = value.strip()
    if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
        try:
            return json.loads(value)
        except ValueError:  # JSONDecodeError, e.g. `\q` (a bad escape) or a raw control character
            raise ValueError(f"image parameters: {key!r} has a malformed quoted value ({shown(value)})") from None
    return value


def _check_length(text: str) -> None:
    if len(text) > MAX_PARAMETERS_CHARS:
        raise ValueError(
            f"image parameters: the text is {len(text)} characters long, over the limit of {MAX_PARAMETERS_CHARS}"
        )


def parse_parameters(text: str) -> dict[str, str]:
    """Split a `parameters` text into {"Prompt": ..., key: value, ...}; tolerant of other UIs' keys.

    Raises ValueError (starting "image parameters:") if the text is over MAX_PARAMETERS_CHARS characters or a
    quoted value is not a valid JSON string. Linear time in the length of the text.
    """
    _check_length(text)
    lines = text.strip().split("\n")
    last = lines[-1] if lines else ""
    pairs = _split_settings(last) if len(lines) > 1 or "Steps:" in last else []
    if len(pairs) < 3:  # no settings line: the whole text is the prompt
        pairs, prompt_lines = [], lines
    else:
        prompt_lines = lines[:-1]
    out: dict[str, str] = {}
    prompt: list[str] = []
    negative: list[str] = []
    for ln in prompt_lines:
        if ln.startswith("Negative prompt:") or negative:
            negative.append(ln.removeprefix("Negative prompt:").strip())
        else:
            prompt.append(ln)
    out["Prompt"] = "\n".join(prompt).strip()
    if negative:
        out["Negative prompt"] = "\n".join(negative)
    for key, value in pairs:
        key = key.strip()
        out[key] = _unquote(key, value)
    return out


def int_in(key: str, value: str, low: int, high: int, what: str = "") -> int:
    """`value` as an int within [low, high]; ValueError naming `key` (and `what`, e.g. "width") if not."""
    name = f"{key!r} {what}".rstrip()
    try:
        number = int(value)
    except ValueError:
        # int() refuses over 4300 digits (Python's guard against slow conversions): that is out of range too.
        if not value.strip().lstrip("+-").isdecimal():
            raise ValueError(f"image parameters: {name} is not a whole number ({shown(value)})") from None
        number = high + 1
    if not low <= number <= high:
        raise ValueError(f"image parameters: {name} is {shown(value.strip())}, out of range; allowed {low} to {high}")
    return number


def float_in(key: str, value: str, low: float = -math.inf, high: float = math.inf, what: str = "") -> float:
    """`value` as a finite float within [low, high]; ValueError naming `key` (and `what`) if not."""
    name = f"{key!r} {what}".rstrip()
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"image parameters: {name} is not a number ({shown(value)})") from None
    if not math.isfinite(number):
        raise ValueError(f"image parameters: {name} is {shown(value.strip())}; it must be a finite number")
    if not low <= number <= high:
        raise ValueError(
            f"image parameters: {name} is {shown(value.strip())}, out of range; allowed {low:g} to {high:g}"
        )
    return number


def meta_from_parameters(text: str) -> ImageMeta:
    """Rebuild ImageMeta from a `parameters` text; raises ValueError naming what is missing or bad.

    Ranges: Seed 0..SEED_MAX, Steps 1..MAX_STEPS, each side of Size ("WxH", pixels) 1..MAX_IMAGE_SIDE,
    Distilled CFG Scale finite within +-MAX_GUIDANCE, LoRA weights finite. Texts over MAX_PARAMETERS_CHARS
    characters are refused before any parsing.
    """
    p = parse_parameters(text)
    sides = p.get("Size", "").split("x")
    if len(sides) != 2:
        raise ValueError(f"image parameters: 'Size' is missing or malformed ({shown(p.get('Size', ''))})")
    width = int_in("Size", sides[0], 1, MAX_IMAGE_SIDE, "width")
    height = int_in("Size", sides[1], 1, MAX_IMAGE_SIDE, "height")
    name = p.get("Variant") or next((v.name for v in VARIANTS.values() if v.label == p.get("Model")), "dev")
    loras = []
    for item in filter(None, (s.strip() for s in p.get("LoRAs", "").split(","))):
        lname, colon, weight = item.rpartition(":")
        if not colon:
            raise ValueError(f"image parameters: 'LoRAs' entry {shown(item)} is not name:weight")
        # Any finite weight: UIs allow negative and over-1 weights; nan or inf would poison the merged model.
        loras.append((lname, float_in("LoRAs", weight, what=f"weight of {shown(lname)}")))
    for key in ("Seed", "Steps"):
        if key not in p:
            raise ValueError(f"image parameters: {key!r} is missing")
    return ImageMeta(
        prompt=prompt_without_tags(p["Prompt"], [n for n, _ in loras]),
        variant=name,
        seed=int_in("Seed", p["Seed"], 0, SEED_MAX),
        steps=int_in("Steps", p["Steps"], 1, MAX_STEPS),
        guidance=(
            float_in("Distilled CFG Scale", p["Distilled CFG Scale"], -MAX_GUIDANCE, MAX_GUIDANCE)
            if "Distilled CFG Scale" in p
            else None
        ),
        width=width,
        height=height,
        loras=tuple(loras),
        version=p.get("Version", "").removeprefix("flux-ui ") or "unknown",
    )


# Keys an upscale writes about itself (tasks/upscale.py); an upscale that carries its input's generation
# (`first_pass`) writes them afresh rather than keep an earlier upscale's.
UPSCALE_KEYS = frozenset(
    {
        "Hires upscale",
        "Hires upscaler",
        "Hires resize",
        "Hires tiles",
        "Denoising strength",
        "Source hash",
        "Source size",
    }
)
# Keys `format_parameters` writes from ImageMeta's own fields.
_WRITTEN = frozenset(
    {"Prompt", "Steps", "Sampler", "Schedule type", "CFG scale", "Distilled CFG Scale", "Seed", "Size"}
)
_WRITTEN |= {"Model hash", "Model", "Variant", "LoRAs", "Version"}


def first_pass(text: str | None) -> ImageMeta | None:
    """The text-to-image generation a `parameters` text of ours records, with its other keys (fast mode,
    LoRA hashes) as `extra`: what an upscale without a refine pass carries on, so that its picture still says
    how it was made (A1111 writes hires-fix images so: Size is the first pass, the Hires keys the rest).

    An earlier upscale that carried one gives that one. None for other tools' images, for pictures that
    were not made from text (image to image, Kontext, Fill... record a generation from another picture),
    and for texts that do not parse."""
    if not text:
        return None
    try:
        fields = parse_parameters(text)
        meta = meta_from_parameters(text)
    except ValueError:
        return None
    variant = VARIANTS.get(meta.variant)
    if not fields.get("Version", "").startswith("flux-ui ") or variant is None or variant.task != "text_to_image":
        return None
    carried = "Hires resize" in fields  # an upscale of ours that carries its first pass
    if not carried and ("Source hash" in fields or "Denoising strength" in fields):
        return None  # made from another picture
    extra = {k: v for k, v in fields.items() if k not in _WRITTEN and k not in UPSCALE_KEYS}
    return replace(meta, extra=extra, model_hash=fields.get("Model hash", ""), version=__version__)


def png_info(meta: ImageMeta) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text(PNG_KEY, format_parameters(meta))
    return info


def save_png(image: Image.Image, path: Path, meta: ImageMeta) -> Path:
    """Write `image` as PNG with its parameters embedded; parent folders are created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", pnginfo=png_info(meta))
    return path


def read_parameters(image: Image.Image) -> str | None:
    """The `parameters` text of an opened image, or None if it has none."""
    return image.info.get(PNG_KEY) or getattr(image, "text", {}).get(PNG_KEY)
