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
import re
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, PngImagePlugin

from flux_ui import __version__
from flux_ui.variants import VARIANTS

PNG_KEY = "parameters"
# `Key: value` where the value is either a quoted string (with \" escapes) or runs to the next comma.
_PAIR = re.compile(r'\s*([\w][\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


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


def _quote(value: str) -> str:
    return json.dumps(value) if ("," in value or ":" in value or '"' in value) else value


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
        ("Model", variant.label if variant else meta.variant),
        ("Variant", meta.variant),
    ]
    if meta.loras:
        pairs.append(("LoRAs", ", ".join(f"{n}:{w:g}" for n, w in meta.loras)))
    pairs += list(meta.extra.items())
    pairs.append(("Version", f"flux-ui {meta.version}"))
    line = ", ".join(f"{k}: {_quote(v)}" for k, v in pairs)
    return f"{meta.prompt}\n{line}"


def parse_parameters(text: str) -> dict[str, str]:
    """Split a `parameters` text into {"Prompt": ..., key: value, ...}; tolerant of other UIs' keys."""
    lines = text.strip().split("\n")
    last = lines[-1] if lines else ""
    pairs = _PAIR.findall(last) if len(lines) > 1 or "Steps:" in last else []
    if len(pairs) < 3:  # no settings line: the whole text is the prompt
        pairs, prompt_lines = [], lines
    else:
        prompt_lines = lines[:-1]
    out: dict[str, str] = {}
    prompt, negative = [], []
    for ln in prompt_lines:
        if ln.startswith("Negative prompt:") or negative:
            negative.append(ln.removeprefix("Negative prompt:").strip())
        else:
            prompt.append(ln)
    out["Prompt"] = "\n".join(prompt).strip()
    if negative:
        out["Negative prompt"] = "\n".join(negative)
    for key, value in pairs:
        value = value.strip()
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = json.loads(value)
        out[key.strip()] = value
    return out


def meta_from_parameters(text: str) -> ImageMeta:
    """Rebuild ImageMeta from a `parameters` text; raises ValueError naming what is missing or bad."""
    p = parse_parameters(text)
    try:
        width, height = (int(x) for x in p.get("Size", "").split("x"))
    except ValueError:
        raise ValueError(f"image parameters: 'Size' is missing or malformed ({p.get('Size')!r})") from None
    name = p.get("Variant") or next((v.name for v in VARIANTS.values() if v.label == p.get("Model")), "dev")
    loras = []
    for item in filter(None, (s.strip() for s in p.get("LoRAs", "").split(","))):
        lname, _, weight = item.rpartition(":")
        loras.append((lname, float(weight)))
    try:
        return ImageMeta(
            prompt=p["Prompt"],
            variant=name,
            seed=int(p["Seed"]),
            steps=int(p["Steps"]),
            guidance=float(p["Distilled CFG Scale"]) if "Distilled CFG Scale" in p else None,
            width=width,
            height=height,
            loras=tuple(loras),
            version=p.get("Version", "").removeprefix("flux-ui ") or "unknown",
        )
    except KeyError as err:
        raise ValueError(f"image parameters: {err.args[0]!r} is missing") from None


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
