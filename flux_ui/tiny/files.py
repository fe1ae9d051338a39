"""The tiny models written as the single files ComfyUI, Forge and A1111 users have, and laid out as those
tools' folders, for the tests of `--models-dir` and `--model NAME=FILE`.

Transformers in BFL's keys (as `flux1-dev.safetensors`), the VAE in BFL's `ae.safetensors` keys, CLIP-L
and T5 as ComfyUI's `clip_l.safetensors` / `t5xxl_*.safetensors`, and all-in-one checkpoints with
ComfyUI's or Forge's prefixes. diffusers converts these layouts into its own but has no writer for them:
the transformer's inverse map is `flux_ui.models.layouts.diffusers_to_bfl`, the VAE's is below; the tests
check both by reading the files back through diffusers' loaders.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from flux_ui.core.flags import DEFAULT_SHARED_REPO
from flux_ui.models.layouts import BFL_PREFIX, diffusers_to_bfl

SHARED = DEFAULT_SHARED_REPO  # the tiny repo whose VAE and encoders the registry shares


def _save(path: Path, tensors: dict[str, torch.Tensor], dtype: torch.dtype | None = None) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: (v.to(dtype) if dtype else v).contiguous() for k, v in tensors.items()}, path)
    return path


def transformer_state(tiny_dir: Path, repo_id: str) -> dict[str, torch.Tensor]:
    """The tiny transformer of `repo_id`, in diffusers keys."""
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel.from_pretrained(tiny_dir / repo_id, subfolder="transformer").state_dict()


def bfl_transformer(tiny_dir: Path, repo_id: str) -> dict[str, torch.Tensor]:
    """The tiny transformer of `repo_id` in BFL's keys."""
    return diffusers_to_bfl(transformer_state(tiny_dir, repo_id))


def _vae_key(key: str, up_blocks: int) -> str:
    """One diffusers VAE key -> its name in BFL's ae.safetensors (the LDM layout diffusers converts from)."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    if key in DIFFUSERS_TO_LDM_MAPPING["vae"]:
        return DIFFUSERS_TO_LDM_MAPPING["vae"][key]
    key = re.sub(r"down_blocks\.(\d+)\.resnets\.", r"down.\1.block.", key)
    key = re.sub(r"down_blocks\.(\d+)\.downsamplers\.0\.", r"down.\1.downsample.", key)
    key = re.sub(r"up_blocks\.(\d+)\.resnets\.", lambda m: f"up.{up_blocks - 1 - int(m.group(1))}.block.", key)
    key = re.sub(r"up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"up.{up_blocks - 1 - int(m.group(1))}.upsample.", key)
    key = re.sub(r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m.group(1)) + 1}.", key)
    key = key.replace("mid_block.attentions.0.", "mid.attn_1.").replace("conv_shortcut", "nin_shortcut")
    for ours, theirs in (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
        key = key.replace(f"attn_1.{ours}.", f"attn_1.{theirs}.")
    return key


def ae_vae(tiny_dir: Path) -> dict[str, torch.Tensor]:
    """The shared tiny VAE in ae.safetensors' keys (its attention projections as 1x1 convolutions)."""
    from diffusers import AutoencoderKL

    return ldm_vae(AutoencoderKL.from_pretrained(tiny_dir / SHARED, subfolder="vae"))


def ldm_vae(vae: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A diffusers VAE's tensors in the LDM layout of BFL's files (attention projections as 1x1 convolutions)."""
    up_blocks = len(vae.config.up_block_types)
    out = {}
    for key, t in vae.state_dict().items():
        name = _vae_key(key, up_blocks)
        if ".attn_1." in name and name.endswith("weight") and not name.endswith("norm.weight"):
            t = t[:, :, None, None]
        out[name] = t
    return out


def clip_l(tiny_dir: Path, text_model_prefix: bool = True) -> dict[str, torch.Tensor]:
    """The shared tiny CLIP-L as ComfyUI's clip_l.safetensors: transformers' keys under `text_model.`."""
    from transformers import CLIPTextModel

    state = CLIPTextModel.from_pretrained(tiny_dir / SHARED, subfolder="text_encoder").state_dict()
    inner = {k.removeprefix("text_model."): v for k, v in state.items() if not k.endswith("position_ids")}
    return {("text_model." if text_model_prefix else "") + k: v for k, v in inner.items()}


def t5xxl(tiny_dir: Path) -> dict[str, torch.Tensor]:
    """The shared tiny T5 encoder as ComfyUI's t5xxl files: its embedding once, as `shared.weight`."""
    from transformers import T5EncoderModel

    state = T5EncoderModel.from_pretrained(tiny_dir / SHARED, subfolder="text_encoder_2").state_dict()
    return {k: v for k, v in state.items() if k != "encoder.embed_tokens.weight"}


def all_in_one(tiny_dir: Path, repo_id: str, vae_prefix: str = "first_stage_model.") -> dict[str, torch.Tensor]:
    """A checkpoint holding everything, as ComfyUI ("first_stage_model.") or Forge ("vae.") save one."""
    parts = {
        BFL_PREFIX: bfl_transformer(tiny_dir, repo_id),
        vae_prefix: ae_vae(tiny_dir),
        "text_encoders.clip_l.transformer.": clip_l(tiny_dir),
        "text_encoders.t5xxl.transformer.": t5xxl(tiny_dir),
    }
    return {prefix + k: v for prefix, state in parts.items() for k, v in state.items()}


def _bad_files(folder: Path, tiny_dir: Path) -> None:
    """Files a scan must skip, each with its reason: a LoRA, a cut-short file, another model, a broken GGUF."""
    g = torch.Generator().manual_seed(14)
    lora = {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.randn(4, 32, generator=g)}
    _save(folder / "loras" / "style-lora.safetensors", lora)
    whole = _save(folder / "unet" / "broken.safetensors", bfl_transformer(tiny_dir, "black-forest-labs/FLUX.1-dev"))
    data = whole.read_bytes()
    whole.write_bytes(data[: len(data) // 2])  # cut short, as an interrupted download leaves it
    _save(folder / "unet" / "not-flux.safetensors", {"conv1.weight": torch.randn(8, 3, 3, 3, generator=g)})
    (folder / "unet" / "flux1-dev-Q8_0.gguf").write_bytes(b"GGUF" + bytes(60))  # a header and nothing else


def write_comfyui_tree(root: Path, tiny_dir: Path) -> Path:
    """A ComfyUI install's models: transformers in unet/ and diffusion_models/, ae.safetensors in vae/,
    CLIP-L in clip/, T5 in text_encoders/, an all-in-one checkpoint, a LoRA and files to skip."""
    models = root / "models"
    dev, schnell = "black-forest-labs/FLUX.1-dev", "black-forest-labs/FLUX.1-schnell"
    _save(models / "unet" / "flux1-dev.safetensors", bfl_transformer(tiny_dir, dev))
    prefixed = {BFL_PREFIX + k: v for k, v in bfl_transformer(tiny_dir, schnell).items()}
    _save(models / "diffusion_models" / "flux1-schnell.safetensors", prefixed, torch.bfloat16)
    kontext = bfl_transformer(tiny_dir, "black-forest-labs/FLUX.1-Kontext-dev")
    _save(models / "diffusion_models" / "flux1-kontext-dev.safetensors", kontext, torch.float16)
    fill = bfl_transformer(tiny_dir, "black-forest-labs/FLUX.1-Fill-dev")
    _save(models / "diffusion_models" / "flux1-fill-dev.safetensors", fill)
    _save(
        models / "checkpoints" / "flux1-krea-dev-all-in-one.safetensors",
        all_in_one(tiny_dir, "black-forest-labs/FLUX.1-Krea-dev"),
    )
    _save(models / "vae" / "ae.safetensors", ae_vae(tiny_dir))
    _save(models / "clip" / "clip_l.safetensors", clip_l(tiny_dir))
    _save(models / "text_encoders" / "t5xxl_fp32.safetensors", t5xxl(tiny_dir))
    _bad_files(models, tiny_dir)
    return root


def write_forge_tree(root: Path, tiny_dir: Path) -> Path:
    """A Forge install's models: an all-in-one [dev] checkpoint (Forge's "vae." prefix) that also serves
    the shared parts, a [schnell] transformer, a Canny transformer in diffusers keys, and a LoRA."""
    models = root / "models"
    _save(
        models / "Stable-diffusion" / "flux1-dev-all-in-one.safetensors",
        all_in_one(tiny_dir, "black-forest-labs/FLUX.1-dev", "vae."),
    )
    _save(
        models / "Stable-diffusion" / "flux1-schnell.safetensors",
        bfl_transformer(tiny_dir, "black-forest-labs/FLUX.1-schnell"),
    )
    canny = transformer_state(tiny_dir, "black-forest-labs/FLUX.1-Canny-dev")
    _save(models / "Stable-diffusion" / "flux1-canny-dev-diffusers.safetensors", canny)
    g = torch.Generator().manual_seed(15)
    _save(
        models / "Lora" / "forge-lora.safetensors", {"diffusion_model.x.lora_A.weight": torch.randn(4, 8, generator=g)}
    )
    return root


FP8_MAX = 448.0  # largest float8_e4m3fn value


def fp8_scaled(state: dict[str, torch.Tensor], scaled: bool = True) -> dict[str, torch.Tensor]:
    """`state` as ComfyUI's `_fp8_e4m3fn_scaled` files hold it: each 2-D weight as float8_e4m3fn with a
    float32 `scale_weight` beside it (weight ~ fp8 x scale, the scale putting the largest value at 448) and
    an empty `scaled_fp8` marker; other tensors as they are. With `scaled=False`, the plain fp8 files
    (weights cast to float8, no scales)."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name.endswith("weight") and tensor.ndim == 2:
            if scaled:
                scale = tensor.abs().max().float().clamp(min=1e-12) / FP8_MAX
                out[name] = (tensor.float() / scale).to(torch.float8_e4m3fn)
                out[name.removesuffix("weight") + "scale_weight"] = scale.reshape(())
            else:
                out[name] = tensor.to(torch.float8_e4m3fn)
        else:
            out[name] = tensor
    if scaled:
        out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return out


def fp8_mixed(state: dict[str, torch.Tensor], keep: tuple[str, ...] = ("img_in.", "final_layer.")) -> dict:
    """`state` as ComfyUI's newer mixed-precision files hold it (its QUANTIZATION.md format 1.0): each 2-D
    weight not under `keep` as float8_e4m3fn with a float32 scalar `weight_scale` (absmax / 448), an
    `input_scale` for activations (unused when weights are dequantised) and a `comfy_quant` uint8 tensor of
    JSON naming the layer's format; the `keep` layers and other tensors as they are (bf16)."""
    import json

    marker = torch.tensor(list(json.dumps({"format": "float8_e4m3fn"}).encode()), dtype=torch.uint8)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name.endswith(".weight") and tensor.ndim == 2 and not name.startswith(keep):
            layer = name.removesuffix(".weight")
            scale = tensor.abs().max().float().clamp(min=1e-12) / FP8_MAX
            out[name] = (tensor.float() / scale).to(torch.float8_e4m3fn)
            out[f"{layer}.weight_scale"] = scale.reshape(())
            out[f"{layer}.input_scale"] = torch.tensor(1.0)
            out[f"{layer}.comfy_quant"] = marker.clone()
        else:
            out[name] = tensor
    return out


def write_fp8_tree(root: Path, tiny_dir: Path) -> Path:
    """A ComfyUI models folder of fp8 files: the [dev] transformer scaled (ComfyUI's `_fp8_scaled`), the
    [schnell] one plain fp8, T5 scaled (`t5xxl_fp8_e4m3fn_scaled`), with the bf16 VAE and CLIP-L."""
    models = root / "models"
    dev, schnell = "black-forest-labs/FLUX.1-dev", "black-forest-labs/FLUX.1-schnell"
    _save(models / "diffusion_models" / "flux1-dev-fp8-scaled.safetensors", fp8_scaled(bfl_transformer(tiny_dir, dev)))
    plain = fp8_scaled(bfl_transformer(tiny_dir, schnell), scaled=False)
    _save(models / "diffusion_models" / "flux1-schnell-fp8.safetensors", plain)
    _save(models / "text_encoders" / "t5xxl_fp8_e4m3fn_scaled.safetensors", fp8_scaled(t5xxl(tiny_dir)))
    _save(models / "vae" / "ae.safetensors", ae_vae(tiny_dir))
    _save(models / "clip" / "clip_l.safetensors", clip_l(tiny_dir))
    return root
