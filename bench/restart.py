"""GPU benchmark of restart to first image with the weights on local disk: FLUX.1 [dev], T5-XXL, CLIP-L and
the VAE with full-size random weights, written once as a hub-layout folder, then read by fresh processes
that do what `app.py --preload` does (load, compile and warm the default variant) and then answer one
1024x1024, 28-step request. Each process is timed from before its Python starts to its first image.

Rows, each a new process (page cache dropped first where the system allows, so the disk is read):
  1. now, cold compile cache, --keep-float8 (writes the float8 transformer for row 2)
  2. now, warm compile cache, the kept float8 transformer: the issue's "restart with warm caches"
  3. as 2, page cache kept (a restart right after a stop: the files are still in memory)
  4. before: floats unspecialised while tracing (each block traced twice), no --keep-float8, cold cache
  5. before, warm cache

    python bench/restart.py --out restart.json [--work /data/restart]
    python bench/restart.py --out restart.json --tiny      # CPU check with the tiny models

Writes its JSON after every row.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench.model_files import drop_caches  # noqa: E402 (the repo root is on the path only now)

log = logging.getLogger("bench")
REPO = "black-forest-labs/FLUX.1-dev"
OUT: dict = {}
OUT_PATH: Path | None = None


def save(key: str, value) -> None:
    OUT[key] = value
    if OUT_PATH is not None:
        OUT_PATH.write_text(json.dumps(OUT, indent=2))
    log.info("%s: %s", key, json.dumps(value)[:600])


def write_repo(root: Path) -> dict:
    """[dev] with its encoders and VAE, random full-size weights built on the GPU, saved as the hub repo."""
    import speed as speed_bench  # bench/speed.py: the published architectures
    from diffusers import FluxPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from flux_ui.tiny.models import _clip_tokenizer, _t5_tokenizer

    start = time.perf_counter()
    with torch.device("cuda"):
        clip = CLIPTextModel(CLIPTextConfig(**speed_bench.CLIP_L)).to(torch.bfloat16)
        t5 = T5EncoderModel(T5Config(**speed_bench.T5_XXL)).to(torch.bfloat16)
    pipe = FluxPipeline(
        scheduler=speed_bench.scheduler(dynamic=True),
        vae=speed_bench.build_vae(),
        text_encoder=clip,
        tokenizer=_clip_tokenizer(),
        text_encoder_2=t5,
        tokenizer_2=_t5_tokenizer(),
        transformer=speed_bench.build_transformer(guidance=True),
    )
    built = time.perf_counter() - start
    pipe.save_pretrained(root / REPO, safe_serialization=True)
    subprocess.run(["sync"], check=False)
    size = sum(p.stat().st_size for p in (root / REPO).rglob("*") if p.is_file())
    del pipe, clip, t5
    torch.cuda.empty_cache()
    return {
        "build_s": round(built, 1),
        "write_s": round(time.perf_counter() - start - built, 1),
        "gb": round(size / 1e9, 1),
    }


def child(args) -> None:
    """One start: compile caches in --cache-dir, the app's registry over --work, the preload, one request."""
    t0 = time.perf_counter()
    from dataclasses import replace

    from flux_ui.core.settings import Settings, settings_from_args
    from flux_ui.models import compile_cache, speed
    from flux_ui.models.registry import Registry
    from flux_ui.tasks import preload
    from flux_ui.tasks.text_to_image import TextToImageParams, text_to_image, validate_text_to_image

    imported = time.perf_counter() - t0
    folder = compile_cache.use(Path(args.cache_dir))
    before = compile_cache.entries(folder)
    if args.before:  # the tracing as it was: floats left symbolic (see speed.optimize_transformer)
        optimize = speed.optimize_transformer

        def optimize_as_before(*a, **k):
            import torch._dynamo.config as dynamo_config

            model = optimize(*a, **k)
            dynamo_config.specialize_float = False
            return model

        speed.optimize_transformer = optimize_as_before
    if args.tiny:
        speed.FP8_MIN_FEATURES = 16  # the tiny layers count as large, as in the tests
        settings = Settings(tiny=True, tiny_dir=Path(args.work), memory_policy="fp8-24gb", speed="off")
        settings = replace(settings, model_root=Path(args.work), shared_repo=REPO, compile_cache=folder)
        settings = replace(settings, keep_float8=args.keep_float8, outputs_dir=Path(args.scratch), preview_every=0)
    else:  # the settings as `app.py` resolves them (device, dtype, memory policy, speed profile)
        flags = ["--model-root", args.work, "--shared-repo", REPO, "--compile-cache", str(folder)]
        flags += ["--outputs-dir", args.scratch, "--preview-every", "0"] + ["--keep-float8"] * args.keep_float8
        settings = settings_from_args(flags)
    registry = Registry(settings)
    preload.preload(registry, warm=True)
    ready = time.perf_counter() - t0
    side = 64 if args.tiny else 1024
    job = validate_text_to_image(TextToImageParams("a red fox in fresh snow", "dev", side, side, 28, seed=1), settings)
    result = text_to_image(registry, job)
    first = time.perf_counter() - t0
    for thread in registry.float8_writes:  # not part of the start: the next start needs the file
        thread.join()
    row = {
        "settings": {"device": settings.device, "speed": settings.speed, "policy": settings.memory_policy},
        "imports_s": round(imported, 2),
        "cache_entries_before": before,
        "cache_entries_after": compile_cache.entries(folder),
        "float8_kept": [p.name for p in (folder / "flux-ui-float8").glob("*.safetensors")],
        "preload": registry.startup.snapshot(),
        "to_ready_s": round(ready, 2),
        "first_request_s": {k: round(v, 2) for k, v in result.timings.items()},
        "to_first_image_s": round(first, 2),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if not args.tiny else None,
    }
    Path(args.out).write_text(json.dumps(row, indent=2))


def start(name: str, args, cache: str, *, keep: bool, before: bool, drop: bool) -> None:
    out = Path(args.scratch) / f"{name}.json"
    cmd = [sys.executable, __file__, "--phase", "child", "--out", str(out), "--work", args.work]
    cmd += ["--cache-dir", cache, "--scratch", args.scratch]
    cmd += ["--keep-float8"] * keep + ["--before"] * before + ["--tiny"] * args.tiny
    dropped = drop_caches() if drop else False
    begin = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.child_timeout)
    row = {"wall_s": round(time.perf_counter() - begin, 2), "page_cache_dropped": dropped, "rc": done.returncode}
    if out.exists():
        row |= json.loads(out.read_text())
    if done.returncode:
        row["stderr_tail"] = done.stderr[-3000:]
    save(name, row)


def main() -> None:
    global OUT_PATH
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--phase", choices=["all", "child"], default="all")
    p.add_argument("--work", default=None, help="where the model folder is written (about 34 GB)")
    p.add_argument("--scratch", default=None)
    p.add_argument("--cache-dir")
    p.add_argument("--keep-float8", action="store_true")
    p.add_argument("--before", action="store_true")
    p.add_argument("--tiny", action="store_true", help="CPU check over the tiny models (figures mean nothing)")
    p.add_argument("--child-timeout", type=int, default=220)
    p.add_argument("--rows", default="1,2,3,4,5", help="which of the rows to run (1-3 now, 4-5 before)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.phase == "child":
        child(args)
        return
    OUT_PATH = Path(args.out)
    args.scratch = args.scratch or tempfile.mkdtemp(prefix="bench-restart-")
    if args.tiny:
        from flux_ui.tiny.models import ensure_tiny_models

        args.work = str(ensure_tiny_models(Path(args.work or "models/tiny")))
    else:
        args.work = args.work or tempfile.mkdtemp(prefix="bench-restart-models-")
    save(
        "environment",
        {
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (tiny models)",
            "date": str(date.today()),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
        },
    )
    if not args.tiny:
        save("weights written", write_repo(Path(args.work)))
    now, before = (tempfile.mkdtemp(prefix=f"compile-cache-{k}-") for k in ("now", "before"))
    rows = {int(r) for r in args.rows.split(",")}
    for row, name, cache, keep, as_before, drop in (
        (1, "1 now: cold compile cache, --keep-float8 writes", now, True, False, True),
        (2, "2 now: warm compile cache, kept float8, page cache dropped", now, True, False, True),
        (3, "3 now: warm compile cache, kept float8, page cache kept", now, True, False, False),
        (4, "4 before: cold compile cache, bf16 folder", before, False, True, True),
        (5, "5 before: warm compile cache, bf16 folder", before, False, True, True),
    ):
        if row in rows:
            start(name, args, cache, keep=keep, before=as_before, drop=drop)
    for folder in (now, before):
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
