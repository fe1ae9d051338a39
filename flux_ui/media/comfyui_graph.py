"""The generation parameters of a ComfyUI PNG, read from its `prompt` text chunk.

ComfyUI's SaveImage writes two JSON chunks: `prompt`, the graph as it was queued ("API format": node id ->
{"class_type", "inputs"}, where an input that comes from another node is a link `[node id, output
index]`), and `workflow`, the editor's layout. Only `prompt` says what ran, so it is the one read here:
from the sampler node (KSampler, KSamplerAdvanced, SamplerCustom, SamplerCustomAdvanced) the links are
followed back to the prompt text (CLIPTextEncode, CLIPTextEncodeFlux, through FluxGuidance), the seed
(or RandomNoise), the steps (or BasicScheduler), the size (EmptyLatentImage, EmptySD3LatentImage) and the
model (UNETLoader, UnetLoaderGGUF, CheckpointLoaderSimple) through its LoRA loaders.

`walk` returns the values it found as raw JSON values (the caller checks their types and ranges) and a
note for each thing it met and cannot carry over: a negative prompt, a second sampler pass, an input
image, a node it does not know.
"""

from __future__ import annotations

from collections.abc import Iterator

SAMPLERS = ("KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced")
EMPTY_LATENTS = ("EmptyLatentImage", "EmptySD3LatentImage", "EmptyHunyuanLatentVideo", "EmptyFluxLatentImage")
MODEL_LOADERS = {"UNETLoader": "unet_name", "UnetLoaderGGUF": "unet_name", "CheckpointLoaderSimple": "ckpt_name"}
LORA_LOADERS = ("LoraLoader", "LoraLoaderModelOnly")
TEXT_INPUTS = ("text", "string", "value", "prompt", "text_g")  # where primitive / string nodes keep their text
MAX_HOPS = 64  # links followed from one node; a deeper (or cyclic) chain is reported, not followed


class Graph:
    """The `prompt` JSON of a ComfyUI PNG, checked to be a graph in API format."""

    def __init__(self, data: object):
        if not isinstance(data, dict) or not data:
            raise ValueError("image parameters: ComfyUI 'prompt' is not a workflow in API format")
        for node_id, node in data.items():
            if not isinstance(node, dict) or not isinstance(node.get("inputs", {}), dict):
                raise ValueError(f"image parameters: ComfyUI node {node_id!r} is not a node (class_type and inputs)")
        self.nodes: dict[str, dict] = data

    def kind(self, node_id: str) -> str:
        return str(self.nodes[node_id].get("class_type", "?"))

    def inputs(self, node_id: str) -> dict:
        return self.nodes[node_id].get("inputs", {})

    def link(self, node_id: str, name: str) -> str | None:
        """The id of the node whose output feeds input `name`, or None if it is a plain value (or absent)."""
        value = self.inputs(node_id).get(name)
        if isinstance(value, list) and len(value) == 2 and str(value[0]) in self.nodes:
            return str(value[0])
        return None

    def value(self, node_id: str, name: str) -> object:
        """A plain input value; one link deep to a primitive node (a seed or text widget turned into an input)."""
        source = self.link(node_id, name)
        if source is None:
            return self.inputs(node_id).get(name)
        for key in (name, *TEXT_INPUTS, "seed", "noise_seed", "int", "float"):
            found = self.inputs(source).get(key)
            if found is not None and not isinstance(found, list):
                return found
        return None

    def chain(self, start: str | None, via: tuple[str, ...]) -> Iterator[str]:
        """The nodes met following the first present link of `via` from `start`, `start` included."""
        seen = set()
        node = start
        while node is not None and node not in seen and len(seen) < MAX_HOPS:
            seen.add(node)
            yield node
            node = next((n for name in via if (n := self.link(node, name)) is not None), None)


def _first_pass(g: Graph, samplers: list[str]) -> str:
    """The sampler that starts from an empty latent (the first pass of a hires fix), else the first one."""
    for s in samplers:
        for node in g.chain(g.link(s, "latent_image"), ("samples", "latent_image")):
            if g.kind(node) in SAMPLERS:  # its latent is another pass's result
                break
            if g.kind(node) in EMPTY_LATENTS:
                return s
    return samplers[0]


def _text(g: Graph, start: str | None, found: dict, notes: list[str], role: str) -> str | None:
    """Follow a conditioning link back to its text; record FluxGuidance's guidance on the way (positive)."""
    for node in g.chain(start, ("conditioning", "conditioning_to", "conditioning_1")):
        kind = g.kind(node)
        if kind == "FluxGuidance" and role == "positive":
            found.setdefault("guidance", g.value(node, "guidance"))
        elif kind == "CLIPTextEncode":
            return g.value(node, "text")
        elif kind == "CLIPTextEncodeFlux":
            if role == "positive":
                found.setdefault("guidance", g.value(node, "guidance"))
            t5, clip_l = g.value(node, "t5xxl"), g.value(node, "clip_l")
            if role == "positive" and isinstance(clip_l, str) and clip_l.strip() and clip_l != t5:
                notes.append(
                    f"A separate CLIP-L prompt ({clip_l[:60]!r}) is not carried over: both encoders read one prompt."
                )
            return t5
        elif kind == "ConditioningZeroOut":
            return ""
        elif kind not in ("FluxGuidance", "ConditioningSetTimestepRange"):
            notes.append(f"The {role} prompt passes through node {node} ({kind}), which is not read.")
    return None


def _model(g: Graph, start: str | None, found: dict, notes: list[str]) -> None:
    for node in g.chain(start, ("model", "unet")):
        kind, inputs = g.kind(node), g.inputs(node)
        if kind in LORA_LOADERS:
            found.setdefault("loras", []).append((g.value(node, "lora_name"), g.value(node, "strength_model")))
            clip = inputs.get("strength_clip")
            if kind == "LoraLoader" and clip is not None and clip != inputs.get("strength_model"):
                notes.append(f"LoRA {inputs.get('lora_name')!r}: its CLIP strength {clip} is not carried over.")
        elif kind in MODEL_LOADERS:
            found["model"] = g.value(node, MODEL_LOADERS[kind])
            return
        elif kind not in ("ModelSamplingFlux", "ModelSamplingSD3", "ModelSamplingAuraFlow", "DifferentialDiffusion"):
            notes.append(f"The model passes through node {node} ({kind}), which is not read.")
    if "model" not in found:
        notes.append("No model loader (UNETLoader, UnetLoaderGGUF, CheckpointLoaderSimple) was found.")


def _latent(g: Graph, start: str | None, found: dict, notes: list[str]) -> None:
    for node in g.chain(start, ("samples", "latent_image", "pixels")):
        kind = g.kind(node)
        if kind in EMPTY_LATENTS:
            found["width"], found["height"] = g.value(node, "width"), g.value(node, "height")
            batch = g.value(node, "batch_size")
            if isinstance(batch, int) and batch > 1:
                notes.append(f"It was one of a batch of {batch}; set Images to make several.")
            return
        if kind == "VAEEncode":
            notes.append("It started from an input image (VAEEncode): use the Image to image tab for that.")
            return
        notes.append(f"The starting latent passes through node {node} ({kind}), which is not read.")


def _sampling(g: Graph, sampler: str, found: dict, notes: list[str]) -> tuple[str | None, str | None, str | None]:
    """Seed, steps and sampler settings of `sampler`; returns the (model, positive, negative) links."""
    kind, inputs = g.kind(sampler), g.inputs(sampler)
    found["seed"] = g.value(sampler, "seed" if kind == "KSampler" else "noise_seed")
    found["steps"] = inputs.get("steps")
    found["cfg"], found["sampler"], found["scheduler"] = (
        inputs.get("cfg"),
        inputs.get("sampler_name"),
        inputs.get("scheduler"),
    )
    found["denoise"] = inputs.get("denoise")
    model, positive, negative = g.link(sampler, "model"), g.link(sampler, "positive"), g.link(sampler, "negative")
    if kind == "SamplerCustom" or kind == "SamplerCustomAdvanced":
        if (noise := g.link(sampler, "noise")) is not None:
            found["seed"] = g.value(noise, "noise_seed") if g.kind(noise) == "RandomNoise" else None
            if g.kind(noise) != "RandomNoise":
                notes.append(f"The noise comes from node {noise} ({g.kind(noise)}), which is not read.")
        if (select := g.link(sampler, "sampler")) is not None:
            found["sampler"] = g.value(select, "sampler_name")
        if (sigmas := g.link(sampler, "sigmas")) is not None:
            found["steps"] = g.value(sigmas, "steps")
            found["scheduler"] = g.value(sigmas, "scheduler") or g.kind(sigmas)
            found["denoise"] = g.value(sigmas, "denoise")
        if (guider := g.link(sampler, "guider")) is not None:
            model = g.link(guider, "model")
            positive = g.link(guider, "conditioning") or g.link(guider, "positive")
            negative = g.link(guider, "negative")
            found["cfg"] = g.value(guider, "cfg")
    return model, positive, negative


def walk(data: object) -> tuple[dict, list[str]]:
    """The parameters of a ComfyUI `prompt` graph: {"prompt", "negative", "seed", "steps", "guidance",
    "cfg", "sampler", "scheduler", "denoise", "width", "height", "model", "loras": [(name, strength)]},
    each present only where the graph says it, and notes on what is not carried over."""
    g = Graph(data)
    samplers = [n for n in g.nodes if g.kind(n) in SAMPLERS]
    if not samplers:
        raise ValueError(
            "image parameters: the ComfyUI workflow has no sampler node (KSampler, SamplerCustomAdvanced...)"
        )
    sampler = _first_pass(g, samplers)
    found: dict = {}
    notes: list[str] = []
    for other in samplers:
        if other != sampler:
            notes.append(
                f"A second sampler pass (node {other}, {g.kind(other)}: a hires fix or refiner) is not carried over."
            )
    model, positive, negative = _sampling(g, sampler, found, notes)
    found["prompt"] = _text(g, positive, found, notes, "positive")
    if negative is not None:
        found["negative"] = _text(g, negative, {}, notes, "negative")
    _model(g, model, found, notes)
    _latent(g, g.link(sampler, "latent_image"), found, notes)
    found["loras"] = list(reversed(found.get("loras", [])))  # nearest the loader first, as they were chained
    return {k: v for k, v in found.items() if v is not None}, notes
