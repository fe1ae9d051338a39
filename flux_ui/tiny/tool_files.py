"""The tiny Redux and control LoRAs written as the single files ComfyUI users have (the layouts are
described in `flux_ui.models.tool_files`), for the tests of --models-dir with FLUX.1's tools.

- `flux1-redux-dev.safetensors`: the tiny Redux embedder's tensors as they are; BFL's file and diffusers'
  `ReduxImageEncoder` use the same names (`redux_up`, `redux_down`; BFL's `flux/modules/image_embedders.py`).
- `sigclip_vision_patch14_384.safetensors`: the tiny SigLIP vision tower in transformers 4's keys, under
  `vision_model.` (what ComfyUI's `comfy/clip_vision.py` reads), without the attention-pooling head, which
  ComfyUI's SigLIP model has no use for.
- `flux1-canny-dev-lora.safetensors` / `flux1-depth-dev-lora.safetensors`: the tiny control LoRAs in BFL's
  layer names, the inverse of diffusers' `_convert_bfl_flux_control_lora_to_diffusers` on the key table of
  `flux_ui.models.layouts`. BFL's layout has one down matrix per fused projection (qkv, linear1) where the
  tiny LoRA has one per part; the parts' down matrices are stacked and the up matrix made block-diagonal,
  which holds exactly the same product (up x down) per part at a rank of 3 (4 for linear1) times the tiny
  one's.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from flux_ui.core.variants import CONTROL_LORAS
from flux_ui.models import layouts
from flux_ui.tiny.files import _save

REDUX = "black-forest-labs/FLUX.1-Redux-dev"


def redux_embedder(tiny_dir: Path) -> dict[str, torch.Tensor]:
    """The tiny Redux embedder as BFL's flux1-redux-dev.safetensors holds it."""
    from diffusers import ReduxImageEncoder

    return ReduxImageEncoder.from_pretrained(tiny_dir / REDUX, subfolder="image_embedder").state_dict()


def siglip(tiny_dir: Path) -> dict[str, torch.Tensor]:
    """The tiny SigLIP vision tower as Comfy-Org's sigclip_vision_patch14_384.safetensors lays it out."""
    from transformers import SiglipVisionModel

    state = SiglipVisionModel.from_pretrained(tiny_dir / REDUX, subfolder="image_encoder").state_dict()
    return {"vision_model." + k: v for k, v in state.items() if not k.startswith("head.")}


def _bfl_layer(name: str) -> tuple[str, int]:
    """A diffusers layer -> (the BFL layer holding it, its part in a fused projection)."""
    top = {ours: bfl for bfl, ours in layouts.TOP_RENAMES.items()} | {layouts.FINAL_MOD[1]: layouts.FINAL_MOD[0]}
    if name in top:
        return top[name], 0
    kind, index, rest = re.fullmatch(r"(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)", name).groups()
    if kind == "transformer_blocks":
        renames, fused = layouts.DOUBLE_RENAMES, layouts.DOUBLE_FUSED
        block = f"double_blocks.{index}."
    else:
        renames, fused = layouts.SINGLE_RENAMES, {"linear1": layouts.SINGLE_FUSED}
        block = f"single_blocks.{index}."
    for bfl, ours in renames.items():
        if rest == ours:
            return block + bfl, 0
    bfl, parts = next((b, p) for b, p in fused.items() if rest in p)
    return block + bfl, parts.index(rest)


def _bfl_norm(name: str) -> str:
    """A diffusers q/k norm weight -> BFL's scale name."""
    kind, index, rest = name.split(".", 2)
    if kind == "transformer_blocks":
        return f"double_blocks.{index}." + {v: k for k, v in layouts.DOUBLE_NORMS.items()}[rest]
    return f"single_blocks.{index}." + {v: k for k, v in layouts.SINGLE_NORMS.items()}[rest]


def bfl_control_lora(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A control LoRA in diffusers' names (`transformer.x_embedder.lora_A.weight`) -> BFL's layout (see the
    module docstring for the fused projections)."""
    groups: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        layer, sep, rest = key.removeprefix("transformer.").partition(".lora_")
        if not sep:
            out[_bfl_norm(layer)] = tensor
            continue
        bfl, part = _bfl_layer(layer)
        groups.setdefault(bfl, {}).setdefault(part, {})[rest] = tensor
    for bfl, parts in groups.items():
        ordered = [parts[i] for i in sorted(parts)]
        if len(ordered) == 1:
            down, up, bias = ordered[0]["A.weight"], ordered[0]["B.weight"], ordered[0].get("B.bias")
            if bfl == layouts.FINAL_MOD[0]:  # diffusers' (scale, shift) rows back to BFL's (shift, scale)
                up, bias = layouts._swap_halves(up), None if bias is None else layouts._swap_halves(bias)
        else:
            down = torch.cat([p["A.weight"] for p in ordered], dim=0)
            up = torch.block_diag(*[p["B.weight"] for p in ordered])
            bias = torch.cat([p["B.bias"] for p in ordered]) if "B.bias" in ordered[0] else None
        out[f"{bfl}.lora_A.weight"], out[f"{bfl}.lora_B.weight"] = down, up
        if bias is not None:
            out[f"{bfl}.lora_B.bias"] = bias
    return out


def write_tool_files(root: Path, tiny_dir: Path) -> Path:
    """Redux, SigLIP and both control LoRAs in a ComfyUI install's folders below `root`."""
    from safetensors.torch import load_file

    models = root / "models"
    _save(models / "style_models" / "flux1-redux-dev.safetensors", redux_embedder(tiny_dir))
    _save(models / "clip_vision" / "sigclip_vision_patch14_384.safetensors", siglip(tiny_dir))
    for lora in CONTROL_LORAS.values():
        hub = load_file(tiny_dir / lora.repo_id / lora.weight_name)
        _save(models / "loras" / lora.weight_name, bfl_control_lora(hub))
    return root
