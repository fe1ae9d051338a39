"""GPU check of upscale / hires fix: a 1024x1024 image to 2048x2048 (4.2 MP) through the app's own task
(`flux_ui.tasks.upscale`: registry, spandrel, the image-to-image pass), with full-size random-weight models:
the FLUX.1 [dev] transformer, T5-XXL, CLIP-L and the VAE built from their configs on the GPU, and a
full-size ESRGAN (RRDBNet, 64 filters, 23 blocks, 4x: the architecture of 4x-UltraSharp) written as a
`.pth` file into a models folder and read by the app through spandrel.

Rows, each run twice (the first loads models; the second is the figure): the upscaler alone, Lanczos
alone, and the hires pass (ESRGAN + image to image at strength 0.3 of 28 steps) refined in 1024 px tiles
and in one whole-image pass. Time per phase and peak GPU memory (all of it, and above what was resident
before the run). Eager bf16 by default (`--profile`), so that tiled and untiled compare without compile
time. Writes its JSON after every row.

    python bench/upscale.py --out upscale.json          # one H200: about 3 minutes
    python bench/upscale.py --small --out small.json    # tiny models on the CPU, to check it runs

Needs, beside torch: diffusers 0.42.1, transformers, and spandrel 0.4.2 (pip install --no-deps: see
requirements-nodeps.txt; einops too).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

log = logging.getLogger("bench")
SOURCE, SCALE, STEPS, STRENGTH = 1024, 2.0, 28, 0.3
UPSCALER = "4x-random-ESRGAN"


def source_image(side: int) -> Image.Image:
    """A smooth gradient with a little noise: something for the upscaler and the VAE to work on."""
    y, x = np.mgrid[0:side, 0:side] / side
    rgb = np.stack([x, y, 0.5 + 0.5 * np.sin(6 * x + 4 * y)], axis=-1)
    rgb = rgb + np.random.default_rng(0).normal(0, 0.02, rgb.shape)
    return Image.fromarray((rgb.clip(0, 1) * 255).astype(np.uint8))


def write_esrgan(folder: Path, small: bool) -> None:
    """An ESRGAN `.pth` in ComfyUI's `upscale_models/` layout: full size, or tiny with --small."""
    from flux_ui.models.upscalers import spandrel

    spandrel()
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(7)
    size = {"num_filters": 8, "num_blocks": 1} if small else {"num_filters": 64, "num_blocks": 23}
    model = ESRGAN(in_nc=3, out_nc=3, scale=4, **size)
    (folder / "upscale_models").mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "upscale_models" / f"{UPSCALER}.pth")


def gpu_registry(models: Path, profile: str):
    import speed as speed_bench  # bench/speed.py: the full-size random-weight registry

    return speed_bench.random_registry(
        speed_bench.build_vae(), profile, max_megapixels=4.3, models_dirs=(models,), outputs_dir=models / "outputs"
    )


def small_registry(models: Path, tiny_dir: Path | None):
    from flux_ui.core.settings import Settings
    from flux_ui.models.registry import Registry
    from flux_ui.tiny.models import ensure_tiny_models

    tiny = ensure_tiny_models(tiny_dir or models / "tiny")
    return Registry(Settings(tiny=True, tiny_dir=tiny, model_root=tiny, models_dirs=(models,), preview_every=0))


def peak_gib(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.startswith("cuda") else None


def run_row(registry, name: str, image: Image.Image, runs: int, **fields) -> dict:
    from flux_ui.tasks.upscale import UpscaleParams, upscale, validate_upscale

    device = registry.settings.device
    job = validate_upscale(UpscaleParams(image, "a photo of a fox in a forest", seed=1, **fields), registry.settings)
    row: dict = {"row": name, "output": f"{job.width}x{job.height}", "upscaler": job.upscaler}
    row |= {"strength": job.strength, "steps_run": job.steps_run, "tiled": job.tiled}
    totals = []
    for i in range(runs):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            resident = torch.cuda.memory_allocated()
        start = time.perf_counter()
        result = upscale(registry, job)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        totals.append(time.perf_counter() - start)
        row[f"run{i + 1}_timings_s"] = {k: round(v, 3) for k, v in result.timings.items()}
        if device.startswith("cuda"):
            row[f"run{i + 1}_peak_gib"] = peak_gib(device)
            row[f"run{i + 1}_peak_above_resident_gib"] = round(
                (torch.cuda.max_memory_allocated() - resident) / 2**30, 2
            )
        row["tiles"] = result.images[0].meta.extra.get("Hires tiles", "")
        assert result.images[0].image.size == (job.width, job.height)  # noqa: S101 - a bench's sanity check
    row["last_s"] = round(totals[-1], 3)
    row["median_s"] = round(statistics.median(totals), 3)
    log.info("%s", json.dumps(row))
    return row


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--small", action="store_true", help="tiny models on the CPU, small sizes")
    p.add_argument("--profile", default="off", help="speed profile of the app (off, compile, fp8)")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--tiny-dir", type=Path, help="with --small: a folder of tiny models to reuse")
    a = p.parse_args()
    import flux_ui.tasks.upscale as task

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench-upscale-"))
    write_esrgan(work, a.small)
    if a.small:
        registry, side = small_registry(work, a.tiny_dir), 64
        task.TILE, task.TILE_OVERLAP = 64, 16  # tiles at the small size too
    else:
        registry, side = gpu_registry(work, a.profile), SOURCE
    image = source_image(side)
    out = {
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() and not a.small else "cpu",
        "date": str(date.today()),
        "torch": torch.__version__,
        "profile": registry.settings.speed,
        "source": f"{side}x{side}",
        "scale": SCALE,
        "rows": [],
    }
    rows = (
        ("upscaler alone (ESRGAN 4x, then Lanczos to 2x)", {"upscaler": UPSCALER, "strength": 0}),
        ("Lanczos alone", {"upscaler": "lanczos", "strength": 0}),
        ("hires: ESRGAN + refine in tiles", {"upscaler": UPSCALER, "strength": STRENGTH, "tiling": "on"}),
        ("hires: ESRGAN + refine untiled", {"upscaler": UPSCALER, "strength": STRENGTH, "tiling": "off"}),
    )
    steps = 4 if a.small else STEPS
    for name, fields in rows:
        try:
            row = run_row(registry, name, image, a.runs, scale=SCALE, steps=steps, **fields)
        except torch.OutOfMemoryError as err:  # the untiled pass may not fit a smaller GPU
            row = {"row": name, "error": f"out of memory: {str(err).splitlines()[0]}"}
            torch.cuda.empty_cache()
        out["rows"].append(row)
        out["elapsed_s"] = round(time.perf_counter() - started, 1)
        Path(a.out).write_text(json.dumps(out, indent=2))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
