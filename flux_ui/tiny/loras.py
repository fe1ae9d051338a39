"""Tiny LoRAs for the tiny FLUX models of `tiny.py`, one per file layout people download.

The diffusers/PEFT one is made by PEFT on the tiny transformer and saved by diffusers' own writer; the
others (Kohya, ComfyUI, XLabs, BFL) are written key by key in those tools' naming, with the shapes the
tiny architecture needs (inner dim 32, MLP 128, one double-stream and one single-stream block, CLIP width
32). They load through the same code as real LoRAs, so tiny mode and the tests exercise every converter.

Two limits of diffusers 0.42.1's converters shape these files: its Kohya converter splits a single
block's `linear1` into FLUX.1's full sizes (3072, 3072, 3072, 12288), and its BFL Control-LoRA converter
expects all 19 + 38 blocks at width 3072, so no tiny file can carry those.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from flux_ui.core.flags import TINY_LORA_SUBDIR  # noqa: F401 - where the tiny LoRAs go, for app.py and tests
from flux_ui.tiny.models import CLIP_DIM

log = logging.getLogger(__name__)

TINY_LORA_FORMAT = "1"  # bump when the files change, so stale ones are rewritten
MARKER = "flux_ui_tiny_loras.txt"
INNER = 32  # tiny transformer width (heads x head dim)
MLP = 4 * INNER  # its MLP width
RANK = 4

Tensors = dict[str, torch.Tensor]


def _rand(gen: torch.Generator, *shape: int, scale: float = 0.3) -> torch.Tensor:
    return torch.randn(*shape, generator=gen) * scale


def _pair(gen: torch.Generator, sd: Tensors, key: str, n_in: int, n_out: int, down: str, up: str) -> None:
    sd[f"{key}.{down}.weight"] = _rand(gen, RANK, n_in)
    sd[f"{key}.{up}.weight"] = _rand(gen, n_out, RANK)


def kohya_state(seed: int, clip: bool = False, guidance: bool = False, prefix: str = "lora_unet_") -> Tensors:
    """Kohya sd-scripts' layout (BFL's module names, `lora_down`/`lora_up`, an `alpha` per layer).

    `prefix="diffusion_model."` with dots gives ComfyUI's spelling of the same; `clip` adds a CLIP part
    (`lora_te1_...`), `guidance` a LoRA on the guidance embedder, which [schnell] does not have.
    """
    gen = torch.Generator().manual_seed(seed)
    sd: Tensors = {}
    sep = "." if prefix.endswith(".") else "_"
    double, single = f"{prefix}double_blocks{sep}0{sep}", f"{prefix}single_blocks{sep}0{sep}"
    layers = []
    for side in ("img", "txt"):
        layers += [
            (f"{double}{side}_attn{sep}qkv", INNER, 3 * INNER),
            (f"{double}{side}_attn{sep}proj", INNER, INNER),
            (f"{double}{side}_mlp{sep}0", INNER, MLP),
            (f"{double}{side}_mlp{sep}2", MLP, INNER),
            (f"{double}{side}_mod{sep}lin", INNER, 6 * INNER),
        ]
    layers += [(f"{single}linear2", INNER + MLP, INNER), (f"{single}modulation{sep}lin", INNER, 3 * INNER)]
    if guidance:
        guide = f"{prefix}guidance_in{sep}"
        layers += [(f"{guide}in_layer", 256, INNER), (f"{guide}out_layer", INNER, INNER)]
    if clip:
        attn = "lora_te1_text_model_encoder_layers_0_self_attn_"
        layers += [(f"{attn}{p}_proj", CLIP_DIM, CLIP_DIM) for p in ("q", "k", "v", "out")]
    for key, n_in, n_out in layers:
        _pair(gen, sd, key, n_in, n_out, "lora_down", "lora_up")
        sd[f"{key}.alpha"] = torch.tensor(float(RANK) / 2)
    return sd


def xlabs_state(seed: int) -> Tensors:
    """XLabs' layout: attention processors' `qkv_lora1/2` (image/text) and `proj_lora1/2`, `down`/`up`."""
    gen = torch.Generator().manual_seed(seed)
    sd: Tensors = {}
    for n in ("1", "2"):
        _pair(gen, sd, f"double_blocks.0.processor.qkv_lora{n}", INNER, 3 * INNER, "down", "up")
        _pair(gen, sd, f"double_blocks.0.processor.proj_lora{n}", INNER, INNER, "down", "up")
    _pair(gen, sd, "single_blocks.0.processor.qkv_lora", INNER, 3 * INNER, "down", "up")
    _pair(gen, sd, "single_blocks.0.processor.proj_lora", INNER + MLP, INNER, "down", "up")
    return sd


def bfl_state(seed: int) -> Tensors:
    """BFL's own layout (their flux repo's LinearLora): BFL module names with `lora_A`/`lora_B`."""
    gen = torch.Generator().manual_seed(seed)
    sd: Tensors = {}
    for side in ("img", "txt"):
        _pair(gen, sd, f"double_blocks.0.{side}_attn.qkv", INNER, 3 * INNER, "lora_A", "lora_B")
        _pair(gen, sd, f"double_blocks.0.{side}_mlp.0", INNER, MLP, "lora_A", "lora_B")
    _pair(gen, sd, "single_blocks.0.linear2", INNER + MLP, INNER, "lora_A", "lora_B")
    return sd


def bfl_control_state(seed: int) -> Tensors:
    """The head of a BFL Control LoRA (Canny/Depth): a widened input layer and replaced norm scales."""
    gen = torch.Generator().manual_seed(seed)
    sd: Tensors = {}
    _pair(gen, sd, "img_in", 2 * 64, INNER, "lora_A", "lora_B")
    _pair(gen, sd, "double_blocks.0.img_attn.qkv", INNER, 3 * INNER, "lora_A", "lora_B")
    sd["double_blocks.0.img_attn.norm.query_norm.scale"] = torch.ones(INNER // 2)
    sd["double_blocks.0.img_attn.norm.key_norm.scale"] = torch.ones(INNER // 2)
    return sd


def wide_state(seed: int) -> Tensors:
    """A diffusers-layout LoRA for a wider FLUX (inner dim 48): right names, wrong shapes."""
    gen = torch.Generator().manual_seed(seed)
    sd: Tensors = {}
    for name in ("to_q", "to_k", "to_v"):
        _pair(gen, sd, f"transformer.transformer_blocks.0.attn.{name}", 48, 48, "lora_A", "lora_B")
    return sd


def sd15_state(seed: int) -> Tensors:
    """A Stable Diffusion 1.5 LoRA in Kohya's layout: nothing in it names a FLUX layer."""
    gen = torch.Generator().manual_seed(seed)
    sd: Tensors = {}
    _pair(gen, sd, "lora_unet_down_blocks_0_attentions_0_proj_in", 320, 320, "lora_down", "lora_up")
    return sd


def save(path: Path, state: Tensors, metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)
    return path


def save_diffusers_lora(path: Path, seed: int, lora_alpha: int = 2) -> Path:
    """A LoRA in diffusers' layout, made the way trainers make one: PEFT adds an adapter to the tiny
    transformer, `get_peft_model_state_dict` takes its weights and diffusers' `save_lora_weights` writes
    them with the LoraConfig (lora_alpha != rank, so a loader that ignored it would scale it wrongly)."""
    from diffusers import FluxPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    from flux_ui.tiny.models import tiny_transformer

    torch.manual_seed(seed)
    transformer = tiny_transformer(guidance_embeds=True)
    config = LoraConfig(
        r=RANK,
        lora_alpha=lora_alpha,
        target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_mlp", "proj_out"],
        init_lora_weights=False,  # random A and B: a freshly initialised LoRA would change nothing
    )
    transformer.add_adapter(config, adapter_name="default")
    FluxPipeline.save_lora_weights(
        path.parent,
        transformer_lora_layers=get_peft_model_state_dict(transformer, adapter_name="default"),
        transformer_lora_adapter_metadata=config.to_dict(),
        weight_name=path.name,
    )
    return path


def _kohya_metadata(tags: dict[str, int]) -> dict[str, str]:
    return {"ss_network_module": "networks.lora_flux", "ss_tag_frequency": json.dumps({"10_tiny": tags})}


def write_tiny_loras(folder: Path) -> Path:
    """Write one tiny LoRA per layout into `folder` unless they are there already; return `folder`."""
    marker = folder / MARKER
    if marker.is_file() and marker.read_text() == TINY_LORA_FORMAT:
        return folder
    log.info("writing tiny LoRAs to %s", folder)
    save_diffusers_lora(folder / "diffusers-ink.safetensors", seed=1)
    save(folder / "kohya-fox.safetensors", kohya_state(2), _kohya_metadata({"foxy": 12, "snow": 7, "tree": 12}))
    save(folder / "kohya-clip.safetensors", kohya_state(3, clip=True), _kohya_metadata({"glossy": 5}))
    save(folder / "styles/comfy-dusk.safetensors", kohya_state(4, prefix="diffusion_model."))
    save(folder / "xlabs-glow.safetensors", xlabs_state(5))
    save(folder / "bfl-neon.safetensors", bfl_state(6), {"modelspec.trigger_phrase": "neon, night city"})
    marker.write_text(TINY_LORA_FORMAT)
    return folder


def lokr_state(seed: int, prefix: str = "lycoris_") -> Tensors:
    """A LyCORIS LoKr as LyCORIS saves one trained on the diffusers model (`lycoris_<path with _>.lokr_w1`,
    `lokr_w2_a`/`lokr_w2_b`, `alpha`): the factors split each layer's sizes as LyCORIS's `factorization`
    (factor -1) does, w1 whole, w2 of rank 2. `prefix="lora_unet_"` gives Kohya's BFL-named spelling, on a
    fused qkv layer (which cannot be split)."""
    from peft.tuners.lokr.layer import factorization

    gen = torch.Generator().manual_seed(seed)
    if prefix == "lora_unet_":
        layers = [("double_blocks_0_img_attn_qkv", INNER, 3 * INNER)]
    else:
        layers = [
            ("transformer_blocks_0_attn_to_q", INNER, INNER),
            ("transformer_blocks_0_attn_add_k_proj", INNER, INNER),
            ("transformer_blocks_0_ff_net_0_proj", INNER, MLP),
            ("single_transformer_blocks_0_attn_to_v", INNER, INNER),
            ("single_transformer_blocks_0_proj_mlp", INNER, MLP),
        ]
    sd: Tensors = {}
    for name, n_in, n_out in layers:
        (out_l, out_k), (in_m, in_n) = factorization(n_out, -1), factorization(n_in, -1)
        sd[f"{prefix}{name}.lokr_w1"] = _rand(gen, out_l, in_m, scale=1.0)
        sd[f"{prefix}{name}.lokr_w2_a"] = _rand(gen, out_k, 2, scale=1.0)
        sd[f"{prefix}{name}.lokr_w2_b"] = _rand(gen, 2, in_n, scale=1.0)
        sd[f"{prefix}{name}.alpha"] = torch.tensor(1.0)
    return sd


def loha_state(seed: int) -> Tensors:
    """A LyCORIS LoHa as Kohya's sd-scripts saves one trained on BFL's model (`lora_unet_<BFL path>.hada_w1_a`
    ... `hada_w2_b`, `alpha`), on fused layers (a double block's qkv, a single block's linear1) and plain
    ones."""
    gen = torch.Generator().manual_seed(seed)
    layers = [
        ("double_blocks_0_img_attn_qkv", INNER, 3 * INNER),
        ("double_blocks_0_txt_mlp_0", INNER, MLP),
        ("single_blocks_0_linear1", INNER, 3 * INNER + MLP),
        ("single_blocks_0_linear2", INNER + MLP, INNER),
    ]
    sd: Tensors = {}
    for name, n_in, n_out in layers:
        for w in ("w1", "w2"):
            sd[f"lora_unet_{name}.hada_{w}_a"] = _rand(gen, n_out, RANK, scale=1.0)
            sd[f"lora_unet_{name}.hada_{w}_b"] = _rand(gen, RANK, n_in, scale=1.0)
        sd[f"lora_unet_{name}.alpha"] = torch.tensor(2.0)
    return sd


def dora_state(seed: int) -> Tensors:
    """A Kohya LoRA trained as DoRA: a `dora_scale` magnitude vector beside each layer's factors."""
    sd = kohya_state(seed)
    for key in [k for k in sd if k.endswith(".lora_down.weight")]:
        sd[key.replace(".lora_down.weight", ".dora_scale")] = torch.ones(1, sd[key].shape[1])
    return sd
