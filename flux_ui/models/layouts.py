"""Key layouts of FLUX.1 transformer files: BFL's own (the layout of `flux1-dev.safetensors` and of
ComfyUI's and Forge's files) and diffusers', as one table that reads both ways.

diffusers converts BFL files itself (`convert_flux_transformer_checkpoint_to_diffusers`, called by
`FluxTransformer2DModel.from_single_file`), and every FLUX.1 file goes through that converter. It splits
the single blocks' fused `linear1` at FLUX.1's fixed width of 3072, so a file of any other width (the tiny
test models, 32 wide) cannot pass through it; `bfl_to_diffusers` is the same mapping with the width read
from the file, used for such files and for GGUF files (it splits the fused projections as views, where
diffusers' converter copies them). `diffusers_to_bfl` is its inverse, for writing test files; the tests
check both against diffusers' converter at FLUX.1's width.

Below them, the header probes for the other parts a FLUX.1 file can hold (the VAE, CLIP-L, T5-XXL), which
`files.classify` asks.
"""

from __future__ import annotations

import re

import torch

FLUX1_WIDTH = 3072  # hidden size of every FLUX.1 transformer (24 heads of 128)
BFL_PREFIX = "model.diffusion_model."  # how ComfyUI and Forge prefix the transformer in their files

# Per block: BFL name -> diffusers name, for tensors that are only renamed (".weight"/".bias" follow).
DOUBLE_RENAMES = {
    "img_mod.lin": "norm1.linear",
    "txt_mod.lin": "norm1_context.linear",
    "img_attn.proj": "attn.to_out.0",
    "txt_attn.proj": "attn.to_add_out",
    "img_mlp.0": "ff.net.0.proj",
    "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj",
    "txt_mlp.2": "ff_context.net.2",
}
DOUBLE_NORMS = {  # BFL RMSNorm scales -> diffusers norm weights
    "img_attn.norm.query_norm.scale": "attn.norm_q.weight",
    "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
    "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
    "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
}
DOUBLE_FUSED = {  # BFL fused projections -> the diffusers projections they hold, in row order
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}
SINGLE_RENAMES = {"modulation.lin": "norm.linear", "linear2": "proj_out"}
SINGLE_NORMS = {"norm.query_norm.scale": "attn.norm_q.weight", "norm.key_norm.scale": "attn.norm_k.weight"}
SINGLE_FUSED = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")  # rows of linear1: width, width, width, rest
TOP_RENAMES = {
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "txt_in": "context_embedder",
    "img_in": "x_embedder",
    "final_layer.linear": "proj_out",
}
FINAL_MOD = (
    "final_layer.adaLN_modulation.1",
    "norm_out.linear",
)  # halves swapped: BFL shift|scale, diffusers scale|shift


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    first, second = t.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def _blocks(keys, prefix: str) -> list[int]:
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    return sorted({int(m.group(1)) for k in keys if (m := pattern.match(k))})


def strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The transformer's tensors of a file, without ComfyUI's/Forge's `model.diffusion_model.` prefix; the
    other parts of an all-in-one checkpoint (VAE, text encoders) are left out."""
    if any(k.startswith(BFL_PREFIX) for k in state):
        return {k.removeprefix(BFL_PREFIX): v for k, v in state.items() if k.startswith(BFL_PREFIX)}
    return state


def bfl_to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BFL keys -> diffusers keys, for a transformer of any width (see the module docstring for why).

    Raises KeyError naming the first tensor the file lacks."""
    src = dict(state)
    width = src["img_in.weight"].shape[0]
    out: dict[str, torch.Tensor] = {}
    for bfl, ours in TOP_RENAMES.items():
        for p in ("weight", "bias"):
            if f"{bfl}.{p}" in src:
                out[f"{ours}.{p}"] = src.pop(f"{bfl}.{p}")
    for p in ("weight", "bias"):
        out[f"{FINAL_MOD[1]}.{p}"] = _swap_halves(src.pop(f"{FINAL_MOD[0]}.{p}"))
    for i in _blocks(state, "double_blocks"):
        b, d = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        for p in ("weight", "bias"):
            for bfl, ours in DOUBLE_RENAMES.items():
                out[f"{d}{ours}.{p}"] = src.pop(f"{b}{bfl}.{p}")
            for bfl, parts in DOUBLE_FUSED.items():
                for ours, t in zip(parts, src.pop(f"{b}{bfl}.{p}").chunk(3, dim=0), strict=True):
                    out[f"{d}{ours}.{p}"] = t
        for bfl, ours in DOUBLE_NORMS.items():
            out[d + ours] = src.pop(b + bfl)
    for i in _blocks(state, "single_blocks"):
        b, d = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        for p in ("weight", "bias"):
            for bfl, ours in SINGLE_RENAMES.items():
                out[f"{d}{ours}.{p}"] = src.pop(f"{b}{bfl}.{p}")
            fused = src.pop(f"{b}linear1.{p}")
            sizes = (width, width, width, fused.shape[0] - 3 * width)
            for ours, t in zip(SINGLE_FUSED, fused.split(sizes, dim=0), strict=True):
                out[f"{d}{ours}.{p}"] = t
        for bfl, ours in SINGLE_NORMS.items():
            out[d + ours] = src.pop(b + bfl)
    return out


def diffusers_to_bfl(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers keys -> BFL keys: the exact inverse of `bfl_to_diffusers` (and of diffusers' converter)."""
    out: dict[str, torch.Tensor] = {}
    for bfl, ours in TOP_RENAMES.items():
        for p in ("weight", "bias"):
            if f"{ours}.{p}" in state:
                out[f"{bfl}.{p}"] = state[f"{ours}.{p}"]
    for p in ("weight", "bias"):
        out[f"{FINAL_MOD[0]}.{p}"] = _swap_halves(state[f"{FINAL_MOD[1]}.{p}"])
    for i in _blocks(state, "transformer_blocks"):
        b, d = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        for p in ("weight", "bias"):
            for bfl, ours in DOUBLE_RENAMES.items():
                out[f"{b}{bfl}.{p}"] = state[f"{d}{ours}.{p}"]
            for bfl, parts in DOUBLE_FUSED.items():
                out[f"{b}{bfl}.{p}"] = torch.cat([state[f"{d}{ours}.{p}"] for ours in parts], dim=0)
        for bfl, ours in DOUBLE_NORMS.items():
            out[b + bfl] = state[d + ours]
    for i in _blocks(state, "single_transformer_blocks"):
        b, d = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        for p in ("weight", "bias"):
            for bfl, ours in SINGLE_RENAMES.items():
                out[f"{b}{bfl}.{p}"] = state[f"{d}{ours}.{p}"]
            out[f"{b}linear1.{p}"] = torch.cat([state[f"{d}{ours}.{p}"] for ours in SINGLE_FUSED], dim=0)
        for bfl, ours in SINGLE_NORMS.items():
            out[b + bfl] = state[d + ours]
    return {k: v.contiguous() for k, v in out.items()}


# -- what a FLUX.1 file holds besides a transformer (see flux_ui.models.files) --------------------------

# Where each part's tensors sit in an all-in-one checkpoint (ComfyUI's and Forge's prefixes), and in a file
# of its own (no prefix).
VAE_PREFIXES = ("first_stage_model.", "vae.", "")
CLIP_PREFIXES = ("text_encoders.clip_l.transformer.", "")
T5_PREFIXES = ("text_encoders.t5xxl.transformer.", "")


def _first(header, prefixes, probe: str) -> str | None:
    return next((p for p in prefixes if p + probe in header), None)


def vae_probe(header) -> dict | None:
    prefix = _first(header, VAE_PREFIXES, "decoder.conv_in.weight")
    if prefix is None or prefix + "encoder.conv_in.weight" not in header:
        return None
    channels = header[prefix + "decoder.conv_in.weight"][1][1]
    if channels != 16:
        return {"skip": f"a VAE with {channels} latent channels (Stable Diffusion's?); FLUX.1's has 16"}
    return {"prefix": prefix}


def clip_probe(header) -> dict | None:
    for prefix in CLIP_PREFIXES:
        for inner in ("text_model.", ""):
            if prefix + inner + "embeddings.token_embedding.weight" in header:
                width = header[prefix + inner + "embeddings.token_embedding.weight"][1][1]
                if width == 1280:
                    return {"skip": "a CLIP-G text encoder (SDXL/SD3); FLUX.1 uses CLIP-L"}
                return {"prefix": prefix}
    return None


def t5_probe(header) -> dict | None:
    for prefix in T5_PREFIXES:
        for inner in ("encoder.", ""):
            if prefix + inner + "block.0.layer.0.SelfAttention.q.weight" in header:
                return {"prefix": prefix}
    return None


def what_else(header) -> str:
    names = list(header)
    if any(("lora_" in n or ".lora." in n or "lokr_" in n or "hada_" in n) for n in names):
        return "a LoRA (LoRAs are found through --lora-dir)"
    if any(n.startswith("model.diffusion_model.input_blocks.") for n in names):
        return "a Stable Diffusion checkpoint, not FLUX.1"
    first = names[0] if names else "none"
    return f"not a FLUX.1 file ({len(names)} tensors; the first is {first!r})"
