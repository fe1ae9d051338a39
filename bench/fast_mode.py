"""GPU benchmark of fast mode and of restart to first image: FLUX.1 [dev] architecture, full-size random
weights, 1024x1024.

In one run (rows written to --out after each one):
  1. plain diffusers FluxPipeline, eager (the baseline): the app's registry with speed profile "off",
     which assembles an unmodified diffusers pipeline; 28 steps, and 4 steps ([schnell]'s step count);
  2. the app's exact path: registry + text_to_image task with the profile the app picks on this GPU
     (fp8 on an H200), 28 and 4 steps;
  3. fast mode (flux_ui.models.fast) on the same registry, 28 and 4 steps; the transformer's block calls
     are counted with forward hooks under the eager profile only (a hook would recompile a compiled
     block), the mask's count is reported beside;
  4. Kontext [dev] exact and fast (1024x1024 input and output), if the run has used under KONTEXT_BY_S
     (always with --phase main);
  5. restart to first image: a fresh process runs what `app.py --preload` runs (compile caches in a folder,
     the app's registry, the preload with its warm-up images) and then one text_to_image request, once with
     an empty compile cache folder (cold) and once again with the folder it left (warm).
     The weights are built in memory on the GPU (random), not read from disk: the rows measure what the
     compile cache saves, not disk reads.

s/image is the median of 3 after one warm-up image (which also reports compilation); peak GPU memory is
torch's max_memory_allocated during a row (text encoders included: every row runs through the registry,
so each request also encodes its prompt, a few tens of ms). A row that fails is recorded with its error and
the run goes on. Random weights cost
exactly the arithmetic of trained ones; the PSNR of fast against exact images shows numerical drift only,
not image quality (see flux_ui/models/fast.py for the published quality figures).

    python bench/fast_mode.py --out fast_mode.json                      # one H200: about 6 minutes
    python bench/fast_mode.py --phase main --out fast_main.json         # rows 1-4 only, Kontext always
    python bench/fast_mode.py --phase restart-rows --out restart.json   # row 5 only
    python bench/fast_mode.py --tiny --out fast_tiny.json               # CPU, tiny models: checks it runs
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flux_ui.core import policies  # noqa: E402
from flux_ui.models import compile_cache, fast  # noqa: E402

log = logging.getLogger("bench.fast_mode")
RUNS = 3
KONTEXT_BY_S = 200  # Kontext rows only if the run has used less than this; the restart rows (~2.5 min) follow
START = time.perf_counter()
OUT: dict = {}
OUT_PATH: Path | None = None


def save(key: str, value) -> None:
    """Record a result and write everything so far (a run cut short still reports)."""
    OUT[key] = value
    if OUT_PATH is not None:
        OUT_PATH.write_text(json.dumps(OUT, indent=2))
    log.info("%s: %s", key, value)


def elapsed() -> float:
    return time.perf_counter() - START


def peak_reset(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None


def free(device: str) -> None:
    torch._dynamo.reset()
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def make_registry(args, profile: str):
    """The app's Registry: on the GPU with full-size random-weight models (bench/speed.py's builders),
    with --tiny over the tiny models on disk."""
    from dataclasses import replace

    if args.tiny:
        from flux_ui.core.settings import Settings
        from flux_ui.models.registry import Registry
        from flux_ui.tiny.models import ensure_tiny_models

        folder = ensure_tiny_models(Path(args.tiny_dir))
        settings = Settings(
            tiny=True,
            tiny_dir=folder,
            model_root=folder,
            speed=profile,
            preview_every=0,
            outputs_dir=Path(args.scratch),
        )
        return Registry(settings)
    import speed as speed_bench  # bench/speed.py: full-size random-weight parts, built on the GPU

    vae = speed_bench.build_vae()
    registry = speed_bench.random_registry(vae, profile, cache=3)
    # Room for [dev] and Kontext side by side: a switch would measure the warm tier, not fast mode.
    registry.settings = replace(registry.settings, gpu_transformers=2, outputs_dir=Path(args.scratch))
    return registry


def text_job(registry, size: int, steps: int, fast_mode: bool):
    from flux_ui.tasks.text_to_image import TextToImageParams, validate_text_to_image

    raw = TextToImageParams("a red fox in fresh snow", "dev", size, size, steps, seed=1, fast=fast_mode)
    return validate_text_to_image(raw, registry.settings)


def kontext_job(registry, size: int, steps: int, fast_mode: bool):
    from PIL import Image

    from flux_ui.tasks.kontext import KontextParams, validate_kontext

    picture = Image.radial_gradient("L").convert("RGB").resize((size, size))
    raw = KontextParams(picture, "make it winter", f"{size}x{size}", steps, seed=1, fast=fast_mode)
    return validate_kontext(raw, registry.settings)


def block_calls(registry, variant: str):
    """Counters of `variant`'s transformer block calls: [all blocks, the last single block (it runs only on
    fully computed steps)], and the hooks' handles."""
    calls = [0, 0]
    transformer = registry.transformer(variant)
    blocks = [*transformer.transformer_blocks, *transformer.single_transformer_blocks]

    def hook(module, args, output):
        calls[0] += 1
        calls[1] += module is blocks[-1]

    return calls, [block.register_forward_hook(hook) for block in blocks]


def time_task(name: str, *args, **kwargs) -> tuple[dict, np.ndarray] | tuple[None, None]:
    """`_time_task`, with a failure recorded as the row (with its traceback) instead of ending the run."""
    try:
        return _time_task(name, *args, **kwargs)
    except Exception as err:  # noqa: BLE001 - any failure of one row (a compile error, OOM) is a result to report
        import traceback

        save(f"row: {name}", {"config": name, "error": repr(err), "traceback": traceback.format_exc()[-3000:]})
        return None, None


def _time_task(name: str, registry, run, job, device: str, variant: str = "dev") -> tuple[dict, np.ndarray]:
    """One row: a warm-up image (compilation shows there), then the median of RUNS images. Block calls are
    counted with forward hooks only under the eager profile: a hook on a compiled block would recompile it."""
    peak_reset(device)
    first = run(registry, job)
    counted = registry.settings.speed == "off"
    calls, handles = block_calls(registry, variant) if counted else ([None, None], [])
    totals, gens = [], []
    try:
        for _ in range(RUNS):
            result = run(registry, job)
            totals.append(result.timings["total"])
            gens.append(result.timings["generate"])
    finally:
        for handle in handles:
            handle.remove()
    row = {
        "config": name,
        "steps": job.steps,
        "size": f"{job.width}x{job.height}",
        "first_image_s": round(first.timings["total"], 2),
        "median_s": round(statistics.median(totals), 3),
        "median_generate_s": round(statistics.median(gens), 3),
        "runs_s": [round(t, 3) for t in totals],
        "full_transformer_evaluations_per_image": calls[1] // RUNS if counted else None,
        "block_calls_per_image": calls[0] // RUNS if counted else None,
        "mask_full_evaluations": sum(fast.computed_steps(job.steps)) if job.fast else job.steps,
        "peak_gib": peak_gib(device),
    }
    save(f"row: {name}", row)
    return row, np.asarray(result.images[0].image).astype(np.float64) / 255


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else round(10 * np.log10(1.0 / mse), 2)


def phase_main(args) -> None:
    from flux_ui.tasks.kontext import kontext_edit
    from flux_ui.tasks.text_to_image import text_to_image

    device = "cpu" if args.tiny else "cuda"
    size = args.size
    save(
        "environment",
        {
            "gpu": torch.cuda.get_device_name() if device == "cuda" else "cpu (tiny models)",
            "date": str(date.today()),
            "torch": torch.__version__,
            "fast_mode": fast.METHOD,
            "mask_28_steps": "".join(map(str, fast.computed_steps(28))),
            "mask_4_steps": "".join(map(str, fast.computed_steps(4))),
        },
    )

    registry = make_registry(args, "off")
    time_task(
        "diffusers FluxPipeline, eager (baseline), 28 steps",
        registry,
        text_to_image,
        text_job(registry, size, 28, False),
        device,
    )
    time_task(
        "diffusers FluxPipeline, eager (baseline), 4 steps",
        registry,
        text_to_image,
        text_job(registry, size, 4, False),
        device,
    )
    del registry
    free(device)

    profile = "off" if args.tiny else policies.resolve_profile("auto", device)
    registry = make_registry(args, profile)
    for steps in (28, 4):
        images = {}
        for fast_mode in (False, True):
            label = "fast mode" if fast_mode else "exact path"
            job = text_job(registry, size, steps, fast_mode)
            _, images[fast_mode] = time_task(
                f"app {label} (profile {profile}), {steps} steps", registry, text_to_image, job, device
            )
        if images[True] is not None and images[False] is not None:
            save(
                f"psnr_db fast vs exact, {steps} steps (random weights: drift, not quality)",
                psnr(images[True], images[False]),
            )
    if not args.no_kontext and (args.phase == "main" or elapsed() < KONTEXT_BY_S or args.tiny):
        for fast_mode in (False, True):
            label = "fast mode" if fast_mode else "exact path"
            time_task(
                f"Kontext [dev] app {label} (profile {profile}), 28 steps, {size}x{size} input",
                registry,
                kontext_edit,
                kontext_job(registry, size, 28, fast_mode),
                device,
                "kontext-dev",
            )
    else:
        why = "--no-kontext" if args.no_kontext else f"{elapsed():.0f} s used, over {KONTEXT_BY_S} s"
        save("kontext", f"skipped: {why} (run --phase main alone to include it)")
    del registry
    free(device)


def phase_restart(args) -> None:
    """One fresh process as `app.py --preload` runs it: compile caches in --cache-dir, the app's registry,
    the preload (load, then warm-up images that compile), then the first request."""
    from flux_ui.tasks import preload
    from flux_ui.tasks.text_to_image import text_to_image

    t0 = time.perf_counter()
    folder = compile_cache.use(Path(args.cache_dir))
    before = compile_cache.entries(folder)
    device = "cpu" if args.tiny else "cuda"
    profile = "off" if args.tiny else policies.resolve_profile("auto", device)
    registry = make_registry(args, profile)
    preload.preload(registry, warm=True)
    ready = time.perf_counter() - t0
    result = text_to_image(registry, text_job(registry, args.size, 28, False))
    save(
        "restart",
        {
            "cache_entries_before": before,
            "cache_entries_after": compile_cache.entries(folder),
            "preload": registry.startup.snapshot(),
            "process_to_ready_s": round(ready, 2),
            "first_request_timings_s": {k: round(v, 2) for k, v in result.timings.items()},
            "process_to_first_image_s": round(time.perf_counter() - t0, 2),
        },
    )


def restart_rows(args) -> None:
    """Cold, then warm: the same subprocess twice over one new cache folder; timed from its start."""
    with tempfile.TemporaryDirectory(prefix="compile-cache-") as folder:
        for kind in ("cold", "warm"):
            out = Path(args.scratch) / f"restart-{kind}.json"
            cmd = [sys.executable, __file__, "--phase", "restart", "--cache-dir", folder, "--out", str(out)]
            cmd += ["--size", str(args.size), "--scratch", args.scratch]
            if args.tiny:
                cmd += ["--tiny", "--tiny-dir", args.tiny_dir]
            start = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            wall = time.perf_counter() - start
            child = json.loads(out.read_text()).get("restart") if out.exists() else None
            row = {"wall_s_incl_python_start": round(wall, 2), "child": child, "returncode": done.returncode}
            if done.returncode:
                row["stderr_tail"] = done.stderr[-2000:]
            save(f"restart to first image, {kind} compile cache (weights built in memory, not read from disk)", row)


def main() -> None:
    global OUT_PATH
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="JSON results, rewritten after every row")
    p.add_argument("--phase", choices=["all", "main", "restart-rows", "restart"], default="all")
    p.add_argument("--tiny", action="store_true", help="CPU check with the tiny models (figures mean nothing)")
    p.add_argument("--tiny-dir", default="models/tiny", help="--tiny: where the tiny models are (written if missing)")
    p.add_argument("--size", type=int, default=None, help="image side in pixels (1024; 64 with --tiny)")
    p.add_argument("--cache-dir", help="restart phase: the compile cache folder")
    p.add_argument("--no-kontext", action="store_true", help="skip the Kontext rows")
    p.add_argument("--scratch", default=None, help="folder for outputs and the restart children's JSON")
    args = p.parse_args()
    args.size = args.size or (64 if args.tiny else 1024)
    args.scratch = args.scratch or tempfile.mkdtemp(prefix="bench-fast-")
    OUT_PATH = Path(args.out)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.phase == "restart":
        phase_restart(args)
        return
    if args.phase in ("all", "main"):
        phase_main(args)
    if args.phase in ("all", "restart-rows"):
        restart_rows(args)
    save("total_wall_s", round(elapsed(), 1))


if __name__ == "__main__":
    main()
