"""GPU benchmark: FLUX.2 [klein] 4B, [klein] 9B and [dev] at 1024x1024, full-size architectures with random weights.

For each model, in one process: plain diffusers (Flux2KleinPipeline / Flux2Pipeline, eager, the prompt
encoded by its real-size text encoder in every call) as the baseline, then the app's own path (Registry +
the text-to-image task, with the device's default speed profile: float8 row-wise linears and regional
compile on Hopper) on the same weights; s/image (median of --runs after a warm-up), s/step, peak VRAM.
Then the switch between a FLUX.1 and a FLUX.2 variant through the registry (one transformer on the GPU,
the other in the pinned warm tier; both families' shared parts resident). Random weights cost exactly the
arithmetic of trained ones. Models are built on the GPU in bf16 from the configs in assets/configs/ and
freed between rows ([dev] is a 32B transformer and a 24B text encoder: 113 GiB together).

    python bench/flux2.py --out flux2.json                          # all rows, about 6 minutes on an H200
    python bench/flux2.py --rows klein-4b klein-9b --out a.json      # a subset
    python bench/flux2.py --tiny --out tiny.json                     # the tiny models on the CPU (a dry run)

Writes the JSON after every row, so a run cut short still reports what it finished.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flux_ui.core import policies  # noqa: E402
from flux_ui.core.variants import get_variant  # noqa: E402

log = logging.getLogger("bench.flux2")
CONFIGS = ROOT / "assets" / "configs" / "black-forest-labs"
PROMPT = "a red fox sitting in the snow at night, cinematic light"
# row -> (variant, repo folder under assets/configs)
ROWS = {"klein-4b": ("flux2-klein-4b", "FLUX.2-klein-4B"), "klein-9b": ("flux2-klein-9b", "FLUX.2-klein-9B")}
ROWS["dev"] = ("flux2-dev", "FLUX.2-dev")

PARTIAL: dict = {}
OUT_PATH: Path | None = None


def checkpoint(key: str, value) -> None:
    PARTIAL[key] = value
    if OUT_PATH is not None:
        OUT_PATH.write_text(json.dumps(PARTIAL, indent=2))


class Bench:
    """Device, dtype, size and how to build each part: full size on the GPU, or the tiny models on the CPU."""

    def __init__(self, tiny: bool):
        self.tiny = tiny
        self.device = "cpu" if tiny else "cuda"
        self.dtype = torch.float32 if tiny else torch.bfloat16
        self.size = 64 if tiny else 1024

    def sync(self) -> float:
        if self.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def built(self, make: Callable[[], torch.nn.Module]) -> torch.nn.Module:
        """`make()` with its parameters created on the device in the bench dtype (no CPU copy, no cast)."""
        prev = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            with torch.device(self.device):
                model = make()
        finally:
            torch.set_default_dtype(prev)
        return model.to(self.dtype).eval().requires_grad_(False)

    def flux2_parts(self, variant_name: str, folder: str) -> dict:
        """Transformer, text encoder, tokenizer and VAE of a FLUX.2 variant, random weights."""
        from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
        from transformers import AutoConfig, Mistral3ForConditionalGeneration, Qwen3ForCausalLM

        from flux_ui.tiny import flux2 as tiny

        variant = get_variant(variant_name)
        mistral = variant.pipeline_class == "Flux2Pipeline"
        tokenizer = tiny.mistral_tokenizer() if mistral else tiny.qwen_tokenizer()
        torch.manual_seed(0)
        if self.tiny:
            width = tiny.ENCODER_WIDTH[variant.text_encoder]
            enc = self.built(
                lambda: tiny.mistral_encoder(width, tokenizer) if mistral else tiny.qwen_encoder(width, len(tokenizer))
            )
            tr = self.built(lambda: tiny.tiny_flux2_transformer(3 * width, guidance_embeds=mistral))
            vae = self.built(tiny.tiny_flux2_vae)
        else:
            config = AutoConfig.from_pretrained(CONFIGS / folder / "text_encoder")
            enc_cls = Mistral3ForConditionalGeneration if mistral else Qwen3ForCausalLM
            enc = self.built(lambda: enc_cls(config))
            tr_config = Flux2Transformer2DModel.load_config(CONFIGS / folder / "transformer")
            tr = self.built(lambda: Flux2Transformer2DModel.from_config(tr_config))
            vae_config = AutoencoderKLFlux2.load_config(CONFIGS / "FLUX.2-dev" / "vae")
            vae = self.built(lambda: AutoencoderKLFlux2.from_config(vae_config))
        return {"transformer": tr, "text_encoder": enc, "tokenizer": tokenizer, "vae": vae}

    def scheduler(self):
        from diffusers import FlowMatchEulerDiscreteScheduler

        from flux_ui.tiny.common import SCHEDULER_DEV

        return FlowMatchEulerDiscreteScheduler(**SCHEDULER_DEV)


def peak_gib(bench: Bench) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if bench.device == "cuda" else None


def reset_peak(bench: Bench) -> None:
    if bench.device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def free(bench: Bench) -> None:
    """Release compiled graphs (they hold their models) and cached GPU memory; callers `del` first."""
    torch._dynamo.reset()
    gc.collect()
    if bench.device == "cuda":
        torch.cuda.empty_cache()


def timed(bench: Bench, name: str, run: Callable[[int], tuple[float, float | None]], steps: int, runs: int) -> dict:
    """`run(steps)` -> (seconds, seconds per step or None); a 2-step warm-up (which compiles, if anything
    does), then `runs` timed images of `steps`."""
    reset_peak(bench)
    start = time.perf_counter()
    first, _ = run(min(steps, 2))
    totals, per_step = [], []
    for _ in range(runs):
        total, step = run(steps)
        totals.append(total)
        if step is not None:
            per_step.append(step)
    row = {
        "config": name,
        "steps": steps,
        "warmup_s": round(first, 2),  # 2 steps, compile included
        "median_s": round(statistics.median(totals), 3),
        "runs_s": [round(t, 3) for t in totals],
        "s_per_step": round(statistics.median(per_step), 4) if per_step else None,
        "peak_vram_gib": peak_gib(bench),
        "wall_s": round(time.perf_counter() - start, 1),
    }
    log.info("%s", row)
    return row


def plain_diffusers(bench: Bench, variant_name: str, parts: dict, steps: int, runs: int) -> dict:
    """The baseline: the diffusers pipeline as its docs show it, eager, one image per call."""
    import diffusers

    variant = get_variant(variant_name)
    cls = getattr(diffusers, variant.pipeline_class)
    extra = {} if variant.pipeline_class == "Flux2Pipeline" else {"is_distilled": variant.distilled}
    pipe = cls(scheduler=bench.scheduler(), **parts, **extra)
    pipe.set_progress_bar_config(disable=True)
    guidance = variant.default_guidance or 1.0

    def run(n: int) -> tuple[float, float]:
        marks: list[float] = []

        def on_step(p, i, t, kwargs):
            marks.append(bench.sync())
            return {}

        start = bench.sync()
        with torch.inference_mode():
            pipe(
                prompt=PROMPT,
                height=bench.size,
                width=bench.size,
                num_inference_steps=n,
                guidance_scale=guidance,
                generator=torch.Generator("cpu").manual_seed(1),
                callback_on_step_end=on_step,
                output_type="np",
            )
        end = bench.sync()
        step = statistics.median(np.diff(marks).tolist()) if len(marks) > 1 else None
        return end - start, step

    return timed(bench, f"{variant.label}: plain diffusers {variant.pipeline_class}, eager", run, steps, runs)


def random_registry(bench: Bench, flux2_parts: dict[str, dict], flux1: dict | None = None, **settings_kw):
    """The app's Registry whose loaders hand over the models built here instead of reading them from disk
    (the only difference from `python app.py`); placement, speed profile, pipelines and tasks are the app's."""
    from flux_ui.core.settings import Settings
    from flux_ui.models.loading import SharedParts
    from flux_ui.models.registry import Registry

    class RandomWeightRegistry(Registry):
        def _load_transformer(self, variant):
            self.load_counts[f"transformer:{variant.name}"] += 1
            if variant.name in flux2_parts:
                return flux2_parts[variant.name]["transformer"]
            return flux1["transformer"]

        def _load_flux2_vae(self, variant):
            return flux2_parts[variant.name]["vae"]

        def _load_flux2_encoder(self, variant):
            parts = flux2_parts[variant.name]
            return parts["text_encoder"], parts["tokenizer"]

        def _load_shared(self) -> SharedParts:
            return SharedParts(flux1["clip"], flux1["clip_tok"], flux1["t5"], flux1["t5_tok"], flux1["vae"])

        def _scheduler(self, variant):
            return bench.scheduler()

    profile = policies.resolve_profile("auto", bench.device)
    settings = Settings(device=bench.device, dtype=bench.dtype, speed=profile, preview_every=0, **settings_kw)
    return RandomWeightRegistry(settings)


def app_path(bench: Bench, variant_name: str, parts: dict, steps: int, runs: int) -> dict:
    """The app's path on the same weights: Registry (default speed profile) + tasks.text_to_image."""
    from flux_ui.tasks.text_to_image import TextToImageParams, text_to_image, validate_text_to_image

    registry = random_registry(bench, {variant_name: parts})
    params = TextToImageParams(PROMPT, variant_name, width=bench.size, height=bench.size, steps=steps, seed=1)
    job = validate_text_to_image(params, registry.settings)

    def run(n: int) -> tuple[float, float]:
        result = text_to_image(registry, job)
        return result.timings["total"], result.timings["generate"] / n

    row = timed(
        bench, f"{get_variant(variant_name).label}: the app's path, profile {registry.settings.speed}", run, steps, runs
    )
    row["s_per_step"] = None  # the app's timings hold denoising and decoding together; see median_s
    return row


def model_rows(bench: Bench, row: str, steps: int, runs: int) -> dict:
    variant_name, folder = ROWS[row]
    start = bench.sync()
    parts = bench.flux2_parts(variant_name, folder)
    out: dict = {"build_s": round(bench.sync() - start, 1)}
    out["weights_gib"] = {
        k: round(sum(p.numel() * p.element_size() for p in m.parameters()) / 2**30, 2)
        for k, m in parts.items()
        if isinstance(m, torch.nn.Module)
    }
    checkpoint(row, out)
    out["plain"] = plain_diffusers(bench, variant_name, parts, steps, runs)
    checkpoint(row, out)
    try:
        out["app"] = app_path(bench, variant_name, parts, steps, runs)
    except (RuntimeError, ValueError, TypeError, AssertionError) as err:  # torch.compile's errors are among these
        log.exception("the app's path failed on %s", row)
        out["app error"] = f"{type(err).__name__}: {str(err)[:600]}"
        checkpoint(row, out)
        raise
    out["speedup"] = round(out["plain"]["median_s"] / out["app"]["median_s"], 2)
    checkpoint(row, out)
    del parts
    free(bench)
    return out


def flux1_parts(bench: Bench) -> dict:
    """FLUX.1 [dev]'s transformer, CLIP-L, T5-XXL and VAE, random weights (tiny ones with --tiny)."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from flux_ui.tiny import models as tiny

    flux1 = CONFIGS / "FLUX.1-schnell"
    torch.manual_seed(3)
    if bench.tiny:
        clip, clip_tok, t5, t5_tok = tiny._text_encoders()
        return {
            "transformer": bench.built(lambda: tiny.tiny_transformer(guidance_embeds=True)),
            "clip": clip.eval(),
            "clip_tok": clip_tok,
            "t5": t5.eval(),
            "t5_tok": t5_tok,
            "vae": bench.built(tiny._vae),
        }
    tr_config = FluxTransformer2DModel.load_config(CONFIGS / "FLUX.1-dev" / "transformer")
    vae_config = AutoencoderKL.load_config(flux1 / "vae")
    return {
        "transformer": bench.built(lambda: FluxTransformer2DModel.from_config(tr_config)),
        "clip": bench.built(lambda: CLIPTextModel(CLIPTextConfig.from_pretrained(flux1 / "text_encoder"))),
        "clip_tok": tiny._clip_tokenizer(),
        "t5": bench.built(lambda: T5EncoderModel(T5Config.from_pretrained(flux1 / "text_encoder_2"))),
        "t5_tok": tiny._t5_tokenizer(),
        "vae": bench.built(lambda: AutoencoderKL.from_config(vae_config)),
    }


def switch_rows(bench: Bench, switches: int = 4) -> dict:
    """FLUX.1 [dev] <-> FLUX.2 [klein] 4B through the registry with one transformer on the GPU
    (gpu_transformers=1): each switch moves the incoming transformer from the pinned warm tier and the
    outgoing one there; the shared parts of both families stay where they are. Times entering and leaving
    `registry.pipeline` (what a request pays before its first step), and lists every move."""
    parts = {"flux2-klein-4b": bench.flux2_parts("flux2-klein-4b", "FLUX.2-klein-4B")}
    registry = random_registry(bench, parts, flux1_parts(bench), gpu_transformers=1)
    order = ["dev", "flux2-klein-4b"] * (switches // 2 + 2)
    for name in order[:3]:  # first loads, and each transformer's first trip to the warm tier (pinning): not timed
        with registry.pipeline(name):
            pass
    registry.moves.clear()
    out = []
    for name in order[3 : 3 + switches]:
        start = bench.sync()
        with registry.pipeline(name):
            bench.sync()
        out.append({"to": name, "s": round(bench.sync() - start, 3)})
        log.info("%s", out[-1])
    result = {
        "switches": out,
        "moves": [list(m) for m in registry.moves],
        "shared_kept": {k: str(next(m.parameters()).device) for k, m in registry.shared_modules().items()},
    }
    del registry, parts
    free(bench)
    return result


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", nargs="+", choices=[*ROWS, "switch"], default=[*ROWS, "switch"])
    p.add_argument("--dev-steps", type=int, default=28, help="[dev]'s steps (its default is 50; 28 fits the time)")
    p.add_argument("--runs", type=int, default=2, help="timed images per configuration, after one warm-up")
    p.add_argument("--dev-runs", type=int, default=1, help="timed [dev] images per configuration (about 15 s each)")
    p.add_argument("--tiny", action="store_true", help="the tiny models on the CPU, 64x64: checks the script runs")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    bench = Bench(args.tiny)
    if not args.tiny:
        torch.backends.cuda.matmul.allow_tf32 = True
    import diffusers
    import transformers

    global OUT_PATH
    OUT_PATH = Path(args.out)
    info = {
        "gpu": torch.cuda.get_device_name(0) if bench.device == "cuda" else "cpu (tiny models)",
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "settings": {"size": f"{bench.size}x{bench.size}", "runs": args.runs, "dtype": str(bench.dtype)},
        "speed_profile": policies.resolve_profile("auto", bench.device),
    }
    for k, v in info.items():
        checkpoint(k, v)
    for row in args.rows:
        start = time.perf_counter()
        if row == "switch":
            checkpoint("switch", switch_rows(bench))
        else:
            steps = args.dev_steps if row == "dev" else get_variant(ROWS[row][0]).default_steps
            runs = args.dev_runs if row == "dev" else args.runs
            try:
                checkpoint(row, model_rows(bench, row, 2 if args.tiny else steps, runs))
            except (RuntimeError, ValueError, TypeError, AssertionError) as err:  # record it; the next row runs
                log.exception("row %s failed", row)
                checkpoint(f"{row} error", f"{type(err).__name__}: {str(err)[:600]}")
                free(bench)
        log.info("row %s done in %.1f s", row, time.perf_counter() - start)
    print(json.dumps(PARTIAL, indent=2))


if __name__ == "__main__":
    main()
