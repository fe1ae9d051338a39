"""The tiny FLUX.2 models written as the single files ComfyUI users have for FLUX.2, laid out as a ComfyUI
models folder, for the tests of FLUX.2 single files, GGUF and `--models-dir`.

The transformer in BFL's keys (`flux-2-klein-4b.safetensors`; ComfyUI's copies prefix them with
`model.diffusion_model.`) through `flux2_layouts.diffusers_to_bfl`; the VAE in BFL's keys
(`flux2-vae.safetensors`: FLUX.1's ae.safetensors layout, with the batch norm); the text encoders as
ComfyUI's `text_encoders/` files hold them (the language model in transformers' keys, without its output
head); the transformer as a GGUF file through the same writer as FLUX.1's.
"""

from __future__ import annotations

from pathlib import Path

import torch

from flux_ui.models.flux2_layouts import LM_PREFIXES, diffusers_to_bfl, ldm_to_vae
from flux_ui.models.layouts import BFL_PREFIX
from flux_ui.tiny.files import _save, ldm_vae
from flux_ui.tiny.quantized_files import write_gguf

KLEIN_4B, KLEIN_9B = "black-forest-labs/FLUX.2-klein-4B", "black-forest-labs/FLUX.2-klein-9B"
DEV = "black-forest-labs/FLUX.2-dev"


def transformer_state(tiny_dir: Path, repo_id: str) -> dict[str, torch.Tensor]:
    """The tiny FLUX.2 transformer of `repo_id`, in diffusers' keys."""
    from diffusers import Flux2Transformer2DModel

    return Flux2Transformer2DModel.from_pretrained(tiny_dir / repo_id, subfolder="transformer").state_dict()


def bfl_transformer(tiny_dir: Path, repo_id: str) -> dict[str, torch.Tensor]:
    """The tiny FLUX.2 transformer of `repo_id` in BFL's keys."""
    return diffusers_to_bfl(transformer_state(tiny_dir, repo_id))


def vae(tiny_dir: Path, repo_id: str = KLEIN_4B) -> dict[str, torch.Tensor]:
    """The tiny FLUX.2 VAE in BFL's keys (its attention projections as 1x1 convolutions, as in BFL's code)."""
    from diffusers import AutoencoderKLFlux2

    return ldm_to_vae(ldm_vae(AutoencoderKLFlux2.from_pretrained(tiny_dir / repo_id, subfolder="vae")))


def text_encoder(tiny_dir: Path, repo_id: str) -> dict[str, torch.Tensor]:
    """The tiny text encoder of `repo_id` as ComfyUI's text_encoders/ files hold it: the language model's
    tensors under `model.`, no output head (Mistral3's vision tower and projector left out)."""
    from safetensors.torch import load_file

    state = load_file(tiny_dir / repo_id / "text_encoder" / "model.safetensors")
    prefix = next(p for p in LM_PREFIXES if p + "embed_tokens.weight" in state)
    return {f"model.{k.removeprefix(prefix)}": v for k, v in state.items() if k.startswith(prefix)}


def write_comfyui_flux2_tree(root: Path, tiny_dir: Path) -> Path:
    """A ComfyUI install's FLUX.2 files: [klein] 4B in diffusion_models/ (ComfyUI's prefix), [klein]
    9B as GGUF Q8_0, [dev] in BFL's keys; flux2-vae.safetensors in vae/; Qwen3-4B, Qwen3-8B and Mistral
    Small 3.1 in text_encoders/."""
    models = root / "models"
    klein = {BFL_PREFIX + k: v for k, v in bfl_transformer(tiny_dir, KLEIN_4B).items()}
    _save(models / "diffusion_models" / "flux-2-klein-4b.safetensors", klein)
    write_gguf(models / "diffusion_models" / "flux-2-klein-9b-Q8_0.gguf", bfl_transformer(tiny_dir, KLEIN_9B))
    _save(models / "diffusion_models" / "flux2-dev.safetensors", bfl_transformer(tiny_dir, DEV))
    _save(models / "vae" / "flux2-vae.safetensors", vae(tiny_dir))
    _save(models / "text_encoders" / "qwen_3_4b.safetensors", text_encoder(tiny_dir, KLEIN_4B))
    _save(models / "text_encoders" / "qwen_3_8b.safetensors", text_encoder(tiny_dir, KLEIN_9B))
    _save(models / "text_encoders" / "mistral_3_small_flux2_bf16.safetensors", text_encoder(tiny_dir, DEV))
    return root
