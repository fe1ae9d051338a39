"""GPU benchmark: one LoRA training step of FLUX.1 [dev] per preset, full-size transformer with random weights.

For each preset of `flux_ui.tasks.training.presets` (12, 16, 24, 80+ GB) at 512 and 1024 px: seconds per
step and peak memory, under the preset's own memory cap (`torch.cuda.set_per_process_memory_fraction`, so
a 16 GB preset that fits here fits a 16 GiB card), and the time 1,000 steps at 512 px take. The step is the
app's own (`flux_ui.tasks.training.model`: NF4 or bf16 base, PEFT LoRA on the attention and MLP projections,
the flow-matching loss, 8-bit AdamW or AdamW, gradient checkpointing as the preset says, bf16 autocast,
cuDNN attention off); batches are random latents and 512-token T5 embeddings, which cost what cached real
ones cost. The 80+ GB preset's step (bf16 base, AdamW, no checkpointing) is diffusers' FLUX LoRA script's
step, the baseline; a last row tries it with regional torch.compile.

    python bench/train.py --out train.json           # on one H200, about 4 minutes
    python bench/train.py --tiny --out tiny.json     # a tiny transformer on the CPU: checks it runs

Needs diffusers, peft and bitsandbytes (NF4 layers, 8-bit AdamW). The JSON is rewritten after every row.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flux_ui.tasks.training import model  # noqa: E402
from flux_ui.tasks.training.presets import PRESETS  # noqa: E402
from flux_ui.tasks.training.run import no_cudnn_attention  # noqa: E402

log = logging.getLogger("bench")
GIB = 2**30
WARMUP, STEPS = 2, 5
T5_TOKENS = 512
# The tiny architecture of the tests (flux_ui.tiny.models), for --tiny.
TINY = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,
    "pooled_projection_dim": 32,
    "guidance_embeds": True,
    "axes_dims_rope": (4, 6, 6),
}
RESULT: dict = {}
OUT: Path | None = None


def save(key: str, value) -> None:
    RESULT[key] = value
    if OUT is not None:
        OUT.write_text(json.dumps(RESULT, indent=2))


def sync() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def build(device: str, tiny: bool) -> torch.nn.Module:
    """The [dev] transformer (FluxTransformer2DModel's defaults are FLUX.1 [dev]'s), random bf16 weights,
    built on `device` (tiny: the tests' architecture, float32, on the CPU)."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    if tiny:
        return FluxTransformer2DModel(**TINY).requires_grad_(False)
    with torch.device(device):
        prev = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            return FluxTransformer2DModel(guidance_embeds=True).requires_grad_(False)
        finally:
            torch.set_default_dtype(prev)


def cap(gib: float | None) -> None:
    """Let this process allocate at most `gib` GiB of the GPU (None: all of it)."""
    if not torch.cuda.is_available():
        return
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(1.0 if gib is None else min(1.0, gib * GIB / total))


def measure(transformer, preset, size: int, device: str, dtype: torch.dtype, tiny: bool) -> dict:
    """s/step and peak memory of the preset's step at `size` px, LoRA added here and removed after."""
    latent = size // 8 // (8 if tiny else 1)  # tiny: 8x smaller pictures, the same code
    text_dim, pooled_dim = (32, 32) if tiny else (4096, 768)
    b = preset.batch
    latents = torch.randn(b, 16, latent, latent, device=device)
    embeds = torch.randn(b, T5_TOKENS, text_dim, device=device)
    pooled = torch.randn(b, pooled_dim, device=device)
    sigmas = torch.linspace(1.0, 1e-3, 1000)
    if preset.checkpointing:
        transformer.enable_gradient_checkpointing()
    else:
        transformer.disable_gradient_checkpointing()
    transformer.train()
    params = model.add_lora(transformer, preset.rank)
    opt = model.optimizer(params, preset.optimizer, preset.learning_rate, device)
    cuda = device.startswith("cuda")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    times = []
    try:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        with no_cudnn_attention(device):
            for i in range(WARMUP + STEPS):
                start = sync()
                with autocast:
                    loss = model.flow_matching_loss(
                        transformer, latents, embeds, pooled, sigmas, torch.Generator().manual_seed(i), dtype
                    )
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, model.MAX_GRAD_NORM)
                opt.step()
                opt.zero_grad(set_to_none=True)
                times.append(sync() - start)
        step = sorted(times[WARMUP:])[len(times[WARMUP:]) // 2]
        row = {"s_per_step": round(step, 3), "loss": round(float(loss), 4)}
        if cuda:
            row["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 2)
            row["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / GIB, 2)
        return row
    except torch.OutOfMemoryError as err:
        return {"oom": str(err).splitlines()[0][:200]}
    finally:
        del opt, params
        transformer.delete_adapters(model.ADAPTER)
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--tiny", action="store_true", help="the tests' tiny transformer on the CPU")
    p.add_argument("--no-compile", action="store_true", help="skip the compiled 80+ GB row")
    args = p.parse_args()
    global OUT
    OUT = Path(args.out)
    device = "cpu" if args.tiny else "cuda"
    dtype = torch.float32 if args.tiny else torch.bfloat16
    import diffusers
    import peft

    info = {
        "gpu": "cpu (tiny)" if args.tiny else torch.cuda.get_device_name(0),
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "peft": peft.__version__,
        "settings": {"warmup": WARMUP, "steps": STEPS, "t5_tokens": T5_TOKENS, "tiny": args.tiny},
    }
    for k, v in info.items():
        save(k, v)
    rows = []
    begin = time.perf_counter()
    nf4 = [p for p in PRESETS.values() if p.base == "nf4"]
    bf16 = [p for p in PRESETS.values() if p.base == "bf16"]
    transformer = build(device, args.tiny)
    if nf4:
        start = sync()
        model.quantize_nf4(transformer, device, dtype)  # in place: the 4-bit presets share this base
        gc.collect()
        if not args.tiny:
            torch.cuda.empty_cache()
        save("nf4_quantize_s", round(sync() - start, 1))
    for group, base in ((nf4, "nf4"), (bf16, "bf16")):
        if base == "bf16" and nf4:
            del transformer
            gc.collect()
            if not args.tiny:
                torch.cuda.empty_cache()
            cap(None)
            transformer = build(device, args.tiny)
        for preset in group:
            for size in (512, 1024):
                cap(None if args.tiny else preset.memory_gib)
                row = {"preset": preset.name, "summary": preset.summary, "size": size, "cap_gib": preset.memory_gib}
                row |= measure(transformer, preset, size, device, dtype, args.tiny)
                if size == 512 and "s_per_step" in row:
                    row["min_for_1000_steps"] = round(row["s_per_step"] * 1000 / 60, 1)
                rows.append(row)
                log.info("%s", row)
                save("rows", rows)
    cap(None)
    if not args.tiny and not args.no_compile and bf16:
        preset = bf16[-1]
        start = sync()
        try:
            transformer.compile_repeated_blocks(fullgraph=False)
            row = {"preset": preset.name + " + regional compile", "size": 512, "cap_gib": preset.memory_gib}
            row |= measure(transformer, preset, 512, device, dtype, args.tiny)
            row["with_compile_s"] = round(sync() - start, 1)
            if "s_per_step" in row:
                row["min_for_1000_steps"] = round(row["s_per_step"] * 1000 / 60, 1)
        except Exception as err:  # noqa: BLE001 - an optional row: report why it did not run, keep the rest
            row = {"preset": preset.name + " + regional compile", "error": f"{type(err).__name__}: {err}"[:300]}
        rows.append(row)
        log.info("%s", row)
        save("rows", rows)
    save("total_s", round(time.perf_counter() - begin, 1))
    print(json.dumps(RESULT, indent=2))


if __name__ == "__main__":
    main()
