"""BFL's Canny/Depth LoRAs on the shared [dev] transformer, applied for one run and removed exactly.

A control LoRA does three things to the transformer (diffusers' Flux LoRA loader does them): it widens
`x_embedder` from 64 to 128 input channels (latents plus the encoded control map), overwrites the q/k
RMSNorm scales, and adds LoRA layers through PEFT. The [dev] transformer is shared with text-to-image, so
after a run all three are undone and checked: the same modules, shapes, weights and config as before.

diffusers' `unload_lora_weights(reset_to_overwritten_params=True)` undoes the same three, but it also
strips every other adapter from the transformer and from the shared CLIP text encoder; this removes only
the control adapter.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from flux_ui.models import layouts

log = logging.getLogger(__name__)

# Instance attributes the LoRA loader may add to the transformer; removed again if they were not there.
_LOADER_ATTRIBUTES = ("peft_config", "_hf_peft_config_loaded", "_transformer_norm_layers", "_overwritten_params")


@dataclass(frozen=True)
class Snapshot:
    """What must be true of the transformer again once the control LoRA is removed."""

    adapter: str  # PEFT adapter name of the control LoRA
    in_channels: int  # transformer.config.in_channels before
    attributes: frozenset[str]  # which of _LOADER_ATTRIBUTES the transformer had as instance attributes
    modules: tuple[str, ...]  # names of every submodule before


# BFL's final-layer modulation outputs (shift, scale); diffusers' norm_out.linear outputs (scale, shift).
_BFL_FINAL_DOWN = "final_layer.adaLN_modulation.1.lora_A.weight"
_DIFFUSERS_FINAL_DOWN = "transformer.norm_out.linear.lora_A.weight"


def _lora_file(source: str, weight_name: str) -> str:
    """The LoRA file itself (--models-dir, --model NAME=FILE), the file in a local folder, or downloaded from
    the hub into the shared cache."""
    folder = Path(source).expanduser()
    if folder.is_file():
        return str(folder)
    if folder.is_dir():
        return str(folder / weight_name)
    from huggingface_hub import hf_hub_download

    return hf_hub_download(source, weight_name)


def read(source: str, weight_name: str) -> dict[str, torch.Tensor]:
    """The LoRA's state dict in diffusers' naming, read once; BFL's own layout is converted by diffusers.

    One correction: to turn BFL's final-layer (shift, scale) into diffusers' (scale, shift), diffusers'
    converter swaps the halves of that layer's LoRA up matrix (right: they are its output rows) and of its
    down matrix too (wrong: those are rank rows, and B·A then mixes unrelated rank components). The down
    matrix is put back as BFL stored it, so the product is the swapped original.
    """
    from diffusers import FluxControlPipeline
    from safetensors.torch import load_file

    raw = load_file(_lora_file(source, weight_name))
    if "img_in.lora_B.weight" in raw and raw["img_in.lora_B.weight"].shape[0] != layouts.FLUX1_WIDTH:
        return bfl_to_diffusers(raw)
    down = raw.get(_BFL_FINAL_DOWN)
    state_dict = FluxControlPipeline.lora_state_dict(dict(raw))  # converts (and empties) the copy
    if down is not None and _DIFFUSERS_FINAL_DOWN in state_dict:
        state_dict[_DIFFUSERS_FINAL_DOWN] = down
    return state_dict


def _targets(layer: str, width: int) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
    """The diffusers layers a BFL layer's LoRA feeds, each with what its up matrix (and bias) keeps of the
    BFL one's rows: all of them, one of the fused projection's parts, or the final layer's halves swapped."""
    whole = lambda t: t  # noqa: E731
    if layer == layouts.FINAL_MOD[0]:
        return [(layouts.FINAL_MOD[1], layouts._swap_halves)]
    if layer in layouts.TOP_RENAMES:
        return [(layouts.TOP_RENAMES[layer], whole)]
    kind, index, rest = layer.split(".", 2)
    if kind == "double_blocks":
        block = f"transformer_blocks.{index}."
        if rest in layouts.DOUBLE_FUSED:
            parts = layouts.DOUBLE_FUSED[rest]
            return [(block + p, lambda t, i=i: t.chunk(3, dim=0)[i]) for i, p in enumerate(parts)]
        return [(block + layouts.DOUBLE_RENAMES[rest], whole)]
    block = f"single_transformer_blocks.{index}."
    if rest == "linear1":

        def part(t: torch.Tensor, i: int) -> torch.Tensor:
            return t.split((width, width, width, t.shape[0] - 3 * width), dim=0)[i]

        return [(block + p, lambda t, i=i: part(t, i)) for i, p in enumerate(layouts.SINGLE_FUSED)]
    return [(block + layouts.SINGLE_RENAMES[rest], whole)]


_NORMS = {  # BFL block kind -> (its q/k norm scales -> diffusers names, diffusers block kind)
    "double_blocks": (layouts.DOUBLE_NORMS, "transformer_blocks"),
    "single_blocks": (layouts.SINGLE_NORMS, "single_transformer_blocks"),
}


def bfl_to_diffusers(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A control LoRA in BFL's layer names -> the state dict diffusers' Flux LoRA loader takes
    (`transformer.`-prefixed diffusers names), for a transformer of any width.

    The same mapping as diffusers' `_convert_bfl_flux_control_lora_to_diffusers` (which hard-codes FLUX.1's
    19 + 38 blocks and width of 3072, so a file of another width, the tiny test models', cannot pass through
    it), on the transformer key table of `layouts`: a fused projection's down matrix serves each of its
    parts, its up matrix and bias are split by rows, the final layer's (shift, scale) rows become diffusers'
    (scale, shift), and the q/k norm scales are renamed. Raises KeyError naming a tensor it cannot place."""
    width = raw["img_in.lora_B.weight"].shape[0]
    out: dict[str, torch.Tensor] = {}
    for key, tensor in raw.items():
        layer, sep, rest = key.partition(".lora_")
        if not sep:  # a norm scale the LoRA replaces
            kind, _, inner = key.partition(".")
            index, _, name = inner.partition(".")
            table, block = _NORMS.get(kind, ({}, ""))
            if name not in table:
                raise KeyError(key)
            out[f"transformer.{block}.{index}.{table[name]}"] = tensor
            continue
        which, param = rest.split(".")  # "A" or "B"; "weight" or "bias"
        try:
            targets = _targets(layer, width)
        except (KeyError, ValueError) as err:
            raise KeyError(key) from err
        for name, rows in targets:
            out[f"transformer.{name}.lora_{which}.{param}"] = tensor if which == "A" else rows(tensor)
    return out


def snapshot(transformer: torch.nn.Module, adapter: str) -> Snapshot:
    peft_config = getattr(transformer, "peft_config", {})
    if adapter in peft_config:
        raise RuntimeError(f"adapter {adapter!r} is already loaded; the last control run was not undone")
    return Snapshot(
        adapter=adapter,
        in_channels=transformer.config.in_channels,
        attributes=frozenset(a for a in _LOADER_ATTRIBUTES if a in vars(transformer)),
        modules=tuple(name for name, _ in transformer.named_modules()),
    )


def apply(pipe, state_dict: dict[str, torch.Tensor], adapter: str) -> None:
    """Load the control LoRA into `pipe` (a FluxControlPipeline around the [dev] transformer).

    The state dict is copied by the loader (shallowly), so the cached one stays intact for the next run.
    """
    pipe.load_lora_weights(state_dict, adapter_name=adapter)
    log.info(
        "control LoRA %s applied: x_embedder %d -> %d input channels",
        adapter,
        pipe.transformer.config["in_channels"],
        pipe.transformer.x_embedder.in_features,
    )


def _restore_linear(transformer: torch.nn.Module, name: str, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Put back a Linear layer that the loader replaced by a wider one, with its original tensors."""
    parent_name, _, child = name.rpartition(".")
    parent = transformer.get_submodule(parent_name) if parent_name else transformer
    with torch.device("meta"):
        layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype)
    tensors = {"weight": weight} if bias is None else {"weight": weight, "bias": bias}
    layer.load_state_dict(tensors, assign=True, strict=True)
    setattr(parent, child, layer.requires_grad_(False))


def remove(transformer: torch.nn.Module, before: Snapshot) -> bool:
    """Undo `apply`; return True if the transformer is verifiably as it was at `snapshot` time.

    Safe to call after a failed or partial `apply`.
    """
    peft_config = getattr(transformer, "peft_config", None) or {}
    if before.adapter in peft_config:
        transformer.delete_adapters(before.adapter)
    if not getattr(transformer, "peft_config", None):
        # No adapter left: unwrap the PEFT layers so the original modules are back in place.
        transformer.unload_lora()
    norms = getattr(transformer, "_transformer_norm_layers", None)
    if norms:  # the loader saved clones of the norm scales it overwrote
        transformer.load_state_dict(norms, strict=False)
    overwritten = getattr(transformer, "_overwritten_params", None) or {}
    for key, weight in overwritten.items():
        if key.endswith(".weight"):
            name = key.removesuffix(".weight")
            _restore_linear(transformer, name, weight, overwritten.get(f"{name}.bias"))
    # The loader set the widened width as an attribute of the config (the FrozenDict's item keeps the old
    # value); set the attribute back the same way.
    transformer.config.in_channels = before.in_channels
    for attribute in _LOADER_ATTRIBUTES:
        if attribute not in before.attributes:
            vars(transformer).pop(attribute, None)

    modules = tuple(name for name, _ in transformer.named_modules())
    restored = (
        modules == before.modules
        and transformer.x_embedder.in_features == before.in_channels
        and transformer.config.in_channels == transformer.config["in_channels"] == before.in_channels
    )
    if not restored:
        log.error("control LoRA %s: the transformer could not be restored exactly", before.adapter)
    return restored
