"""GPU check of the tiled VAE: the full-size FLUX VAE (random weights, from the shipped config) decoding
1024x1024, 2048x2048 and 2896x2896 (8.4 MP) latents untiled and with diffusers' tiling, in bf16: median
time of 3, peak GPU memory, and the tiled image's difference from the untiled one.

    python bench/vae_tiling.py --out vae_tiling.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from diffusers import AutoencoderKL

    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    a = p.parse_args()
    config = ROOT / "assets/configs/black-forest-labs/FLUX.1-schnell/vae"
    torch.manual_seed(0)
    with torch.device("cuda"):
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config)).to(torch.bfloat16).eval()
    out = {"gpu": torch.cuda.get_device_name(), "date": str(date.today()), "torch": torch.__version__, "rows": []}
    for side in (1024, 2048, 2896):
        latent = torch.randn(1, 16, side // 8, side // 8, device="cuda", dtype=torch.bfloat16)
        row: dict = {"size": f"{side}x{side}", "megapixels": round(side * side / 1e6, 2)}
        images = {}
        for tiled in (False, True):
            vae.enable_tiling() if tiled else vae.disable_tiling()
            times = []
            for _ in range(3):
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                torch.cuda.synchronize()
                start = time.perf_counter()
                with torch.inference_mode():
                    image = vae.decode(latent).sample
                torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            key = "tiled" if tiled else "untiled"
            row[f"{key}_s"] = round(statistics.median(times), 3)
            row[f"{key}_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            images[key] = image.float().clamp(-1, 1)
            del image
        diff = (images["tiled"] - images["untiled"]).abs() * 127.5  # in 0-255 steps
        row["mean_diff_255"] = round(diff.mean().item(), 2)
        row["max_diff_255"] = round(diff.max().item(), 1)
        out["rows"].append(row)
        Path(a.out).write_text(json.dumps(out, indent=2))
        print(json.dumps(row))
        del images, diff, latent


if __name__ == "__main__":
    main()
