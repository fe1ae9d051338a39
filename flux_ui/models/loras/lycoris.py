"""LyCORIS LoKr and LoHa files for FLUX.1, in PEFT's layout, and DoRA files told apart.

LyCORIS names a module by its path with "_" for ".": `lycoris_transformer_blocks_0_attn_to_q.lokr_w1` when
it wrapped the diffusers model (SimpleTuner and others), `lora_unet_double_blocks_0_img_attn_proj.hada_w1_a`
when Kohya's sd-scripts trained it on BFL's model. Each file becomes PEFT's keys
(`transformer.transformer_blocks.0.attn.to_q.lokr_w1`, ...): diffusers loads LoKr from those itself
(`load_lora_adapter` builds PEFT's LoKrConfig), LoHa is injected here with PEFT's LoHaConfig, which
diffusers 0.42.1 lacks. diffusers' FLUX.1 converters handle neither (they convert LyCORIS LoKr for FLUX.2
only), and drop DoRA's magnitude vectors (`dora_scale`) with a warning, so a DoRA file would run as a
plain LoRA: it is refused instead.

BFL's fused projections (a double block's `qkv`, a single block's `linear1`) are three or four diffusers
layers. A LoHa delta, (w1a @ w1b) * (w2a @ w2b), splits by rows exactly (split w1a and w2a); a LoKr delta, a
Kronecker product, does not in general, so LoKr files on fused layers are refused with the layer named.
"""

from __future__ import annotations

import re

import torch

from flux_ui.core.errors import InvalidInput
from flux_ui.models import layouts
from flux_ui.models.loras.library import LoraFile

LOKR = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")
LOHA = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
_KEY = re.compile(r"^(lycoris_|lora_unet_)(.+)\.(lokr_w[12](?:_[ab])?|hada_w[12]_[ab]|alpha|dora_scale)$")
_BLOCK = re.compile(r"^(transformer_blocks|single_transformer_blocks|double_blocks|single_blocks)_(\d+)_(.+)$")


MARKER = "flux_ui_lycoris"  # in the metadata `read` returns: "LoKr" or "LoHa"


class LycorisError(ValueError):
    """A LyCORIS file this loader cannot apply; the message says why."""


def kind(keys) -> str | None:
    """ "LoKr", "LoHa" or "DoRA" for a file with these tensor names; None for other LoRAs."""
    keys = list(keys)
    if any(k.endswith(".dora_scale") for k in keys):
        return "DoRA"
    if any(".lokr_" in k for k in keys):
        return "LoKr"
    if any(".hada_" in k for k in keys):
        return "LoHa"
    return None


def _underscored(names) -> dict[str, str]:
    return {n.replace(".", "_"): n for n in names}


# diffusers module paths (below a block, and at the top) as LyCORIS spells them.
_DIFFUSERS_DOUBLE = _underscored(
    [*layouts.DOUBLE_RENAMES.values(), *(p for parts in layouts.DOUBLE_FUSED.values() for p in parts)]
)
_DIFFUSERS_SINGLE = _underscored([*layouts.SINGLE_RENAMES.values(), *layouts.SINGLE_FUSED])
_DIFFUSERS_TOP = _underscored([*layouts.TOP_RENAMES.values(), layouts.FINAL_MOD[1]])
# BFL module paths as Kohya spells them -> diffusers paths (one, or the parts of a fused layer).
_BFL_DOUBLE = {k.replace(".", "_"): (v,) for k, v in layouts.DOUBLE_RENAMES.items()} | {
    k.replace(".", "_"): parts for k, parts in layouts.DOUBLE_FUSED.items()
}
_BFL_SINGLE = {k.replace(".", "_"): (v,) for k, v in layouts.SINGLE_RENAMES.items()} | {"linear1": layouts.SINGLE_FUSED}
_BFL_TOP = {k.replace(".", "_"): (v,) for k, v in layouts.TOP_RENAMES.items()}


def _modules(prefix: str, name: str) -> tuple[str, ...] | None:
    """The diffusers module(s) a LyCORIS module name stands for; None if unknown."""
    m = _BLOCK.match(name)
    if prefix == "lycoris_":
        if m is None:
            return (_DIFFUSERS_TOP[name],) if name in _DIFFUSERS_TOP else None
        table = _DIFFUSERS_DOUBLE if m.group(1) == "transformer_blocks" else _DIFFUSERS_SINGLE
        sub = table.get(m.group(3))
        return (f"{m.group(1)}.{m.group(2)}.{sub}",) if sub else None
    if m is None:
        return _BFL_TOP.get(name)
    diffusers_block = "transformer_blocks" if m.group(1) == "double_blocks" else "single_transformer_blocks"
    parts = (_BFL_DOUBLE if m.group(1) == "double_blocks" else _BFL_SINGLE).get(m.group(3))
    return tuple(f"{diffusers_block}.{m.group(2)}.{p}" for p in parts) if parts else None


def to_peft(state: dict[str, torch.Tensor], width: int) -> tuple[str, dict[str, torch.Tensor], dict[str, float]]:
    """(kind, PEFT-layout state under "transformer.", alpha per module) of a LyCORIS file for a FLUX.1
    transformer `width` wide (the sizes of BFL's fused layers). Raises LycorisError naming what does not fit.
    """
    what = kind(state)
    if what == "DoRA":
        raise LycorisError(
            "it is a DoRA (it has dora_scale magnitude vectors), which diffusers' FLUX.1 loader would drop "
            "silently, giving another image than the one it was trained for"
        )
    if what is None:
        raise LycorisError("it holds neither LoKr nor LoHa weights")
    grouped: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        m = _KEY.match(key)
        if m is None:
            raise LycorisError(f"{key!r} is not a LyCORIS key of the FLUX.1 transformer")
        grouped.setdefault((m.group(1), m.group(2)), {})[m.group(3)] = value
    out: dict[str, torch.Tensor] = {}
    alphas: dict[str, float] = {}
    for (prefix, name), tensors in grouped.items():
        modules = _modules(prefix, name)
        if modules is None:
            raise LycorisError(f"{prefix}{name} is no layer of the FLUX.1 transformer")
        alpha = tensors.pop("alpha", None)
        parts = _split(prefix + name, tensors, modules, width)
        for module, factors in zip(modules, parts, strict=True):
            out |= {f"transformer.{module}.{k}": v for k, v in factors.items()}
            if alpha is not None:
                alphas[module] = float(alpha)
    return what, out, alphas


def _split(name: str, tensors: dict[str, torch.Tensor], modules: tuple[str, ...], width: int) -> list[dict]:
    """The factors of each of `modules`: the file's as they are for one module; a fused layer's LoHa split
    by rows (a LoKr refused)."""
    if len(modules) == 1:
        return [tensors]
    if any(k.startswith("lokr_") for k in tensors):
        raise LycorisError(
            f"its LoKr on BFL's fused layer {name} cannot be split into the {len(modules)} layers diffusers has "
            "(a Kronecker product does not split by rows); a LoKr trained on the diffusers model loads"
        )
    rows = tensors["hada_w1_a"].shape[0]
    sizes = [width] * 3 + ([rows - 3 * width] if len(modules) == 4 else [])
    w1a, w2a = tensors["hada_w1_a"].split(sizes), tensors["hada_w2_a"].split(sizes)
    return [
        {"hada_w1_a": a1.contiguous(), "hada_w1_b": tensors["hada_w1_b"], "hada_w2_a": a2.contiguous(),
         "hada_w2_b": tensors["hada_w2_b"]}
        for a1, a2 in zip(w1a, w2a, strict=True)
    ]  # fmt: skip


def lokr_state(state: dict[str, torch.Tensor], alphas: dict[str, float]) -> dict[str, torch.Tensor]:
    """A LoKr state as diffusers' loader takes it: the `alpha / rank` scaling baked in (diffusers' own
    `_bake_lokr_alpha_`, which applies it only where a factor is rank-decomposed, as LyCORIS does)."""
    from diffusers.loaders.lora_conversion_utils import _bake_lokr_alpha_

    state = dict(state)
    state |= {f"transformer.{m}.alpha": torch.tensor(a) for m, a in alphas.items()}
    _bake_lokr_alpha_(state)
    return state


def load_loha(transformer: torch.nn.Module, state: dict[str, torch.Tensor], alphas: dict[str, float], adapter: str):
    """Inject a LoHa as PEFT adapter `adapter` (PEFT's LoHaConfig; its scale is alpha / rank, as LyCORIS's)."""
    from peft import LoHaConfig, inject_adapter_in_model, set_peft_model_state_dict

    state = {k.removeprefix("transformer."): v for k, v in state.items()}
    modules = sorted({k.rpartition(".hada_")[0] for k in state})
    ranks = {m: state[f"{m}.hada_w1_b"].shape[0] for m in modules}
    rank = max(ranks.values())
    config = LoHaConfig(
        r=rank,
        alpha=alphas.get(modules[0], rank),
        target_modules=modules,
        rank_pattern={f"^{m}$": r for m, r in ranks.items()},
        alpha_pattern={f"^{m}$": alphas.get(m, ranks[m]) for m in modules},
    )
    inject_adapter_in_model(config, transformer, adapter_name=adapter, low_cpu_mem_usage=True)
    result = set_peft_model_state_dict(transformer, state, adapter_name=adapter, low_cpu_mem_usage=True)
    if unexpected := getattr(result, "unexpected_keys", None):
        raise LycorisError(f"{len(unexpected)} of its tensors fit no layer, e.g. {unexpected[0]}")


def read(pipe, lora: LoraFile, reads) -> tuple[dict, dict | None, dict]:
    """A LyCORIS LoKr or LoHa file as the LoRA loader takes a file: (PEFT-layout state, alphas for a LoHa,
    {MARKER: kind}); InvalidInput (field `prompt`) saying what the file is where it cannot be applied."""
    from safetensors.torch import load_file

    reads[f"lora:{lora.name}"] += 1
    state = load_file(lora.path)
    what = kind(state)
    if getattr(pipe.transformer, "hf_quantizer", None) is not None and what != "DoRA":
        raise InvalidInput(
            "prompt",
            f"LoRA {lora.name!r} is a LyCORIS {what} file, which cannot be applied to a GGUF transformer (PEFT's "
            f"{what} layers need the weight's shape, which GGUF's packed blocks do not have); use a safetensors "
            "transformer file for it",
        )
    config = pipe.transformer.config
    try:
        what, sd, alphas = to_peft(state, config.num_attention_heads * config.attention_head_dim)
    except LycorisError as err:
        msg = f"LoRA {lora.name!r} is a LyCORIS {what} file that cannot be applied: {err}"
        raise InvalidInput("prompt", msg) from None
    if what == "LoKr":
        return lokr_state(sd, alphas), None, {MARKER: what}
    return sd, alphas, {MARKER: what}
