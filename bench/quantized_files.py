"""GPU check of the quantised transformer files: the full-size FLUX.1 [dev] transformer (random weights,
built from the shipped config) written as a diffusers folder (the baseline), as ComfyUI's scaled fp8 file,
as a GGUF Q8_0 file (city96's layout) and as Forge's NF4 file, each read back through the app's loader
from local disk (page cache dropped first) and run for a few denoising steps at 1024x1024, in one run.

    python bench/quantized_files.py --out quantized_files.json [--work /tmp/quantized-files] [--formats fp8,gguf]
    python bench/quantized_files.py --tiny --out /tmp/q.json     # the tiny model on the CPU: checks the script

Per row: file size, write and load seconds, host RAM added by the load (sampled), GPU memory the loaded
weights take and the peak, and seconds per step (median of 5 after 2 warm-up steps; x 28 for an image's
transformer time), in the settings each format is meant for: bf16 eager for the folder; the fp8-24gb policy
for the fp8 file (its float8 values go to the float8 layers as they are: the RAM row shows whether a bf16 copy
was made); GGUF kept quantised (each layer dequantised as it runs); NF4 kept in 4 bits (bitsandbytes'
Linear4bit on the file's packed weights, the app's path on CUDA) and, for comparison, unpacked to bf16 (the
app's CPU path).
Extra wheels: gguf, bitsandbytes. About 5 minutes on an H200 with all formats.
Goals (issue): GGUF Q8_0 within 1.4x and NF4 within 1.6x of bf16 eager per step; fp8 at the fp8 layers'
speed with no bf16 copy. Files are written and deleted one at a time; JSON is written after every row.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import threading
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.model_files import drop_caches  # noqa: E402 (the repo root is on the path only now)


class RamPeak:
    """The largest resident set size of this process while the block runs, less the size at its start."""

    def __enter__(self):
        import psutil

        self.proc, self.peak, self.done = psutil.Process(), 0, False
        self.base = self.proc.memory_info().rss
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.done:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.05)

    def __exit__(self, *exc):
        self.done = True
        self.thread.join()
        self.added_gib = round(max(self.peak - self.base, 0) / 2**30, 2)


def q8_0(t: torch.Tensor) -> torch.Tensor:
    """ggml's Q8_0 blocks of a 2-D tensor (per 32 weights: float16 scale, 32 int8), on its device: the gguf
    package's numpy quantizer takes about 20 minutes for 12 billion weights on one core."""
    rows, cols = t.shape
    blocks = t.float().reshape(rows, cols // 32, 32)
    d = blocks.abs().amax(-1, keepdim=True) / 127
    inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    v = blocks * inv
    q = (torch.sign(v) * torch.floor(v.abs() + 0.5)).to(torch.int8)  # ggml rounds half away from zero
    raw = torch.cat([d.half().view(torch.uint8), q.view(torch.uint8)], dim=-1)  # (rows, blocks, 34)
    return raw.reshape(rows, cols // 32 * 34)


def write_gguf(path: Path, bfl: dict[str, torch.Tensor], device: str) -> None:
    import gguf

    from flux_ui.tiny.quantized_files import GGUF_KEEP

    writer = gguf.GGUFWriter(path=None, arch="flux")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    for name, t in bfl.items():
        if t.ndim == 2 and not name.startswith(GGUF_KEEP) and t.shape[1] % 32 == 0:
            writer.add_tensor(name, q8_0(t.to(device)).cpu().numpy(), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        elif t.ndim == 2:
            writer.add_tensor(name, t.half().cpu().numpy(), raw_dtype=gguf.GGMLQuantizationType.F16)
        else:
            writer.add_tensor(name, t.float().cpu().numpy(), raw_dtype=gguf.GGMLQuantizationType.F32)
    writer.write_header_to_file(path=str(path))
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main() -> None:
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import save_file

    from flux_ui.core.settings import Settings
    from flux_ui.core.variants import get_variant
    from flux_ui.models import files, nf4_file, single_file
    from flux_ui.models.layouts import diffusers_to_bfl
    from flux_ui.tiny.files import fp8_scaled
    from flux_ui.tiny.quantized_files import nf4_state

    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--work", default="/tmp/quantized-files")
    p.add_argument("--formats", default="folder,fp8,gguf,nf4,nf4-bf16")
    p.add_argument("--tiny", action="store_true", help="the tiny model on the CPU (checks the script)")
    a = p.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available() and not a.tiny
    device = "cuda" if cuda else "cpu"
    out: dict = {
        "gpu": torch.cuda.get_device_name() if cuda else "cpu",
        "date": str(date.today()),
        "torch": torch.__version__,
        "rows": [],
    }

    def save() -> None:
        Path(a.out).write_text(json.dumps(out, indent=2))

    if a.tiny:
        from flux_ui.tiny.models import ensure_tiny_models

        tiny_dir = ensure_tiny_models(work / "tiny")
        settings = Settings(tiny=True, tiny_dir=tiny_dir, model_root=tiny_dir, device="cpu", dtype=torch.float32)
        side, text_tokens = 64, 16
    else:
        settings = Settings(device="cuda", dtype=torch.bfloat16)
        side, text_tokens = 1024, 512
    variant = get_variant("dev")
    config = single_file.config_folder(settings, "dev") / "transformer"
    torch.manual_seed(0)
    with torch.device(device):
        model = FluxTransformer2DModel.from_config(FluxTransformer2DModel.load_config(config)).to(settings.dtype)
    state = model.state_dict()  # on the device: the files are made there
    del model
    cfg = FluxTransformer2DModel.load_config(config)
    tokens = (side // 16) ** 2
    inputs = {
        "hidden_states": torch.randn(1, tokens, cfg["in_channels"], device=device, dtype=settings.dtype),
        "encoder_hidden_states": torch.randn(
            1, text_tokens, cfg["joint_attention_dim"], device=device, dtype=settings.dtype
        ),
        "pooled_projections": torch.randn(1, cfg["pooled_projection_dim"], device=device, dtype=settings.dtype),
        "timestep": torch.tensor([0.5], device=device, dtype=settings.dtype),
        "img_ids": torch.zeros(tokens, 3, device=device),
        "txt_ids": torch.zeros(text_tokens, 3, device=device),
        "guidance": torch.tensor([3.5], device=device, dtype=settings.dtype),
    }

    def step_seconds(model) -> float:
        times = []
        for i in range(7):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.inference_mode():
                model(**inputs)
            if cuda:
                torch.cuda.synchronize()
            if i >= 2:
                times.append(time.perf_counter() - start)
        return statistics.median(times)

    def measure(name: str, path: Path, write_s: float, run_settings, load, keep: bool = False) -> None:
        base = 0
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        row = {"format": name, "file_gb": round(_size(path) / 1e9, 2), "write_s": round(write_s, 1)}
        row["page_cache_dropped"] = drop_caches() if cuda else False
        start = time.perf_counter()
        with RamPeak() as ram:
            model = load(run_settings)
            model.to(device)
        if cuda:
            torch.cuda.synchronize()
        row["load_s"] = round(time.perf_counter() - start, 1)
        row["ram_added_gib"] = ram.added_gib
        if cuda:
            row["gpu_weights_gib"] = round((torch.cuda.memory_allocated() - base) / 2**30, 2)
        row["step_s"] = round(step_seconds(model), 4)
        row["image_transformer_s_28_steps"] = round(row["step_s"] * 28, 2)
        if cuda:
            row["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        del model
        out["rows"].append(row)
        save()
        print(json.dumps(row), flush=True)
        if not keep:
            shutil.rmtree(path) if path.is_dir() else path.unlink()

    formats = a.formats.split(",")
    if "folder" in formats:
        folder, start = work / "folder", time.perf_counter()
        (folder / "transformer").mkdir(parents=True, exist_ok=True)
        shutil.copy(config / "config.json", folder / "transformer" / "config.json")
        save_file(
            {k: v.cpu() for k, v in state.items()}, folder / "transformer" / "diffusion_pytorch_model.safetensors"
        )

        def from_folder(s):
            return FluxTransformer2DModel.from_pretrained(folder, subfolder="transformer", torch_dtype=s.dtype)

        measure("diffusers folder, bf16 eager", folder, time.perf_counter() - start, settings, from_folder)
    # The BFL layout in RAM (so the GPU peaks below are the loads' alone); each format is made from it
    # tensor by tensor on the device.
    bfl = {k: v.cpu() for k, v in diffusers_to_bfl(state).items()}
    del state
    if cuda:
        torch.cuda.empty_cache()

    def per_tensor(fn) -> dict[str, torch.Tensor]:
        return {k: v.cpu() for name, t in bfl.items() for k, v in fn({name: t.to(device)}).items()}

    file = lambda s, path: single_file.transformer(s, variant, str(path))  # noqa: E731
    if "fp8" in formats:
        path, start = work / "flux1-dev-fp8-scaled.safetensors", time.perf_counter()
        save_file({k: v.contiguous() for k, v in per_tensor(fp8_scaled).items()}, path)
        fp8 = replace(settings, memory_policy="fp8-24gb") if cuda else replace(settings, speed="fp8")
        measure("fp8-scaled file, float8 layers (fp8-24gb)", path, time.perf_counter() - start, fp8,
                lambda s: file(s, path))  # fmt: skip
    if "gguf" in formats:
        path, start = work / "flux1-dev-Q8_0.gguf", time.perf_counter()
        import gguf

        sample = bfl["double_blocks.0.img_attn.proj.weight"]  # the fast quantizer against the gguf package's
        reference = gguf.quants.quantize(sample.float().numpy(), gguf.GGMLQuantizationType.Q8_0)
        out["q8_0_equals_gguf_package"] = bool((q8_0(sample.to(device)).cpu().numpy() == reference).all())
        write_gguf(path, bfl, device)
        measure("GGUF Q8_0 file, kept quantised", path, time.perf_counter() - start, settings, lambda s: file(s, path))
    nf4 = [f for f in ("nf4", "nf4-bf16") if f in formats]
    if nf4:
        path, start = work / "flux1-dev-bnb-nf4-v2.safetensors", time.perf_counter()
        save_file({k: v.contiguous() for k, v in per_tensor(nf4_state).items()}, path)
        write_s = time.perf_counter() - start
        found = files.identify(path)
        assert not cuda or nf4_file.wanted(settings, found)  # the app keeps it in 4 bits on this GPU

        def kept(s):  # called directly so that --tiny runs it on the CPU too
            return nf4_file.transformer(path, found, single_file.config_folder(s, "dev"), s.dtype)

        def unpacked(s):  # the app's CPU path: "cpu" only steers the loader, the model then goes to the GPU
            return file(replace(s, device="cpu"), path)

        for f in nf4:
            name, load = ("NF4 file, kept in 4 bits", kept) if f == "nf4" else ("NF4 file, unpacked to bf16", unpacked)
            measure(name, path, write_s, settings, load, keep=f != nf4[-1])


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
