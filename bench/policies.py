"""GPU check of the memory policies: one FLUX.1 [dev] 1024x1024 image (28 steps) per policy, each in a
process capped at its GPU class with `torch.cuda.set_per_process_memory_fraction`.

    python bench/policies.py --out policies.json

Each policy runs in a child process of its own (a cap cannot be lifted, and compiled graphs and pinned
buffers must not carry over). The child builds full-size random-weight models on the GPU (seconds), moves
them to CPU RAM, which is where `from_pretrained` leaves real weights, then sets the cap and serves the
image through the app's own registry and text-to-image task, so loading, quantising or offloading happen
under the cap exactly as on a card of that size; then two images with a rank-64 LoRA over every linear
layer of the blocks (the first reads and applies it). Writes JSON (policy, cap, s/image, peak VRAM, pass/fail)
and prints a table. Needs a CUDA GPU with 80 GB (or less: classes above the card's size are skipped) and
about 80 GB of RAM; takes 4-7 minutes on an H100.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

log = logging.getLogger("bench.policies")
GIB = 2**30
# (policy, GPU class it is for in GiB, seconds its child may take: model building, pinning, compiling,
# and two images; offloading streams 24 GB per step, so its images are the slow ones). The new layouts run
# first: `resident` is today's measured behaviour, the one to lose if the run is cut short.
CLASSES = (("fp8-24gb", 24, 210), ("offload-12gb", 12, 300), ("resident", 80, 210))


def _bench_speed():
    """bench/speed.py's model builders (full-size FLUX.1 architectures, random weights)."""
    spec = importlib.util.spec_from_file_location("bench_speed", Path(__file__).with_name("speed.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cpu_registry(policy: str, reason: str, lora_dir: Path | None = None):
    """The app's Registry whose loaders return full-size random-weight models in CPU RAM, as
    `from_pretrained` does; the policy lays them out from there."""
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from flux_ui.core import policies
    from flux_ui.core.settings import Settings
    from flux_ui.models.loading import SharedParts
    from flux_ui.models.registry import Registry
    from flux_ui.tiny.models import _clip_tokenizer, _t5_tokenizer

    bench = _bench_speed()
    # Built on the GPU (fast random init), then moved to RAM before the cap is set.
    transformer = bench.build_transformer().to("cpu")
    if lora_dir is not None:  # a rank-64 LoRA over every linear layer of the blocks, as it fits this model
        bench.write_lora(lora_dir / "style.safetensors", transformer)
    with torch.device("cuda"):
        clip = CLIPTextModel(CLIPTextConfig(**bench.CLIP_L)).to(torch.bfloat16).eval().requires_grad_(False)
        t5 = T5EncoderModel(T5Config(**bench.T5_XXL)).to(torch.bfloat16).eval().requires_grad_(False)
    clip, t5, vae = clip.to("cpu"), t5.to("cpu"), bench.build_vae().to("cpu")
    torch.cuda.empty_cache()

    class CpuLoadedRegistry(Registry):
        def _load_shared(self) -> SharedParts:
            return SharedParts(clip, _clip_tokenizer(), t5, _t5_tokenizer(), vae)

        def _load_transformer(self, variant):
            self.load_counts[f"transformer:{variant.name}"] += 1
            return transformer

        def _scheduler(self, variant):
            return bench.scheduler(True)

    profile = "off" if policy == "offload-12gb" else policies.resolve_profile("auto", "cuda")  # as the app does
    settings = Settings(
        device="cuda",
        dtype=torch.bfloat16,
        speed=profile,
        memory_policy=policy,
        policy_reason=reason,
        preview_every=0,
        transformer_cache=1,
        lora_dirs=() if lora_dir is None else (lora_dir,),
    )
    return CpuLoadedRegistry(settings)


def child(policy: str, cap_gib: int, out: Path) -> None:
    """One policy under a cap of `cap_gib`: load, one warm-up image, one timed image; writes a JSON row."""
    from flux_ui.tasks.text_to_image import TextToImageParams, text_to_image, validate_text_to_image

    total = torch.cuda.get_device_properties(0).total_memory
    row: dict = {"policy": policy, "cap_gib": cap_gib, "gpu_total_gib": round(total / GIB, 1), "pass": False}
    try:
        lora_dir = out.parent / f"loras-{policy}"
        lora_dir.mkdir(parents=True, exist_ok=True)
        registry = cpu_registry(policy, f"bench cap {cap_gib} GiB", lora_dir)
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib * GIB / total))
        torch.cuda.reset_peak_memory_stats()
        params = validate_text_to_image(
            TextToImageParams(prompt="a red fox in the snow", width=1024, height=1024, steps=28, seed=1),
            registry.settings,
        )
        start = time.perf_counter()
        first = text_to_image(registry, params)  # loading, quantising or offloading, compiling
        row["first_image_s"] = round(time.perf_counter() - start, 1)
        row["first_image_timings"] = {k: round(v, 2) for k, v in first.timings.items()}
        second = text_to_image(registry, params)
        row["s_per_image"] = round(second.timings["total"], 2)
        row["timings"] = {k: round(v, 2) for k, v in second.timings.items()}
        row["peak_vram_gib_without_lora"] = round(torch.cuda.max_memory_allocated() / GIB, 2)
        tagged = TextToImageParams(prompt="a red fox in the snow <lora:style:1>", width=1024, height=1024, steps=28)
        for i in range(2):  # the first reads and applies the LoRA, the second finds it applied
            lora = text_to_image(registry, validate_text_to_image(tagged, registry.settings, registry.loras))
            row[f"lora_image_{i + 1}_timings"] = {k: round(v, 2) for k, v in lora.timings.items()}
        row["peak_vram_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 2)
        row["speed_profile"] = registry.settings.speed
        row["status"] = {k: registry.status()[k] for k in ("shared", "transformers", "memory")}
        row["pass"] = row["peak_vram_gib"] <= cap_gib
    except torch.OutOfMemoryError as err:
        row["error"] = f"out of memory: {str(err)[:300]}"
        row["peak_vram_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 2)
    except Exception as err:  # noqa: BLE001 - any failure is this policy's result, recorded for the table
        log.exception("policy %s failed", policy)
        row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
    out.write_text(json.dumps(row, indent=2))


def table(rows: list[dict]) -> str:
    lines = [f"{'policy':<14}{'cap GiB':>8}{'s/image':>9}{'first s':>9}{'peak GiB':>10}  result"]
    for r in rows:
        result = "pass" if r.get("pass") else f"FAIL {r.get('error', '')[:60]}"
        lines.append(
            f"{r['policy']:<14}{r['cap_gib']:>8}{r.get('s_per_image', '-')!s:>9}"
            f"{r.get('first_image_s', '-')!s:>9}{r.get('peak_vram_gib', '-')!s:>10}  {result}"
        )
    return "\n".join(lines)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="policies.json", help="where the JSON results go")
    p.add_argument("--only", choices=[c[0] for c in CLASSES], help="run one policy")
    p.add_argument("--child", nargs=2, metavar=("POLICY", "CAP_GIB"), help=argparse.SUPPRESS)
    args = p.parse_args()
    out = Path(args.out)
    if args.child:
        child(args.child[0], int(args.child[1]), out)
        return
    total_gib = torch.cuda.get_device_properties(0).total_memory / GIB
    result = {"gpu": torch.cuda.get_device_name(0), "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__}
    rows = []
    # The 24 GiB run of docs/PERFORMANCE.md used expandable segments, so fragmentation does not count
    # against the cap; users of small cards should set it too (README).
    env = {**os.environ, "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    for policy, cap, limit in CLASSES:
        if args.only and policy != args.only:
            continue
        cap = min(cap, int(total_gib))  # the resident class on a card of less than 80 GiB: the card
        row_file = out.with_suffix(f".{policy}.json")
        cmd = [sys.executable, __file__, "--child", policy, str(cap), "--out", str(row_file)]
        start = time.perf_counter()
        try:
            subprocess.run(cmd, env=env, timeout=limit, check=False)
            row = json.loads(row_file.read_text())
        except subprocess.TimeoutExpired:
            row = {"policy": policy, "cap_gib": cap, "pass": False, "error": f"timed out after {limit} s"}
        except (OSError, json.JSONDecodeError) as err:
            row = {"policy": policy, "cap_gib": cap, "pass": False, "error": f"no result: {err}"}
        row["child_wall_s"] = round(time.perf_counter() - start, 1)
        rows.append(row)
        out.write_text(json.dumps({**result, "rows": rows}, indent=2))  # partial results survive a cut
    out.write_text(json.dumps({**result, "rows": rows}, indent=2))
    print(table(rows))


if __name__ == "__main__":
    main()
