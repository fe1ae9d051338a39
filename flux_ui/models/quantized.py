"""Quantised model files: ComfyUI's float8 files (plain and `_scaled`), GGUF (city96's ComfyUI-GGUF files,
`flux1-dev-Q8_0.gguf`) and Forge's bitsandbytes NF4 files (`flux1-dev-bnb-nf4-v2.safetensors`): what the
scan needs to know of them, and their tensors for the loader.

GGUF: the header (architecture, tensor names, shapes, quantisation types) is read with the `gguf`
package's reader, which maps the file without reading its data; the tensors with diffusers' own GGUF
reader, and diffusers' GGUF quantizer keeps them quantised in memory and dequantises each layer's weight as
it runs (on the CPU too: its dequantisers are plain torch). float8 and NF4 weights are unpacked into
plain tensors as they are read (see `dequantize_fp8`, `dequantize_nf4` for why).
"""

from __future__ import annotations

from pathlib import Path

import torch

# GGUF types that hold plain floats, not quantised blocks.
GGUF_FLOATS = ("F32", "F16", "BF16", "F64")


def gguf_header(path: Path) -> tuple[str, dict[str, tuple[str, tuple[int, ...]]]]:
    """(general.architecture, name -> (quantisation type, shape)) of a GGUF file, shapes in torch's order
    (GGUF lists the innermost dimension first). Raises ValueError for a file that is not GGUF or is cut
    short."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except (ValueError, IndexError, KeyError, OSError) as err:  # gguf raises these for bad or short files
        raise ValueError(f"not a readable GGUF file ({err})") from err
    field = reader.get_field("general.architecture")
    arch = str(field.contents()) if field is not None else ""
    header = {t.name: (t.tensor_type.name, tuple(int(d) for d in reversed(t.shape))) for t in reader.tensors}
    return arch, header


def gguf_format(header: dict[str, tuple[str, tuple[int, ...]]]) -> str:
    """ "gguf-Q8_0" and the like: the quantisation type holding most weights (a float type if none is)."""
    counts: dict[str, int] = {}
    for qtype, shape in header.values():
        counts[qtype] = counts.get(qtype, 0) + int(torch.Size(shape).numel())
    quantised = {k: v for k, v in counts.items() if k not in GGUF_FLOATS}
    pool = quantised or counts
    return f"gguf-{max(pool, key=pool.__getitem__)}" if pool else "gguf"


def gguf_tensors(path: Path, prefix: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The tensors of a GGUF file whose names start with `prefix`, without it: quantised ones as diffusers'
    GGUFParameter (the raw blocks and their type), F32/F16 ones as plain tensors in `dtype` (the loader's
    torch_dtype: diffusers would make the same conversion, with the file's copy and the converted one both
    held; FLUX's models keep no module in float32). Raises ValueError for a type diffusers cannot run.

    Read here rather than by `load_gguf_checkpoint`, which copies each tensor out of the gguf reader's memory
    map of the whole file (`tensor.data.copy()`) and keeps the map alive until it returns: every page of the
    file ends up mapped into the process beside its copy, so loading a file held it twice in RAM (a 12.7 GB
    Q8_0 file added 23.2 GiB of RSS on an H200, a 1.35 GiB one 2.7 GiB on the CPU). Here the reader's map
    serves only the header; each tensor is read from the file straight into its own buffer, so the load holds
    the file once (1.37 GiB for the 1.35 GiB file), and only the tensors of `prefix` are read."""
    import gguf
    import numpy as np
    from diffusers.quantizers.gguf.utils import SUPPORTED_GGUF_QUANT_TYPES, GGUFParameter

    plain = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)  # what diffusers keeps as tensors
    reader = gguf.GGUFReader(str(path))
    state: dict[str, torch.Tensor] = {}
    with open(path, "rb") as file:
        for info in reader.tensors:
            if not info.name.startswith(prefix):
                continue
            qtype = info.tensor_type
            if qtype not in plain and qtype not in SUPPORTED_GGUF_QUANT_TYPES:
                supported = ", ".join(t.name for t in SUPPORTED_GGUF_QUANT_TYPES)
                raise ValueError(f"{info.name} is {qtype.name}, a GGUF type diffusers cannot run (it runs {supported})")
            # The reader's view of the tensor gives its numpy dtype and shape (raw blocks: uint8 rows of bytes)
            # without reading it.
            data = np.empty(info.data.shape, info.data.dtype)
            _read_into(file, info.data_offset, memoryview(data).cast("B"), info.name)
            tensor = torch.from_numpy(data)
            name = info.name.removeprefix(prefix)
            state[name] = tensor.to(dtype) if qtype in plain else GGUFParameter(tensor, quant_type=qtype)
    return state


def _read_into(file, offset: int, buffer: memoryview, name: str) -> None:
    """Fill `buffer` from `file` at `offset` (one read may return less than asked: Linux caps it at 2 GiB)."""
    file.seek(offset)
    done = 0
    while done < len(buffer):
        count = file.readinto(buffer[done:])
        if not count:
            raise ValueError(f"the file ends inside the tensor {name}")
        done += count


def gguf_config(dtype: torch.dtype):
    """diffusers' GGUF quantization config: weights stay quantised, each layer computes in `dtype`."""
    from diffusers import GGUFQuantizationConfig

    return GGUFQuantizationConfig(compute_dtype=dtype)


def t5_from_gguf(path: Path, config: Path, dtype: torch.dtype) -> torch.nn.Module:
    """T5-XXL's encoder from a GGUF file (city96's `t5-v1_1-xxl-encoder-Q8_0.gguf`) through transformers' GGUF
    loader, dequantised into `dtype` (transformers keeps packed GGUF weights for a few language models only;
    its dequantising took 24-30 s for 0.9 billion weights on 2 cores, about as long as diffusers' torch
    dequantisers, so it is used as it is). The model's settings are
    FLUX's T5 (`config`, a folder with its config.json), not the header's: transformers reads a T5 GGUF's
    feed-forward as ReLU, where T5 v1.1's is gated GELU (measured on the tiny T5: 10 % off, against 0.05 %
    with this config in F16). Raises ValueError naming the file when its widths are not that T5's."""
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config.from_pretrained(config)
    _, header = gguf_header(path)
    embed = header.get("token_embd.weight", ("", ()))[1]
    if tuple(embed)[-1:] != (cfg.d_model,) or sum(n.endswith("attn_q.weight") for n in header) != cfg.num_layers:
        layers = sum(n.endswith("attn_q.weight") for n in header)
        raise ValueError(
            f"{path.name} is a T5 of width {tuple(embed)[-1:] or '?'} with {layers} layers; FLUX.1 needs T5-XXL "
            f"({cfg.d_model} wide, {cfg.num_layers} layers: t5-v1_1-xxl-encoder-*.gguf)"
        )
    return T5EncoderModel.from_pretrained(
        str(path.parent), gguf_file=path.name, config=cfg, torch_dtype=dtype, local_files_only=True
    )


def is_prequantized(model: torch.nn.Module) -> bool:
    """Whether `model`'s weights are held quantised by a diffusers quantizer (a GGUF file) or bitsandbytes
    (an NF4 file kept in 4 bits, `nf4_file`): they are not plain
    floats, so the speed profiles' float8 conversion and torch.compile leave it alone."""
    if getattr(model, "hf_quantizer", None) is not None:
        return True
    return any(type(m).__name__ == "Linear4bit" for m in model.modules())  # an NF4 file kept in 4 bits


# -- float8 (ComfyUI's fp8 and _fp8_scaled files) --------------------------------------------------------

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
# ComfyUI's float8 bookkeeping, not weights: the `_fp8_scaled` files' per-tensor `scale_weight`, `scale_input`
# and `scaled_fp8` marker; its newer mixed-precision files' `weight_scale`, `input_scale` and per-layer
# `comfy_quant` (JSON naming the layer's format), the layers it does not name kept in bf16.
FP8_EXTRAS = ("scale_weight", "scale_input", "scaled_fp8", "weight_scale", "input_scale", "comfy_quant")
SCALE_NAMES = ("scale_weight", "weight_scale")  # a float8 weight's per-tensor scale, in the two spellings


def scale_of(state: dict[str, torch.Tensor], weight: str) -> torch.Tensor | None:
    """The per-tensor scale of the float8 weight named `weight` (".../x.weight"), or None (plain fp8)."""
    if not weight.endswith("weight"):
        return None
    stem = weight.removesuffix("weight")
    return next((state[stem + n] for n in SCALE_NAMES if stem + n in state), None)


def comfy_quant_problem(header: dict[str, tuple[str, tuple[int, ...]]]) -> str | None:
    """Why a ComfyUI mixed-precision file (layers marked `.comfy_quant`) cannot be read, or None: only its
    float8_e4m3fn layers with one scale per tensor are; nvfp4, mxfp4/mxfp8 and int8 layers (packed in uint8
    or int8, or with block scales) would need those formats' kernels or dequantisers, which neither diffusers
    nor this app has. From the header alone: each format stores its weights in its own dtype and shape."""
    odd: dict[str, int] = {}
    for name in header:
        if not name.endswith(".comfy_quant"):
            continue
        layer = name.removesuffix(".comfy_quant")
        dtype = header.get(f"{layer}.weight", ("missing", ()))[0]
        scale = header.get(f"{layer}.weight_scale", ("F32", ()))[1]
        if dtype != "F8_E4M3" or any(d > 1 for d in scale):
            kind = dtype if dtype != "F8_E4M3" else "F8_E4M3 with block scales"
            odd[kind] = odd.get(kind, 0) + 1
    if not odd:
        return None
    kinds = ", ".join(f"{n} layers stored as {k}" for k, n in odd.items())
    return (
        f"a ComfyUI mixed-precision file with {kinds} (nvfp4, mxfp or int8 quantisation), which this app does not "
        "read; use the same model's fp8 (float8_e4m3fn), GGUF or bf16 file"
    )


def dequantize_fp8(state: dict[str, torch.Tensor], dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """`state` with float8 tensors turned into `dtype`: each times its per-tensor scale where the file has
    one (ComfyUI's `_scaled` files' `scale_weight`, its mixed-precision files' `weight_scale`: weight = fp8
    value x scale), as is where it has none (plain fp8 files); the scale and marker tensors are dropped.

    diffusers' single-file loader would cast the float8 values and ignore the scales it does not know, so a
    scaled file's weights would come out wrong by their scale (up to hundreds of times), silently. One
    tensor at a time, in bf16 by default, so the peak is the bf16 model, not a float32 copy."""
    if not any(t.dtype in FP8_DTYPES for t in state.values()):
        return state
    out = {}
    for name, tensor in state.items():
        if name.rpartition(".")[2] in FP8_EXTRAS or name == "scaled_fp8":
            continue
        if tensor.dtype in FP8_DTYPES:
            scale = scale_of(state, name)
            value = tensor.to(torch.float32)
            if scale is not None:
                value = value * scale.to(torch.float32)
            tensor = value.to(dtype)
        out[name] = tensor
    return out


# -- bitsandbytes NF4 (Forge's flux1-dev-bnb-nf4*.safetensors) -------------------------------------------

NF4_STATE = ".quant_state.bitsandbytes__nf4"  # the packed quantisation state beside each 4-bit weight
NF4_STATS = ("absmax", "quant_map", "nested_absmax", "nested_quant_map")  # its tensor companions


def is_nf4(names) -> bool:
    """Whether a file with these tensor names holds bitsandbytes 4-bit weights."""
    return any(n.endswith(NF4_STATE) for n in names)


def nf4_weights(state: dict[str, torch.Tensor]) -> list[str]:
    """The names of the 4-bit weights in `state` (each packed two weights a byte, its stats beside it)."""
    return [n.removesuffix(NF4_STATE) for n in state if n.endswith(NF4_STATE)]


def dequantize_nf4(state: dict[str, torch.Tensor], dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """`state` with every bitsandbytes 4-bit weight (as `Linear4bit` saves it: the packed bytes, `.absmax`,
    `.quant_map`, `.nested_*` when the absmax is itself quantised, and the packed `.quant_state...`)
    unpacked into a `dtype` tensor of its original shape, by bitsandbytes' own `dequantize_4bit` (which runs
    on the CPU since bitsandbytes 0.45); the companions are dropped. One weight at a time, so the peak is
    the unpacked model, not a float32 copy.

    diffusers reads pre-quantised bitsandbytes weights only in its own layout and only on a GPU, and its
    single-file loader would split the fused BFL projections (qkv, linear1) through the packed bytes, so
    the weights are unpacked here and go the way of any other file."""
    from bitsandbytes.functional import QuantState, dequantize_4bit

    # On a GPU when there is one: bitsandbytes' CPU kernel unpacks about 100 M weights a second on 2 cores,
    # two minutes for FLUX.1's 12 billion; each weight comes back to RAM for the loader all the same.
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = dict(state)
    for name in nf4_weights(state):
        stats = {k.removeprefix(name + "."): out.pop(k) for k in list(out) if k.startswith(name + ".")}
        quant_state = QuantState.from_dict(stats, device)
        out[name] = dequantize_4bit(out[name].to(device), quant_state).to("cpu", dtype)
    return out
