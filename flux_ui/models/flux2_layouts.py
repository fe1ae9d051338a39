"""What FLUX.2 single files hold, told by their tensors, and the key layouts they come in.

Transformer files in BFL's keys (`flux-2-klein-4b.safetensors`, `flux2-dev.safetensors`; ComfyUI's with
`model.diffusion_model.` before them; city96-style GGUF files) or diffusers' keys; the FLUX.2 VAE in BFL's
keys (`flux2-vae.safetensors`: the LDM layout of FLUX.1's `ae.safetensors`, with the quant convolutions
inside the encoder and decoder and a batch norm over the packed latents); the text encoders as ComfyUI
keeps them in `models/text_encoders/` (`qwen_3_4b.safetensors`, `mistral_3_small_flux2_*.safetensors`:
transformers' keys of the language model).

Which model a file is comes from its shapes, never its name: the transformers' text input width is three
of their text encoder's hidden states stacked (Qwen3-4B 3 x 2560 for [klein] 4B, Qwen3-8B 3 x 4096 for
[klein] 9B, Mistral Small 3.2 3 x 5120 for [dev]), [dev] alone has a guidance embedder, and the encoders'
own widths tell them apart. Only the distilled and base [klein] models have the same tensors: there the
file name decides ("base" in it), and the scan says so.

`diffusers_to_bfl` writes test files: diffusers converts BFL's FLUX.2 layout into its own
(`convert_flux2_transformer_checkpoint_to_diffusers`) but ships no converter back.
"""

from __future__ import annotations

import re

import torch

from flux_ui.models.layouts import BFL_PREFIX

# Text input width of the full-size transformers (three stacked hidden states of their encoder) -> size.
KLEIN_CONTEXT = {3 * 2560: "4b", 3 * 4096: "9b"}
DEV_CONTEXT = 3 * 5120
# Hidden width of the full-size text encoders -> the encoder key (flux_ui.core.variants' `text_encoder`).
QWEN3_WIDTHS = {2560: "qwen3-4b", 4096: "qwen3-8b"}
MISTRAL_WIDTHS = {5120: "mistral-small-3.2"}

# (prefix, layout, (image input, text input, guidance embedder, single-stream modulation)) of a FLUX.2
# transformer in the layouts files come in.
_BFL = ("img_in.weight", "txt_in.weight", "guidance_in.in_layer.weight", "single_stream_modulation.lin.weight")
_DIFFUSERS = (
    "x_embedder.weight",
    "context_embedder.weight",
    "time_guidance_embed.guidance_embedder.linear_1.weight",
    "single_stream_modulation.linear.weight",
)
TRANSFORMER_PROBES = ((BFL_PREFIX, "bfl", _BFL), ("", "bfl", _BFL), ("", "diffusers", _DIFFUSERS))

# Where a text encoder's language model sits in the files: ComfyUI's and transformers' causal LMs
# (`model.`), and transformers' Mistral3ForConditionalGeneration (`model.language_model.`, older
# `language_model.model.`).
LM_PREFIXES = ("model.language_model.", "language_model.model.", "model.")
LM_HEADS = ("lm_head.weight", "language_model.lm_head.weight")


def transformer(header, name: str) -> dict | None:
    """A FLUX.2 transformer in this header: prefix, layout, family ("flux2-dev" or "flux2-klein"), the variant
    when the shapes are a known model's, and a note; None if it holds none."""
    found = next(((p, lay, pr) for p, lay, pr in TRANSFORMER_PROBES if p + pr[3] in header), None)
    if found is None:
        return None
    prefix, layout, (x_in, txt_in, guidance, _) = found
    if prefix + txt_in not in header or prefix + x_in not in header:
        return {"skip": "a FLUX.2 transformer without its input projections (cut short?)"}
    context = header[prefix + txt_in][1][-1]
    out = {"prefix": prefix, "layout": layout, "note": ""}
    if prefix + guidance in header:
        out |= {"family": "flux2-dev", "variant": "flux2-dev" if context == DEV_CONTEXT else None}
    else:
        size = KLEIN_CONTEXT.get(context)
        base = "base" in name.lower()
        out |= {"family": "flux2-klein", "variant": size and f"flux2-klein-{'base-' if base else ''}{size}"}
        if size:
            out["note"] = f"{'base' if base else 'distilled'} by the file name: both have the same tensors"
    if out["variant"] is None:
        out["note"] = (
            f"a FLUX.2 transformer of a size no published model has (text width {context}): "
            "name its variant with --model NAME=FILE"
        )
    return out


def vae(header) -> dict | None:
    """The FLUX.2 VAE (BFL's keys, alone or with ComfyUI's/Forge's prefixes), or None."""
    for prefix in ("first_stage_model.", "vae.", ""):
        if prefix + "bn.running_mean" in header and prefix + "decoder.conv_in.weight" in header:
            return {"prefix": prefix}
    return None


def text_encoder(header) -> dict | None:
    """A Qwen3 or Mistral language model (the FLUX.2 text encoders): part "qwen3" or "mistral", its prefix,
    and the encoder key when its width is a published model's; None if the file holds neither."""
    for prefix in LM_PREFIXES:
        embed = prefix + "embed_tokens.weight"
        if embed not in header or prefix + "layers.0.self_attn.q_proj.weight" not in header:
            continue
        width = header[embed][1][1]
        if prefix + "layers.0.self_attn.q_norm.weight" in header:  # Qwen3 normalises queries and keys
            return {"part": "qwen3", "prefix": prefix, "key": QWEN3_WIDTHS.get(width)}
        return {"part": "mistral", "prefix": prefix, "key": MISTRAL_WIDTHS.get(width)}
    return None


def lm_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A text encoder file's language model in transformers' causal-LM keys (`model.*`, `lm_head.weight`):
    a vision tower and projector (Mistral3ForConditionalGeneration's) are left out; FLUX.2 reads text only."""
    out = {f"model.{k.removeprefix(prefix)}": v for k, v in state.items() if k.startswith(prefix)}
    if head := next((h for h in LM_HEADS if h in state), None):
        out["lm_head.weight"] = state[head]
    return out


def vae_to_ldm(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """BFL's FLUX.2 VAE keys -> (the LDM layout diffusers' `convert_ldm_vae_checkpoint` reads, the batch
    norm's tensors in diffusers' keys). BFL keeps the quant convolutions inside the encoder and decoder;
    LDM (and FLUX.1's ae.safetensors) at the top."""
    lifted = {"encoder.quant_conv.": "quant_conv.", "decoder.post_quant_conv.": "post_quant_conv."}
    ldm, bn = {}, {}
    for key, t in state.items():
        if key.startswith("bn."):
            bn[key] = t
            continue
        for theirs, ours in lifted.items():
            if key.startswith(theirs):
                key = ours + key.removeprefix(theirs)
        ldm[key] = t
    return ldm, bn


def ldm_to_vae(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `vae_to_ldm`'s renames (for writing test files): top-level quant convolutions back
    inside the encoder and decoder."""
    out = {}
    for key, t in state.items():
        if key.startswith(("quant_conv.", "post_quant_conv.")):
            key = ("encoder." if key.startswith("quant_conv.") else "decoder.") + key
        out[key] = t
    return out


# diffusers -> BFL renames of a FLUX.2 transformer: the inverse of diffusers' converter's tables.
TOP = {
    "x_embedder": "img_in",
    "context_embedder": "txt_in",
    "time_guidance_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_guidance_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_guidance_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_guidance_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "double_stream_modulation_img.linear": "double_stream_modulation_img.lin",
    "double_stream_modulation_txt.linear": "double_stream_modulation_txt.lin",
    "single_stream_modulation.linear": "single_stream_modulation.lin",
    "proj_out": "final_layer.linear",
}
DOUBLE = {
    "attn.norm_q.weight": "img_attn.norm.query_norm.scale",
    "attn.norm_k.weight": "img_attn.norm.key_norm.scale",
    "attn.to_out.0.weight": "img_attn.proj.weight",
    "ff.linear_in.weight": "img_mlp.0.weight",
    "ff.linear_out.weight": "img_mlp.2.weight",
    "attn.norm_added_q.weight": "txt_attn.norm.query_norm.scale",
    "attn.norm_added_k.weight": "txt_attn.norm.key_norm.scale",
    "attn.to_add_out.weight": "txt_attn.proj.weight",
    "ff_context.linear_in.weight": "txt_mlp.0.weight",
    "ff_context.linear_out.weight": "txt_mlp.2.weight",
}
DOUBLE_FUSED = {  # BFL's fused projections, from diffusers' three in row order
    "img_attn.qkv.weight": ("attn.to_q.weight", "attn.to_k.weight", "attn.to_v.weight"),
    "txt_attn.qkv.weight": ("attn.add_q_proj.weight", "attn.add_k_proj.weight", "attn.add_v_proj.weight"),
}
SINGLE = {
    "attn.to_qkv_mlp_proj.weight": "linear1.weight",
    "attn.to_out.weight": "linear2.weight",
    "attn.norm_q.weight": "norm.query_norm.scale",
    "attn.norm_k.weight": "norm.key_norm.scale",
}


def diffusers_to_bfl(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Flux2Transformer2DModel's tensors in BFL's keys; FLUX.2 has no biases. The tests check that
    diffusers' converter maps the result back exactly."""
    out: dict[str, torch.Tensor] = {}
    double = re.compile(r"^transformer_blocks\.(\d+)\.(.+)$")
    single = re.compile(r"^single_transformer_blocks\.(\d+)\.(.+)$")
    for key, t in state.items():
        if m := double.match(key):
            i, rest = m.groups()
            if rest in DOUBLE:
                out[f"double_blocks.{i}.{DOUBLE[rest]}"] = t
            continue  # the q, k, v projections are fused below
        if m := single.match(key):
            i, rest = m.groups()
            out[f"single_blocks.{i}.{SINGLE[rest]}"] = t
            continue
        if key == "norm_out.linear.weight":  # diffusers scale|shift, BFL shift|scale
            scale, shift = t.chunk(2, dim=0)
            out["final_layer.adaLN_modulation.1.weight"] = torch.cat([shift, scale], dim=0)
            continue
        module, _, param = key.rpartition(".")
        out[f"{TOP[module]}.{param}"] = t
    blocks = {int(m.group(1)) for k in state if (m := double.match(k))}
    for i in sorted(blocks):
        for bfl, parts in DOUBLE_FUSED.items():
            out[f"double_blocks.{i}.{bfl}"] = torch.cat([state[f"transformer_blocks.{i}.{p}"] for p in parts], dim=0)
    return {k: v.contiguous() for k, v in out.items()}
