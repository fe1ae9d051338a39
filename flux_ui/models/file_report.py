"""The Models tab's table of the files found in --models-dir folders (`report`), with what each file costs on
the GPU under the settings in force (the "on the GPU" column, `gpu_cost`).

The cost is an estimate from the file's size and weight format (reading a file to measure it would cost its
load), with the ratios measured for FLUX.1 [dev]'s transformer on an H200 (docs/PERFORMANCE.md, "Every format
in one run", each under its card's memory cap): a bf16 file's weights take its size on the GPU (23.8 GB file,
22.2 GiB); float8 and GGUF files are kept as stored (11.9 GB -> 11.2 GiB, 12.7 GB -> 12.0 GiB, Q4_K 6.8 GB ->
6.4 GiB); an NF4 file kept in 4 bits its size (6.7 GB -> 6.3 GiB) and, unpacked to bf16, 3.3 times it.
Activations come on top (0.5-1.5 GiB at 1024x1024).
"""

from __future__ import annotations

from pathlib import Path

from flux_ui.core import memory
from flux_ui.core.memory import GIB
from flux_ui.core.policies import FP8_SHARE
from flux_ui.core.settings import Settings
from flux_ui.models import files, float8_file, nf4_file

NF4_UNPACKED = 22.2 / 6.7  # bf16 GiB per GB of NF4 file (measured, above)
HEADROOM_GIB = 3.0  # activations and the VAE beside a large model (as `policies.misfit`)
# Models the memory policies change (as `policies.LARGE_MODELS`, by file kind).
LARGE_KINDS = ("transformer", "checkpoint", "t5xxl", "qwen3", "mistral")
BYTES_PER_WEIGHT = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "fp8-scaled": 1}


def gpu_cost(found: files.FoundFile, settings: Settings) -> str:
    """One cell: GiB of GPU memory `found`'s weights take under `settings` (its policy, speed profile and
    device), how they are held, and why it will not fit this GPU if it will not; "" for skipped files."""
    if not found.usable:
        return ""
    device = str(settings.device)
    if not device.startswith(("cuda", "mps")):
        return "in RAM (no GPU)"
    policy, size = settings.policy, found.size / GIB
    large = found.kind in LARGE_KINDS
    if large and policy.group_offload:
        return f"a block at a time, streamed from RAM ({policy.name})"
    fmt = found.format
    if fmt.startswith("gguf") and found.kind != "transformer":  # a T5 GGUF: dequantised to bf16 as read
        bf16 = size * 16 / _gguf_bits(fmt)
        need, how = (bf16 * FP8_SHARE, f"float8 under {policy.name}") if policy.fp8_at_load else (bf16, "bf16")
    elif fmt.startswith("gguf"):
        need, how = size, "kept quantised"
    elif fmt == "nf4":
        kept = nf4_file.wanted(settings, found)
        need, how = (size, "kept in 4 bits") if kept else (size * NF4_UNPACKED, "unpacked to bf16")
    elif fmt in ("fp8", "fp8-scaled") and float8_file.wanted(settings, found):
        need, how = size, "float8, as stored"
    else:
        bf16 = size * 2 / BYTES_PER_WEIGHT.get(fmt, 2)
        if large and policy.fp8_at_load:
            need, how = bf16 * FP8_SHARE, f"float8 under {policy.name}"
        else:
            need, how = bf16, "bf16"
    cell = f"{need:.1f} GiB ({how})"
    total = (memory.device_usage(device) or {}).get("total_gib")
    if large and total is not None and need + HEADROOM_GIB > total:
        cell += (
            f"; does not fit this GPU's {total:.0f} GiB: start with --memory-policy offload-12gb, or use a "
            "smaller file (GGUF Q4_K, NF4)"
        )
    return cell


def _gguf_bits(fmt: str) -> float:
    """Bits per weight of a GGUF format ("gguf-Q8_0": 8.5), from the gguf package's block sizes."""
    import gguf

    try:
        block, nbytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[fmt.removeprefix("gguf-")]]
    except KeyError:
        return 16.0
    return nbytes * 8 / block


def _recognised(f: files.FoundFile) -> str:
    if f.family:
        return f"{f.kind} ({files.FAMILIES[f.family]})"
    return f"{f.kind} ({f.variant})" if f.kind in ("qwen3", "mistral") and f.variant else f.kind


def report(found: list[files.FoundFile], settings: Settings | None = None) -> list[dict]:
    """Every file found, as the Models tab and its API show it: what it was recognised as, its format and
    size, what the app uses it for (the first file serving a variant or shared part wins), or why it was
    skipped; with `settings`, what its weights take on the GPU under them ("on the GPU", `gpu_cost`)."""
    use: dict[Path, list[str]] = {}
    for variant, path in files.variant_files(found).items():
        use.setdefault(path, []).append(variant)
    for part, path in [*files.shared_files(found).items(), *files.flux2_part_files(found).items()]:
        use.setdefault(path, []).append(part)
    return [
        {
            "file": str(f.path),
            "recognised as": _recognised(f),
            "format": f.format or "unknown",
            "size_mb": round(f.size / 1e6, 1),
            "used for": ", ".join(use.get(f.path, [])),
            "note": f.reason or f.note,
        }
        | ({"on the GPU": gpu_cost(f, settings)} if settings is not None else {})
        for f in found
    ]
