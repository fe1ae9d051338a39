"""The tiny transformers written as the quantised files people run FLUX.1 from on small GPUs: GGUF (as
city96's ComfyUI-GGUF files) and Forge's bitsandbytes NF4 files, each with the library that defines the
format (the `gguf` package's writer and quantizer; bitsandbytes' `quantize_4bit`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from flux_ui.tiny.gguf_encoders import save

# The tensors llama.cpp leaves unquantised in city96's FLUX.1 files (the patch of ComfyUI-GGUF's
# tools/lcpp.patch): the input embedders and the final layer.
GGUF_KEEP = ("txt_in.", "img_in.", "time_in.", "vector_in.", "guidance_in.", "final_layer.")


def write_gguf(path: Path, bfl_state: dict[str, torch.Tensor], qtype: str = "Q8_0") -> Path:
    """A FLUX.1 transformer (BFL keys, as city96's convert script takes it) as a GGUF file of `qtype`
    ("Q8_0", "Q4_0", "Q5_1"...: the types the `gguf` package can quantise; it has no K-quant quantizer).

    Laid out as ComfyUI-GGUF's files are: `general.architecture = flux`, the quantisation version and file
    type; 1-D tensors in F32, the embedders and final layer in F16, every other weight in `qtype`, falling
    back to F16 where a row does not fill whole blocks (as the convert script does)."""
    import gguf

    target = gguf.GGMLQuantizationType[qtype]
    writer = _writer(qtype)
    for name, tensor in bfl_state.items():
        data = tensor.float().numpy()
        if tensor.ndim == 1:
            kind = gguf.GGMLQuantizationType.F32
        elif name.startswith(GGUF_KEEP):
            kind = gguf.GGMLQuantizationType.F16
        else:
            kind = target
        try:
            raw = gguf.quants.quantize(data, kind)
        except gguf.QuantError:  # rows not a multiple of the block size
            kind = gguf.GGMLQuantizationType.F16
            raw = gguf.quants.quantize(data, kind)
        writer.add_tensor(name, raw, raw_dtype=kind)
    return save(writer, path)


def nf4_state(bfl_state: dict[str, torch.Tensor], nested: bool = False) -> dict[str, torch.Tensor]:
    """A transformer's tensors as Forge's NF4 files hold them: every linear weight quantised by bitsandbytes'
    `quantize_4bit` (NF4, blocks of 64) and saved as bitsandbytes' `Linear4bit` saves it (the packed bytes
    under the weight's name, then `.absmax`, `.quant_map` and the packed `.quant_state.bitsandbytes__nf4`),
    the rest in bf16. `nested` quantises the absmax as well (`.nested_absmax`, `.nested_quant_map`: the
    first NF4 files; the "v2" files have plain float32 absmax)."""
    from bitsandbytes.functional import quantize_4bit

    out: dict[str, torch.Tensor] = {}
    for name, tensor in bfl_state.items():
        if tensor.ndim == 2 and name.endswith(".weight"):
            packed, quant_state = quantize_4bit(
                tensor.to(torch.bfloat16), blocksize=64, quant_type="nf4", compress_statistics=nested
            )
            out[name] = packed
            out |= {f"{name}.{k}": v for k, v in quant_state.as_dict(packed=True).items()}
        else:
            out[name] = tensor.to(torch.bfloat16)
    return out


def write_random_gguf(path: Path, config: dict, seed: int = 0) -> Path:
    """A FLUX.1 transformer of `config`'s shapes (a transformer config.json's fields) as a Q8_0 GGUF file of
    random blocks, in city96's layout as `write_gguf` writes it, without building the model: the names and
    shapes come from an empty model on the meta device, each Q8_0 block is a fixed scale and 32 random
    int8 values (weights within +-0.025). Files of hundreds of MB in seconds, where quantising real weights
    with the gguf package's numpy quantizer takes minutes."""
    import gguf
    import numpy as np
    from diffusers import FluxTransformer2DModel

    from flux_ui.models.layouts import diffusers_to_bfl

    with torch.device("meta"):
        shapes = diffusers_to_bfl(FluxTransformer2DModel.from_config(config).state_dict())
    rng = np.random.default_rng(seed)
    writer = _writer("Q8_0")
    for name, meta in shapes.items():
        if meta.ndim == 2 and not name.startswith(GGUF_KEEP) and meta.shape[1] % 32 == 0:
            rows, blocks = meta.shape[0], meta.shape[1] // 32
            raw = np.empty((rows, blocks, 34), np.uint8)  # per block: float16 scale, 32 int8 values
            raw[..., :2] = np.array([0.025 / 127], np.float16).view(np.uint8)
            values = rng.integers(0, 2**64, rows * blocks * 4, dtype=np.uint64, endpoint=False)  # 8 bytes a draw
            raw[..., 2:] = values.view(np.uint8).reshape(rows, blocks, 32)
            writer.add_tensor(name, raw.reshape(rows, -1), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            plain = rng.standard_normal(tuple(meta.shape), dtype=np.float32) * 0.02
            kind = gguf.GGMLQuantizationType.F16 if meta.ndim == 2 else gguf.GGMLQuantizationType.F32
            writer.add_tensor(name, plain.astype(np.float16) if meta.ndim == 2 else plain, raw_dtype=kind)
    return save(writer, path)


def _writer(qtype: str):
    """A GGUF writer with ComfyUI-GGUF's header for a FLUX.1 file mostly of `qtype`."""
    import gguf

    writer = gguf.GGUFWriter(path=None, arch="flux")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(getattr(gguf.LlamaFileType, f"MOSTLY_{qtype}"))
    return writer
