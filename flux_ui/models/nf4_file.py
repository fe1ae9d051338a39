"""A FLUX.1 transformer from a Forge NF4 file (`flux1-dev-bnb-nf4*.safetensors`) kept in 4 bits, on CUDA.

Read the usual way (`quantized.dequantize_nf4`), every 4-bit weight is unpacked into bf16 and the model costs
the GPU what a bf16 one does (about 24 GB); that path stays for the CPU. With CUDA, each linear layer of the
file becomes a bitsandbytes `Linear4bit` holding the file's packed bytes and block statistics as they are,
so the transformer takes about a quarter of that and bitsandbytes' kernels unpack each weight as it runs.

BFL's fused projections (double blocks' qkv, single blocks' linear1) are split by rows into diffusers'
layers. NF4 packs a weight row-major in blocks of 64 values, so a split at a row boundary that falls on a
block boundary (every one in FLUX.1, whose layers are 3072 wide) is a split of the packed bytes and of the
per-block scales, exact; a nested scale (the first NF4 files quantise the scales too, in blocks of 256) is
unpacked to float32 first, a few MB. Which rows go where is worked out by passing each weight's row numbers
through the same key map as every other file (`layouts.bfl_to_diffusers`).

diffusers reads pre-quantised bitsandbytes weights only in its own key layout, through `from_pretrained`,
and its single-file loader would split the fused projections through the packed bytes; bitsandbytes'
`Linear4bit` has no way to take a slice of another layer's packed weight. Hence this module.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from flux_ui.core.settings import Settings
from flux_ui.models import files, layouts, quantized

log = logging.getLogger(__name__)

BLOCK = 64  # NF4 values per block (Forge's files, bitsandbytes' default)
ROW_ID = 2**20  # more rows than any layer has: row numbers of different weights never meet


def wanted(settings: Settings, found: files.FoundFile) -> bool:
    """Whether `found` is kept in 4 bits: an NF4 file, on a CUDA device."""
    return found.format == "nf4" and str(settings.device).startswith("cuda") and torch.cuda.is_available()


def _plain(stats: dict[str, torch.Tensor]):
    """A weight's bitsandbytes QuantState (as `Linear4bit` saved it), its scales unpacked to float32."""
    from bitsandbytes.functional import QuantState, dequantize_blockwise

    state = QuantState.from_dict(stats, torch.device("cpu"))
    if state.nested:
        absmax = dequantize_blockwise(state.absmax, state.state2).float() + state.offset
        state = QuantState(
            absmax=absmax,
            shape=state.shape,
            code=state.code,
            blocksize=state.blocksize,
            quant_type=state.quant_type,
            dtype=state.dtype,
        )
    if state.blocksize != BLOCK or state.quant_type != "nf4":
        raise ValueError(f"a {state.quant_type} weight in blocks of {state.blocksize}; NF4 files use nf4, {BLOCK}")
    return state


def _take(packed: torch.Tensor, state, rows: list[int]) -> tuple[torch.Tensor, object] | None:
    """The packed bytes and QuantState of `rows` of a weight (runs of consecutive rows), or None where a run
    does not start and end on a block boundary."""
    from bitsandbytes.functional import QuantState

    width = state.shape[1]
    runs, start = [], rows[0]
    for prev, row in zip(rows, [*rows[1:], None], strict=True):
        if row != prev + 1:
            runs.append((start, prev + 1))
            start = row
    data, absmax = [], []
    flat = packed.reshape(-1)
    for a, b in runs:
        if (a * width) % BLOCK or (b * width) % BLOCK:
            return None
        data.append(flat[a * width // 2 : b * width // 2])
        absmax.append(state.absmax[a * width // BLOCK : b * width // BLOCK])
    part = QuantState(
        absmax=torch.cat(absmax),
        shape=torch.Size((len(rows), width)),
        code=state.code,
        blocksize=BLOCK,
        quant_type="nf4",
        dtype=state.dtype,
    )
    return torch.cat(data).reshape(-1, 1), part


def transformer(path: Path, found: files.FoundFile, config: Path, dtype: torch.dtype) -> torch.nn.Module:
    """The transformer of an NF4 file, its linear layers in 4 bits as the file holds them (see the module
    docstring), on the CPU: the registry places it. Raises KeyError naming a tensor the file lacks."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import dequantize_4bit
    from diffusers import FluxTransformer2DModel

    raw = files.read_tensors(path, found.parts["transformer"], dequantize=False)
    packed, states = {}, {}
    for name in quantized.nf4_weights(raw):
        stats = {k.removeprefix(name + "."): raw.pop(k) for k in list(raw) if k.startswith(name + ".")}
        packed[name], states[name] = raw.pop(name), _plain(stats)
    rest = {k: v.to(dtype) for k, v in raw.items()}
    # Each 4-bit weight's rows, numbered (weight index * ROW_ID + row) in a (rows, 1) float64 tensor that goes
    # through the key map like any weight: what comes out says which weight and rows each layer takes.
    names = list(states)
    rows = {
        k: (i * ROW_ID + torch.arange(states[k].shape[0], dtype=torch.float64))[:, None] for i, k in enumerate(names)
    }
    mapped = layouts.bfl_to_diffusers(rest | rows) if found.layout == "bfl" else rest | rows
    origin = {k: names[int(v[0, 0]) // ROW_ID] for k, v in mapped.items() if v.dtype == torch.float64}

    with torch.device("meta"):
        model = FluxTransformer2DModel.from_config(FluxTransformer2DModel.load_config(config / "transformer"))
    state: dict[str, torch.Tensor] = {k: v for k, v in mapped.items() if v.dtype != torch.float64}
    kept = 0
    for ours, theirs in origin.items():
        layer_name = ours.removesuffix(".weight")
        module = model.get_submodule(layer_name)
        picked = [int(r) % ROW_ID for r in mapped[ours][:, 0].tolist()]
        part = _take(packed[theirs], states[theirs], picked)
        if part is None:  # rows not on block boundaries: this layer unpacked, as the CPU path does
            full = dequantize_4bit(packed[theirs], states[theirs]).to(dtype)
            state[ours] = full[picked]
            continue
        data, quant_state = part
        bias = state.pop(f"{layer_name}.bias", None)
        with torch.device("meta"):
            layer = bnb.nn.Linear4bit(
                module.in_features, module.out_features, bias=bias is not None, compute_dtype=dtype, quant_type="nf4"
            )
        layer.weight = bnb.nn.Params4bit(
            data, requires_grad=False, quant_state=quant_state, blocksize=BLOCK, quant_type="nf4", bnb_quantized=True
        )
        if bias is not None:
            layer.bias = torch.nn.Parameter(bias, requires_grad=False)
        parent, _, child = layer_name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer)
        kept += 1
    replaced = {n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    prefixes = tuple(f"{r}." for r in replaced)
    expected = {k for k in model.state_dict() if not k.startswith(prefixes)}
    if missing := sorted(expected - state.keys()):
        raise KeyError(missing[0])
    model.load_state_dict({k: state[k] for k in expected}, strict=False, assign=True)
    log.info("%s: %d linear layers kept in 4 bits as the file holds them", path.name, kept)
    return model.eval().requires_grad_(False)
