"""GPU check of single-file loading: the full-size FLUX.1 [dev] transformer (random weights, built from the
shipped config) written as a diffusers folder, as BFL's single file (bf16) and as ComfyUI's scaled fp8
file, each read back through the app's own loaders from local disk with the page cache dropped first.

    python bench/model_files.py --out model_files.json [--work /tmp/model-files]

Checks, beside the times: the BFL file reads back bit-exact (the shipped config and diffusers' converter
at full size), the fp8 file within float8 rounding. The files are written and deleted one at a time (the
disk holds one 24 GB file at a time, beside the 12 GB fp8 one). Writes JSON as it goes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def drop_caches() -> bool:
    """Drop the page cache, so a read measures the disk; False where the system does not allow it."""
    subprocess.run(["sync"], check=False)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def timed_load(load) -> tuple[float, torch.nn.Module]:
    torch.cuda.synchronize()
    start = time.perf_counter()
    model = load().to("cuda")
    torch.cuda.synchronize()
    return time.perf_counter() - start, model


def main() -> None:
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import save_file

    from flux_ui.core.settings import Settings
    from flux_ui.core.variants import get_variant
    from flux_ui.models import single_file
    from flux_ui.models.layouts import diffusers_to_bfl
    from flux_ui.tiny.files import fp8_scaled

    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--work", default="/tmp/model-files")
    a = p.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    out: dict = {"gpu": torch.cuda.get_device_name(), "date": str(date.today()), "torch": torch.__version__}

    def save() -> None:
        Path(a.out).write_text(json.dumps(out, indent=2))

    settings = Settings(device="cuda", dtype=torch.bfloat16)
    variant = get_variant("dev")
    config = single_file.config_folder(settings, "dev") / "transformer"
    torch.manual_seed(0)
    start = time.perf_counter()
    with torch.device("cuda"):
        model = FluxTransformer2DModel.from_config(FluxTransformer2DModel.load_config(config)).to(torch.bfloat16)
    out["build_s"] = round(time.perf_counter() - start, 1)
    out["parameters_b"] = round(sum(p.numel() for p in model.parameters()) / 1e9, 3)
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    del model
    torch.cuda.empty_cache()
    save()

    # 1. diffusers folder, through from_pretrained (the app's folder path)
    folder = work / "folder"
    start = time.perf_counter()
    (folder / "transformer").mkdir(parents=True, exist_ok=True)
    shutil.copy(config / "config.json", folder / "transformer" / "config.json")
    save_file(state, folder / "transformer" / "diffusion_pytorch_model.safetensors")
    out["folder_write_s"] = round(time.perf_counter() - start, 1)
    out["page_cache_dropped"] = drop_caches()
    seconds, loaded = timed_load(
        lambda: FluxTransformer2DModel.from_pretrained(folder, subfolder="transformer", torch_dtype=torch.bfloat16)
    )
    out["folder_load_s"] = round(seconds, 1)
    del loaded
    shutil.rmtree(folder)
    torch.cuda.empty_cache()
    save()

    # 2. BFL single file (bf16), through the app's single-file loader
    bfl = diffusers_to_bfl(state)
    path = work / "flux1-dev.safetensors"
    save_file({k: v.contiguous() for k, v in bfl.items()}, path)
    del bfl
    drop_caches()
    seconds, loaded = timed_load(lambda: single_file.transformer(settings, variant, str(path)))
    out["bfl_file_load_s"] = round(seconds, 1)
    got = loaded.state_dict()
    out["bfl_file_exact"] = all(torch.equal(got[k].cpu(), v) for k, v in state.items())
    del loaded, got
    path.unlink()
    torch.cuda.empty_cache()
    save()

    # 3. ComfyUI's scaled fp8 file
    scaled = fp8_scaled(diffusers_to_bfl(state))
    path = work / "flux1-dev-fp8-scaled.safetensors"
    save_file({k: v.contiguous() for k, v in scaled.items()}, path)
    out["fp8_file_gb"] = round(path.stat().st_size / 1e9, 2)
    del scaled
    drop_caches()
    seconds, loaded = timed_load(lambda: single_file.transformer(settings, variant, str(path)))
    out["fp8_file_load_s"] = round(seconds, 1)
    got = loaded.state_dict()
    worst = 0.0
    for k, v in state.items():
        if v.ndim == 2:
            ref = v.float()
            err = ((got[k].float().cpu() - ref).abs() / (ref.abs() + ref.abs().max() * 2**-9)).max().item()
            worst = max(worst, err)
    out["fp8_worst_relative_error"] = round(worst, 4)
    path.unlink()
    save()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
