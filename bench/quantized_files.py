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
import ctypes
import gc
import json
import os
import shutil
import statistics
import sys
import threading
import time
import traceback
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

        # Memory freed before (the written file's tensors) stays in glibc's free lists, resident, and a load
        # that reuses it looked cheaper than it is: run 32's GGUF Q4_K row, after the Q8_0 one, added 7.7 GiB
        # for a 6.8 GB file, where the same reader in a fresh process added twice a Q4_K file's size. Hand it
        # back to the system first.
        gc.collect()
        if sys.platform == "linux":
            ctypes.CDLL("libc.so.6").malloc_trim(0)
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


def q4_k(t: torch.Tensor) -> torch.Tensor:
    """ggml's Q4_K super-blocks of a 2-D tensor (per 256 weights: float16 scale and min-scale, eight 6-bit
    scales and mins packed in 12 bytes, 256 4-bit values), on its device. The gguf package has no Q4_K
    quantizer (only its dequantizer, which `--tiny` checks this against); llama.cpp's searches each block's
    scale, this one takes each 32-weight sub-block's range, which costs the same per step."""
    rows, cols = t.shape
    x = t.float().reshape(rows, cols // 256, 8, 32)
    lo = x.amin(-1).clamp(max=0)  # a sub-block's offset is -min >= 0, as ggml's
    scale = (x.amax(-1) - lo) / 15
    d = scale.amax(-1, keepdim=True) / 63
    dmin = (-lo).amax(-1, keepdim=True) / 63
    d, dmin = d.half().float(), dmin.half().float()  # stored as float16: quantise against what is stored
    sc = torch.where(d > 0, (scale / d.clamp(min=1e-30)).round(), 0).clamp(0, 63)
    m = torch.where(dmin > 0, (-lo / dmin.clamp(min=1e-30)).round(), 0).clamp(0, 63)
    step = (d * sc).unsqueeze(-1)
    q = torch.where(step > 0, ((x + (dmin * m).unsqueeze(-1)) / step.clamp(min=1e-30)).round(), 0).clamp(0, 15)
    q = q.to(torch.uint8)  # (rows, blocks, 8, 32): sub-blocks 2c and 2c+1 share bytes (low, high nibble)
    qs = (q[:, :, 0::2] | (q[:, :, 1::2] << 4)).reshape(rows, cols // 256, 128)
    sc, m = sc.to(torch.uint8), m.to(torch.uint8)
    packed = torch.cat(
        [
            sc[..., :4] | ((sc[..., 4:] >> 4) << 6),
            m[..., :4] | ((m[..., 4:] >> 4) << 6),
            (sc[..., 4:] & 0x0F) | ((m[..., 4:] & 0x0F) << 4),
        ],
        dim=-1,
    )
    halves = torch.cat([d.half(), dmin.half()], dim=-1).view(torch.uint8)  # (rows, blocks, 4)
    return torch.cat([halves, packed, qs], dim=-1).reshape(rows, cols // 256 * 144)


def write_gguf(path: Path, bfl: dict[str, torch.Tensor], device: str, kind: str = "Q8_0") -> None:
    """city96's layout: BFL keys, the large 2-D weights quantised, the rest float16/float32."""
    import gguf

    from flux_ui.tiny.quantized_files import GGUF_KEEP

    qtype = getattr(gguf.GGMLQuantizationType, kind)
    quantize, block = {"Q8_0": (q8_0, 32), "Q4_K": (q4_k, 256)}[kind]
    writer = gguf.GGUFWriter(path=None, arch="flux")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(getattr(gguf.LlamaFileType, f"MOSTLY_{kind}" if kind == "Q8_0" else f"MOSTLY_{kind}_M"))
    for name, t in bfl.items():
        if t.ndim == 2 and not name.startswith(GGUF_KEEP) and t.shape[1] % block == 0:
            writer.add_tensor(name, quantize(t.to(device)).cpu().numpy(), raw_dtype=qtype)
        elif t.ndim == 2:
            writer.add_tensor(name, t.half().cpu().numpy(), raw_dtype=gguf.GGMLQuantizationType.F16)
        else:
            writer.add_tensor(name, t.float().cpu().numpy(), raw_dtype=gguf.GGMLQuantizationType.F32)
    writer.write_header_to_file(path=str(path))
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# Each format under the memory cap of the GPU class it is meant for (`set_per_process_memory_fraction`, so a
# row that runs here fits that card; the transformer alone: the text encoders come on top, offloaded or in
# float8 under the 24 and 12 GB policies). bf16 is the 40 GB class's (`resident`); None: no cap.
CAPS_GIB = {
    "folder": 40,
    "single": 40,
    "fp8": 24,
    "gguf": 16,
    "gguf-q4k": 12,
    "nf4": 12,
    "nf4-bf16": None,
    # The same files compiled: fp8 as the app's `fp8` speed profile does (regional torch.compile of its float8
    # layers); GGUF and NF4 are not compiled by the app (`speed.optimize_transformer`): these rows measure
    # whether they should be (fullgraph off, so a break in their dequantising layers falls back, not fails).
    "fp8-compiled": 24,
    "gguf-compiled": 16,
    "nf4-compiled": 12,
}


def cap(gib: float | None) -> None:
    if torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(1.0 if gib is None else min(1.0, gib * 2**30 / total))


def main() -> None:
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import save_file

    from flux_ui.core.settings import Settings
    from flux_ui.core.variants import get_variant
    from flux_ui.models import files, nf4_file, single_file, sources
    from flux_ui.models.layouts import diffusers_to_bfl
    from flux_ui.tiny.files import fp8_scaled
    from flux_ui.tiny.quantized_files import nf4_state

    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--work", default="/tmp/quantized-files")
    p.add_argument("--formats", default=",".join(CAPS_GIB))
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
    # In RAM, so that each row's GPU memory is its load's alone; each format is made tensor by tensor on the GPU.
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    del model
    if cuda:
        torch.cuda.empty_cache()
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

    outputs: dict[str, torch.Tensor] = {}  # each format's first step output, compared with the folder's

    def step_seconds(model, name: str, warm_only: bool = False) -> float:
        times = []
        for i in range(2 if warm_only else 7):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.inference_mode():
                sample = model(**inputs).sample
            if i == 0 and not warm_only:
                outputs[name] = sample.float().cpu()
            if cuda:
                torch.cuda.synchronize()
            if i >= 2:
                times.append(time.perf_counter() - start)
        return statistics.median(times) if times else 0.0

    def measure(key: str, name: str, path: Path, write_s: float, run_settings, load, keep: bool = False) -> None:
        if key not in formats:
            if not keep:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            return
        base = 0
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        row = {"format": name, "file_gb": round(_size(path) / 1e9, 2), "write_s": round(write_s, 1)}
        row["cap_gib"] = CAPS_GIB[key] if cuda else None
        row["page_cache_dropped"] = drop_caches() if cuda else False
        cap(row["cap_gib"])
        model = None
        try:
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
            if key.endswith("-compiled"):
                compile_blocks(model, key)
                start = time.perf_counter()
                step_seconds(model, key, warm_only=True)
                row["first_steps_with_compile_s"] = round(time.perf_counter() - start, 1)
            row["step_s"] = round(step_seconds(model, key), 4)
            row["image_transformer_s_28_steps"] = round(row["step_s"] * 28, 2)
            # The step's output against the folder's, NF4 unpacked against kept, compiled against eager.
            eager = key.removesuffix("-compiled") if key.endswith("-compiled") else "nf4" if key == "nf4-bf16" else None
            for ref in ("folder", eager):
                if ref in outputs and ref != key:
                    diff = outputs[key] - outputs[ref]
                    row[f"vs_{ref}_max_abs"] = round(diff.abs().max().item(), 5)
                    row[f"vs_{ref}_rel_rms"] = round((diff.norm() / outputs[ref].norm()).item(), 5)
        except torch.cuda.OutOfMemoryError as err:
            row["error"] = f"out of memory under the {row['cap_gib']} GiB cap: {str(err).splitlines()[0][:200]}"
        except Exception as err:  # noqa: BLE001 - the compiled rows are exploratory: say why, keep the rest
            if not key.endswith("-compiled"):
                raise
            row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
            row["where"] = traceback.format_exc()[-1200:]
        if cuda:
            row["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        del model
        if key.endswith("-compiled"):  # dynamo's caches hold the compiled model's weights until reset
            torch._dynamo.reset()
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        cap(None)
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

        def from_folder(s):  # the app's folder read: straight to the GPU under the 40 GB policy
            return FluxTransformer2DModel.from_pretrained(
                folder, subfolder="transformer", torch_dtype=s.dtype, **sources.direct_to(s)
            )

        measure("folder", "diffusers folder, bf16 eager", folder, time.perf_counter() - start, settings, from_folder)
    # The BFL layout, in RAM (converted on the device: on the CPU it takes minutes); every file below is made from it
    bfl = {k: v.cpu() for k, v in diffusers_to_bfl({k: v.to(device) for k, v in state.items()}).items()}
    del state
    if cuda:
        torch.cuda.empty_cache()
    file = lambda s, path: single_file.transformer(s, variant, str(path))  # noqa: E731
    if "single" in formats:
        path, start = work / "flux1-dev.safetensors", time.perf_counter()
        save_file({k: v.contiguous() for k, v in bfl.items()}, path)
        measure("single", "BFL single file, bf16 eager (ComfyUI's models/unet)", path, time.perf_counter() - start,
                settings, lambda s: file(s, path))  # fmt: skip

    def per_tensor(fn) -> dict[str, torch.Tensor]:
        return {k: v.cpu() for name, t in bfl.items() for k, v in fn({name: t.to(device)}).items()}

    if "fp8" in formats or "fp8-compiled" in formats:
        path, start = work / "flux1-dev-fp8-scaled.safetensors", time.perf_counter()
        save_file({k: v.contiguous() for k, v in per_tensor(fp8_scaled).items()}, path)
        fp8 = replace(settings, memory_policy="fp8-24gb") if cuda else replace(settings, speed="fp8")
        write_s = time.perf_counter() - start
        measure("fp8", "fp8-scaled file, float8 layers (fp8-24gb)", path, write_s, fp8, lambda s: file(s, path), True)
        measure("fp8-compiled", "fp8-scaled file, float8 layers, compiled (fp8 profile)", path, write_s, fp8,
                lambda s: file(s, path))  # fmt: skip
    if "gguf" in formats or "gguf-compiled" in formats:
        path, start = work / "flux1-dev-Q8_0.gguf", time.perf_counter()
        import gguf

        sample = bfl["double_blocks.0.img_attn.proj.weight"]  # the fast quantizer against the gguf package's
        reference = gguf.quants.quantize(sample.float().numpy(), gguf.GGMLQuantizationType.Q8_0)
        out["q8_0_equals_gguf_package"] = bool((q8_0(sample.to(device)).cpu().numpy() == reference).all())
        write_gguf(path, bfl, device)
        write_s = time.perf_counter() - start
        measure("gguf", "GGUF Q8_0 file, kept quantised", path, write_s, settings, lambda s: file(s, path), True)
        measure("gguf-compiled", "GGUF Q8_0 file, kept quantised, compiled", path, write_s, settings,
                lambda s: file(s, path))  # fmt: skip
    if "gguf-q4k" in formats:
        path, start = work / "flux1-dev-Q4_K_M.gguf", time.perf_counter()
        import gguf

        sample = bfl["double_blocks.0.img_attn.proj.weight"].float()  # this quantizer through gguf's dequantizer
        if sample.shape[1] % 256 == 0:
            packed = q4_k(sample.to(device)).cpu().numpy()
            back = torch.from_numpy(gguf.quants.dequantize(packed, gguf.GGMLQuantizationType.Q4_K))
            out["q4_k_rel_rms_error"] = round(((back - sample).norm() / sample.norm()).item(), 4)
        write_gguf(path, bfl, device, "Q4_K")
        measure("gguf-q4k", "GGUF Q4_K file, kept quantised", path, time.perf_counter() - start, settings,
                lambda s: file(s, path))  # fmt: skip
    nf4 = [f for f in ("nf4", "nf4-bf16", "nf4-compiled") if f in formats]
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
            name, load = {
                "nf4": ("NF4 file, kept in 4 bits", kept),
                "nf4-bf16": ("NF4 file, unpacked to bf16", unpacked),
                "nf4-compiled": ("NF4 file, kept in 4 bits, compiled", kept),
            }[f]
            measure(f, name, path, write_s, settings, load, keep=f != nf4[-1])


def compile_blocks(model, key: str) -> None:
    """The app's regional compile: through the `fp8` profile for the float8 file; directly (the profile
    leaves quantised files alone) for the others."""
    import torch._dynamo

    from flux_ui.models import speed

    torch._dynamo.reset()
    if key == "fp8-compiled":
        speed.optimize_transformer(model, "fp8")
    else:
        torch._dynamo.config.specialize_float = True
        model.compile_repeated_blocks(
            fullgraph=False, dynamic=True, **({} if torch.cuda.is_available() else {"backend": "aot_eager"})
        )


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
