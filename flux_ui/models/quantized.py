"""Quantised transformer files: GGUF (city96's ComfyUI-GGUF files, `flux1-dev-Q8_0.gguf`) and Forge's
bitsandbytes NF4 files (`flux1-dev-bnb-nf4-v2.safetensors`): their headers for the scan, their tensors for
the loader.

GGUF: the header (architecture, tensor names, shapes, quantisation types) is read with the `gguf`
package's reader, which maps the file without reading its data; the tensors with diffusers' own GGUF
reader, and diffusers' GGUF quantizer keeps them quantised in memory and dequantises each layer's weight as
it runs (on the CPU too: its dequantisers are plain torch).
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


def gguf_tensors(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors of a GGUF file whose names start with `prefix`, without it: quantised ones as diffusers'
    GGUFParameter (the raw blocks and their type), float ones as plain tensors."""
    from diffusers.models.model_loading_utils import load_gguf_checkpoint

    state = load_gguf_checkpoint(str(path))
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def gguf_config(dtype: torch.dtype):
    """diffusers' GGUF quantization config: weights stay quantised, each layer computes in `dtype`."""
    from diffusers import GGUFQuantizationConfig

    return GGUFQuantizationConfig(compute_dtype=dtype)


def is_prequantized(model: torch.nn.Module) -> bool:
    """Whether `model`'s weights are held quantised by a diffusers quantizer (a GGUF file): they are not plain
    floats, so the speed profiles' float8 conversion and torch.compile leave it alone."""
    return getattr(model, "hf_quantizer", None) is not None
