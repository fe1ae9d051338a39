"""What Load parameters reads from a PNG, whichever tool made it: FLUX UI and A1111 / Forge (the
`parameters` text), ComfyUI (the `prompt` graph), SwarmUI (`sui_image_params` JSON in `parameters`),
InvokeAI (`invokeai_metadata` JSON) and PNGs that carry only a prompt.

Each reader returns a `Loaded`: the fields of the text-to-image form it could fill (None where the image
does not say), foreign model names mapped to our variants (`flux1-schnell-fp8` is [schnell],
`flux1-dev-Q8_0.gguf` is [dev]), and one note for everything it found and cannot carry over (a negative
prompt, hires settings, another sampler, an input image...), so nothing is dropped without a word.

A malformed value (a seed that is not a number, a size out of range) raises ValueError starting "image
parameters:", as `metadata.meta_from_parameters` does; a seed from a tool with a wider seed range
(ComfyUI's reach 2**64) is reported in a note and left out, as it cannot be carried over.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace

from PIL import Image

from flux_ui.core.seeds import SEED_MAX
from flux_ui.core.variants import VARIANTS
from flux_ui.media import comfyui_graph
from flux_ui.media.metadata import (
    FAST_MODE_KEY,
    MAX_GUIDANCE,
    MAX_IMAGE_SIDE,
    MAX_STEPS,
    PNG_KEY,
    float_in,
    int_in,
    parse_parameters,
    prompt_without_tags,
    shown,
)

MAX_JSON_CHARS = 1_000_000  # a ComfyUI graph of a few hundred nodes is well under; bounds a hostile PNG's cost
OTHER_TOOLS_SEED = "A seed gives another picture in another tool (each draws its noise its own way)."
# A1111 / Forge keys that say nothing about how to regenerate an image here.
_A1111_INFO = {"Model hash", "Version", "VAE", "VAE hash", "Lora hashes", "TI hashes", "Source hash", "Source size"}
_A1111_INFO_PREFIX = ("Module ",)  # Forge's "Module 1: ae, Module 2: clip_l..."
_A1111_MAPPED = {"Prompt", "Steps", "Distilled CFG Scale", "Seed", "Size", "Model", "Variant", "LoRAs", FAST_MODE_KEY}
_HIRES = re.compile(r"^(Hires|Denoising strength)")


@dataclass(frozen=True)
class Loaded:
    """The text-to-image form's values from an image; None where it does not say."""

    source: str  # "FLUX UI", "A1111 / Forge", "ComfyUI", "SwarmUI", "InvokeAI" or "prompt only"
    prompt: str
    variant: str | None = None  # a key of VARIANTS
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    width: int | None = None
    height: int | None = None
    loras: tuple[tuple[str, float], ...] = ()  # (name, weight); the form writes them as prompt tags
    fast: bool | None = None  # made in fast mode (our images say either way; other tools' say nothing)
    notes: tuple[str, ...] = ()  # what could not be carried over, one sentence each


def variant_for_model(name: str) -> tuple[str | None, str | None]:
    """Our variant for another tool's model name (a label of ours, a file name, a path), and a note when
    the match is a guess or there is none: (variant or None, note or None)."""
    for v in VARIANTS.values():
        if name in (v.label, v.name):
            return v.name, None
    base = os.path.basename(name.replace("\\", "/")).lower()
    base = re.sub(r"\.(safetensors|sft|gguf|ckpt|pt|pth|bin)$", "", base)
    words = set(re.split(r"[^a-z0-9]+", base))
    for key, variant in (
        ("kontext", "kontext-dev"),
        ("fill", "fill-dev"),
        ("canny", "canny-dev"),
        ("depth", "depth-dev"),
    ):
        if key in words:
            return variant, None
    for key, variant in (("krea", "krea-dev"), ("schnell", "schnell")):
        if key in base:
            return variant, None
    if "dev" in words or re.fullmatch(r"flux[._-]?1?[._-]?dev.*", base):
        return "dev", None
    if "flux" in base:
        return "dev", f"Model {name!r} is read as FLUX.1 [dev] (a fine-tune or merge of it, presumably)."
    return None, f"Model {name!r} is not a FLUX.1 model this app knows; the Model field is left as it was."


def _number(key: str, value: object, low: float, high: float, integer: bool) -> int | float:
    """A JSON value as a checked number (ValueError naming `key` if it is not one, or out of range)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"image parameters: {key!r} is not a number ({shown(repr(value))})")
    return int_in(key, str(value), int(low), int(high)) if integer else float_in(key, str(value), low, high)


def _seed(value: object, notes: list[str]) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > SEED_MAX:
        notes.append(f"Seed {value} is beyond this app's range (0 to {SEED_MAX}); the Seed field is left as it was.")
        return None
    return None if value is None else int(_number("Seed", value, 0, SEED_MAX, True))


def _loaded(source: str, found: dict, notes: list[str]) -> Loaded:
    """Check the raw values of `found` ("seed", "steps", "guidance", "width", "height", "model", "loras")."""
    variant = None
    if isinstance(found.get("model"), str) and found["model"]:
        variant, note = variant_for_model(found["model"])
        notes += [note] if note else []
    loras = []
    for name, weight in found.get("loras", []):
        if not isinstance(name, str) or not name:
            raise ValueError(f"image parameters: a LoRA name is not text ({shown(repr(name))})")
        name = re.sub(r"\.(safetensors|ckpt|pt)$", "", name.replace("\\", "/"))
        loras.append(
            (name, float(_number(f"weight of LoRA {name!r}", 1.0 if weight is None else weight, -100, 100, False)))
        )

    def get(key: str, label: str, low: float, high: float, integer: bool = True):
        return None if found.get(key) is None else _number(label, found[key], low, high, integer)

    prompt = found.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise ValueError(f"image parameters: the prompt is not text ({shown(repr(prompt))})")
    loaded = Loaded(
        source=source,
        prompt=prompt or "",
        variant=variant,
        seed=_seed(found.get("seed"), notes),
        steps=get("steps", "Steps", 1, MAX_STEPS),
        guidance=get("guidance", "Guidance", -MAX_GUIDANCE, MAX_GUIDANCE, False),
        width=get("width", "Size width", 1, MAX_IMAGE_SIDE),
        height=get("height", "Size height", 1, MAX_IMAGE_SIDE),
        loras=tuple(loras),
        fast=found.get("fast"),
    )
    missing = [
        label for key, label in (("seed", "seed"), ("steps", "steps"), ("width", "size")) if found.get(key) is None
    ]
    if missing:
        notes.append("The image does not say its " + ", ".join(missing) + "; those fields are left as they were.")
    if source != "FLUX UI":
        notes.append(OTHER_TOOLS_SEED)
    return replace(loaded, notes=tuple(notes))


def _sampling_notes(found: dict, notes: list[str], sampler_ok: tuple[str, ...], scheduler_ok: tuple[str, ...]) -> None:
    """Notes for what this app's sampling (Euler on FLUX's shifted schedule, distilled guidance) differs in."""
    negative = found.get("negative")
    if isinstance(negative, str) and negative.strip():
        notes.append(f"Negative prompt {shown(negative)} is not carried over: FLUX.1's distilled guidance takes none.")
    cfg = found.get("cfg")
    if isinstance(cfg, int | float) and not isinstance(cfg, bool) and cfg != 1:
        notes.append(f"CFG scale {cfg:g} (true CFG) is not carried over: only distilled guidance is offered here.")
    sampler, scheduler = found.get("sampler"), found.get("scheduler")
    if sampler is not None and str(sampler).lower() not in sampler_ok:
        notes.append(f"Sampler {sampler!r} is not carried over: this app samples with Euler.")
    if scheduler is not None and str(scheduler).lower() not in scheduler_ok:
        notes.append(f"Schedule {scheduler!r} is not carried over: this app uses FLUX's own shifted schedule.")
    denoise = found.get("denoise")
    if isinstance(denoise, int | float) and not isinstance(denoise, bool) and denoise < 1:
        notes.append(f"Denoise {denoise:g} means it started from an input image: use the Image to image tab for that.")


def from_a1111(text: str) -> Loaded:
    """FLUX UI's own and A1111 / Forge `parameters` text (a prompt alone if it has no settings line)."""
    p = parse_parameters(text)
    if len(p) == 1 or (len(p) == 2 and "Negative prompt" in p):
        return from_prompt_only(p["Prompt"])
    ours = p.get("Version", "").startswith("flux-ui ")
    if ours and p.get("Steps") == "0" and "Hires upscaler" in p:
        raise ValueError(
            "image parameters: it is an upscale without a refine pass (strength 0) of a picture that recorded "
            "no text-to-image generation (a photo, another tool's image, an edit), so there is no prompt, seed "
            "or steps to fill the form with; upscales of text-to-image pictures made here carry theirs"
        )
    sides = p.get("Size", "").split("x")
    if "Size" in p and len(sides) != 2:
        raise ValueError(f"image parameters: 'Size' is malformed ({shown(p['Size'])})")
    found: dict = {"prompt": p["Prompt"], "negative": p.get("Negative prompt"), "cfg": None}
    found |= {"seed": p.get("Seed"), "steps": p.get("Steps"), "guidance": p.get("Distilled CFG Scale")}
    if "Size" in p:
        found["width"], found["height"] = sides
    notes: list[str] = []
    variant_name = p.get("Variant") if p.get("Variant") in VARIANTS else None
    found["model"] = variant_name or p.get("Model")
    for item in filter(None, (s.strip() for s in p.get("LoRAs", "").split(","))):
        name, colon, weight = item.rpartition(":")
        if not colon:
            raise ValueError(f"image parameters: 'LoRAs' entry {shown(item)} is not name:weight")
        found.setdefault("loras", []).append((name, weight))
    if ours:  # our prompts carry the LoRAs' tags for other tools; the form gets them from "LoRAs" once
        found["prompt"] = prompt_without_tags(p["Prompt"], [n for n, _ in found.get("loras", [])])
        found["fast"] = FAST_MODE_KEY in p  # our images without the key were made in exact mode
    hires = [f"{k}: {v}" for k, v in p.items() if _HIRES.match(k)]
    if any(k.startswith("Hires") for k in p):
        notes.append(f"Hires fix ({', '.join(hires)}) is not carried over: the form gets the first pass.")
    elif "Denoising strength" in p and not ours:
        notes.append(
            f"Denoising strength {p['Denoising strength']}: it was made from an input image; use Image to image."
        )
    elif "Denoising strength" in p:
        notes.append(
            f"It was made by Image to image at strength {p['Denoising strength']}; the form is text to image's."
        )
    if p.get("CFG scale") not in (None, "1", "1.0"):
        found["cfg"] = float_in("CFG scale", p["CFG scale"])
    _sampling_notes(
        {**found, "sampler": p.get("Sampler"), "scheduler": p.get("Schedule type")}, notes, ("euler",), ("simple",)
    )
    for key, value in p.items():
        if key in _A1111_MAPPED or key in _A1111_INFO or key.startswith(_A1111_INFO_PREFIX) or _HIRES.match(key):
            continue
        if key not in ("Negative prompt", "CFG scale", "Sampler", "Schedule type", "Context size"):
            notes.append(f"{key}: {shown(value)} is not carried over.")
    return _loaded("FLUX UI" if ours else "A1111 / Forge", found, notes)


def from_prompt_only(text: str) -> Loaded:
    return Loaded(
        source="prompt only",
        prompt=text.strip(),
        notes=("Only a prompt was found; the other fields are left as they were.",),
    )


def from_comfyui(data: object) -> Loaded:
    found, notes = comfyui_graph.walk(data)
    _sampling_notes(found, notes, ("euler",), ("simple",))
    return _loaded("ComfyUI", found, notes)


_SWARM_MAPPED = {"prompt", "model", "seed", "steps", "width", "height", "fluxguidancescale", "loras", "loraweights"}
_SWARM_INFO = {
    "aspectratio", "swarm_version", "date", "generation_time", "imageformat", "nopreviews", "wildcardseed",
    "used_wildcards", "original_prompt", "negativeprompt", "cfgscale", "sampler", "scheduler", "images",
}  # fmt: skip


def from_swarmui(params: object) -> Loaded:
    """SwarmUI's `sui_image_params` object (its parameters by their ids: prompt, model, seed, steps,
    fluxguidancescale, width, height, loras with loraweights...)."""
    if not isinstance(params, dict):
        raise ValueError("image parameters: SwarmUI 'sui_image_params' is not an object")
    found = {k: params.get(k) for k in ("prompt", "model", "seed", "steps", "width", "height")}
    found |= {"guidance": params.get("fluxguidancescale"), "negative": params.get("negativeprompt")}
    found |= {"cfg": params.get("cfgscale"), "sampler": params.get("sampler"), "scheduler": params.get("scheduler")}
    names, weights = params.get("loras") or [], params.get("loraweights") or []
    if not isinstance(names, list) or not isinstance(weights, list):
        raise ValueError("image parameters: SwarmUI 'loras' and 'loraweights' are not lists")
    found["loras"] = [(n, weights[i] if i < len(weights) else 1) for i, n in enumerate(names)]
    notes: list[str] = []
    _sampling_notes(found, notes, ("euler",), ("simple",))
    vae = params.get("vae")
    if isinstance(vae, str) and not re.fullmatch(r"(?i)(.*/)?ae\.(sft|safetensors)|none|automatic", vae):
        notes.append(f"VAE {vae!r} is not carried over: FLUX.1's own VAE is used.")
    for key, value in params.items():
        if key not in _SWARM_MAPPED and key not in _SWARM_INFO and key != "vae":
            notes.append(f"{key}: {shown(json.dumps(value))} is not carried over.")
    return _loaded("SwarmUI", found, notes)


_INVOKE_INFO = {"app_version", "t5_encoder", "clip_embed_model", "vae", "rand_device", "generation_mode", "scheduler"}


def from_invokeai(meta: object) -> Loaded:
    """InvokeAI's `invokeai_metadata` (its core metadata node: positive_prompt, seed, steps, guidance,
    width, height, model {name, base}, loras [{model {name}, weight}]...)."""
    if not isinstance(meta, dict):
        raise ValueError("image parameters: InvokeAI 'invokeai_metadata' is not an object")
    found = {k: meta.get(k) for k in ("seed", "steps", "guidance", "width", "height")}
    found |= {"prompt": meta.get("positive_prompt"), "negative": meta.get("negative_prompt")}
    found["cfg"] = meta.get("cfg_scale")
    notes: list[str] = []
    model = meta.get("model")
    if isinstance(model, dict):
        found["model"] = model.get("name") or model.get("model_name")
        if model.get("base") not in (None, "flux"):
            notes.append(f"It was made with a {model.get('base')} model, not FLUX.1.")
    for item in meta.get("loras") or []:
        lora = item.get("model") or item.get("lora") if isinstance(item, dict) else None
        if not isinstance(lora, dict):
            raise ValueError(f"image parameters: InvokeAI LoRA entry {shown(repr(item))} has no model")
        found.setdefault("loras", []).append((lora.get("name") or lora.get("model_name"), item.get("weight")))
    mode = meta.get("generation_mode")
    if isinstance(mode, str) and "txt2img" not in mode:
        notes.append(f"Generation mode {mode!r}: it started from an input image; use Image to image for that.")
    _sampling_notes(found, notes, ("euler",), ("euler",))
    for key, value in meta.items():
        if (
            key not in _INVOKE_INFO
            and key not in found
            and key not in ("positive_prompt", "negative_prompt", "cfg_scale")
        ):
            notes.append(f"{key}: {shown(json.dumps(value))} is not carried over.")
    return _loaded("InvokeAI", found, notes)


def _json(text: str, key: str) -> object:
    if len(text) > MAX_JSON_CHARS:
        raise ValueError(
            f"image parameters: {key!r} is {len(text)} characters long, over the limit of {MAX_JSON_CHARS}"
        )
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise ValueError(f"image parameters: {key!r} is not valid JSON") from None


def read_loaded(image: Image.Image) -> Loaded | None:
    """The parameters of an opened PNG from any of the tools above, or None if it carries none."""
    chunks = {**getattr(image, "text", {}), **{k: v for k, v in image.info.items() if isinstance(v, str)}}
    text = chunks.get(PNG_KEY)
    if text and text.lstrip().startswith("{"):
        data = _json(text, PNG_KEY)
        if isinstance(data, dict) and "sui_image_params" in data:
            return from_swarmui(data["sui_image_params"])
    if text:
        return from_a1111(text)
    if "sui_image_params" in chunks:
        return from_swarmui(_json(chunks["sui_image_params"], "sui_image_params"))
    if "invokeai_metadata" in chunks:
        return from_invokeai(_json(chunks["invokeai_metadata"], "invokeai_metadata"))
    prompt = chunks.get("prompt")
    if prompt:
        if prompt.lstrip().startswith("{"):
            return from_comfyui(_json(prompt, "prompt"))
        return from_prompt_only(prompt)
    return None
