"""GPU benchmark: one LoRA training step of FLUX.1 [dev] per preset, full-size transformer with random weights.

For each preset of `flux_ui.tasks.training.presets` (12, 16, 24 GB on a 4-bit base, 24 GB on a float8 base,
80+ GB on bf16) at 512 and 1024 px: seconds per step and peak memory, under the preset's own memory cap
(`torch.cuda.set_per_process_memory_fraction`, so a 16 GB preset that fits here fits a 16 GiB card), and
the time 1,000 steps at 512 px take. The step is the app's own (`flux_ui.tasks.training.model`: NF4,
float8 or bf16 base, PEFT LoRA on the attention and MLP projections, the flow-matching loss, 8-bit AdamW or
AdamW, gradient checkpointing as the preset says, bf16 autocast, cuDNN attention off); batches are random
latents and 512-token T5 embeddings, which cost what cached real ones cost. The 80+ GB preset's eager step
(bf16 base, AdamW, no checkpointing) is diffusers' FLUX LoRA script's step, the baseline.

Each preset runs eager; then the bf16 and float8 bases again with the app's compiled step
(`model.compile_blocks`: regional torch.compile, the 80+ GB preset's default on CUDA), both sizes;
`first_step_s` holds the compile. The float8 compiled rows are skipped past OPTIONAL_UNTIL_S seconds;
`--bases float8` measures that base alone (eager and compiled).

    python bench/train.py --out train.json           # on one H200, about 6 minutes
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
OPTIONAL_UNTIL_S = 240  # on the GPU the float8 compiled rows start only before this (the run must end by 7 min)
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
    """s/step (median after WARMUP steps), the first step's seconds and peak memory of the preset's step at
    `size` px, LoRA added here and removed after."""
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
        row = {"s_per_step": round(step, 3), "first_step_s": round(times[0], 1), "loss": round(float(loss), 4)}
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


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_rows(transformer, presets, label: str, device: str, dtype: torch.dtype, tiny: bool, rows: list) -> None:
    """One row per preset and size (512, 1024), each under the preset's memory cap."""
    for preset in presets:
        for size in (512, 1024):
            cap(None if tiny else preset.memory_gib)
            row = {"preset": preset.name, "step": label, "summary": preset.summary, "size": size}
            row["cap_gib"] = preset.memory_gib
            row |= measure(transformer, preset, size, device, dtype, tiny)
            if size == 512 and "s_per_step" in row:
                row["min_for_1000_steps"] = round(row["s_per_step"] * 1000 / 60, 1)
            rows.append(row)
            log.info("%s", row)
            save("rows", rows)
    cap(None)


def compiled_rows(transformer, presets, device: str, dtype: torch.dtype, tiny: bool, rows: list) -> None:
    """The same rows with the app's compiled step (tiny: graph capture only, `aot_eager`, on the CPU)."""
    backend = "aot_eager" if tiny else "inductor"
    try:
        model.compile_blocks(transformer, backend=backend)
        run_rows(transformer, presets, f"compiled ({backend})", device, dtype, tiny, rows)
    except Exception as err:  # noqa: BLE001 - optional rows: report why they did not run, keep the rest
        rows.append({"preset": ", ".join(p.name for p in presets), "step": "compiled", "error": f"{err}"[:300]})
        log.info("%s", rows[-1])
        save("rows", rows)
    finally:
        torch._dynamo.reset()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--tiny", action="store_true", help="the tests' tiny transformer on the CPU")
    p.add_argument("--no-compile", action="store_true", help="skip the compiled rows")
    p.add_argument("--bases", default="nf4,bf16,float8", help="which bases to measure, comma-separated")
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
    rows: list = []
    begin = time.perf_counter()
    bases = [b.strip() for b in args.bases.split(",") if b.strip()]
    for base in bases:  # nf4 first: the 4-bit presets share one quantised base
        group = [p for p in PRESETS.values() if p.base == base]
        if not group:
            continue
        transformer = build(device, args.tiny)
        if base != "bf16":
            start = sync()
            quantize = model.quantize_nf4 if base == "nf4" else model.quantize_float8
            quantize(transformer, device, dtype) if base == "nf4" else quantize(transformer, device)
            free()
            save(f"{base}_quantize_s", round(sync() - start, 1))
        run_rows(transformer, group, "eager", device, dtype, args.tiny, rows)
        late = base == "float8" and not args.tiny and time.perf_counter() - begin > OPTIONAL_UNTIL_S
        if base != "nf4" and not args.no_compile and not late:
            compiled_rows(transformer, group, device, dtype, args.tiny, rows)
        elif late:
            save("skipped", f"float8 compiled rows: {time.perf_counter() - begin:.0f} s had passed")
        del transformer
        free()
    save("total_s", round(time.perf_counter() - begin, 1))
    print(json.dumps(RESULT, indent=2))


if __name__ == "__main__":
    main()
