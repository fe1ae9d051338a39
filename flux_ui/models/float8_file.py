"""A FLUX.1 transformer from a float8 file (ComfyUI's `_fp8_scaled` files, plain fp8 files) kept in float8,
for the settings that run it in float8 anyway (the fp8 speed profile, the fp8-24gb memory policy).

Read the usual way, a float8 file is dequantised into a bf16 model, which the fp8 profile then quantises
back to float8, per row: a 24 GB bf16 copy in RAM (and on the way to the GPU) made only to be thrown away,
and a second rounding of every weight. Here the layers the fp8 profile would quantise
(`speed._fp8_filter`) are built directly from the file's float8_e4m3fn values and scales as
`Float8RowwiseLinear` layers (a per-tensor scale is every row's scale), so the float8 weights go from the
file to the GPU as they are; the profile and the policy then find nothing left to quantise. Only the other
tensors (embedders, norms, biases, small layers) are turned into the settings' dtype.

diffusers' single-file loader builds a model of one dtype; it has no way to keep some layers in float8.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from flux_ui.core.settings import Settings
from flux_ui.models import files, layouts, quantized, speed

log = logging.getLogger(__name__)


def wanted(settings: Settings, found: files.FoundFile) -> bool:
    """Whether `found` is loaded in float8: a float8 e4m3 file, under settings that run float8."""
    return found.format in ("fp8", "fp8-scaled") and (settings.policy.fp8_at_load or settings.speed == "fp8")


def transformer(path: Path, found: files.FoundFile, config: Path, dtype: torch.dtype) -> torch.nn.Module:
    """The transformer of a float8 file, its large linear layers in float8 as the file holds them (see the
    module docstring); `config` is the folder (hub layout) of its configuration. Raises KeyError naming a
    tensor the file lacks."""
    from diffusers import FluxTransformer2DModel

    raw = files.read_tensors(path, found.parts["transformer"], dequantize=False)
    weights = {k: v for k, v in raw.items() if v.dtype == torch.float8_e4m3fn and v.ndim == 2}
    rest = {k: v for k, v in raw.items() if k not in weights and k.rpartition(".")[2] not in quantized.FP8_EXTRAS}
    rest = {k: v.to(dtype) for k, v in rest.items() if k != "scaled_fp8"}
    # Each weight's scale, one per output row, carried through the key conversion beside it (the fused BFL
    # projections split by rows, so their rows' scales split the same way).
    rows = {k: _scale(raw, k).expand(v.shape[0], 1) for k, v in weights.items()}
    if found.layout == "bfl":
        weights, rows = layouts.bfl_to_diffusers(rest | weights), layouts.bfl_to_diffusers(rest | rows)
    else:
        weights, rows = rest | weights, rest | rows
    with torch.device("meta"):
        model = FluxTransformer2DModel.from_config(FluxTransformer2DModel.load_config(config / "transformer"))
    kept = 0
    state = {}
    for name, module in list(model.named_modules()):
        w = weights.get(f"{name}.weight")
        if w is None or w.dtype != torch.float8_e4m3fn:
            continue
        scale = rows[f"{name}.weight"].float()
        if speed._fp8_filter(module, name):
            bias = weights.get(f"{name}.bias")
            layer = speed.Float8RowwiseLinear.from_float8(w, scale, None if bias is None else bias.to(dtype))
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, layer)
            kept += 1
        else:  # a layer the profile keeps in bf16 (small ones): dequantised, as it would have been
            state[f"{name}.weight"] = (w.float() * scale).to(dtype)
    replaced = {n for n, m in model.named_modules() if isinstance(m, speed.Float8RowwiseLinear)}
    state |= {
        k: v for k, v in weights.items() if v.dtype != torch.float8_e4m3fn and k.rpartition(".")[0] not in replaced
    }
    if missing := sorted(model.state_dict().keys() - state.keys() - _float8_keys(replaced)):
        raise KeyError(missing[0])
    model.load_state_dict(state, strict=False, assign=True)
    log.info("%s: %d linear layers kept in float8 as the file holds them", path.name, kept)
    return model


def _scale(raw: dict[str, torch.Tensor], weight: str) -> torch.Tensor:
    """A weight's per-tensor scale (`quantized.scale_of`), 1 in a plain fp8 file, as a (1, 1) tensor."""
    scale = quantized.scale_of(raw, weight)
    return (torch.ones(()) if scale is None else scale.float()).reshape(1, 1)


def _float8_keys(layers: set[str]) -> set[str]:
    return {f"{n}.{b}" for n in layers for b in ("weight_fp8", "weight_scale", "bias")}
