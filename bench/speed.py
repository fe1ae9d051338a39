"""GPU benchmark: FLUX.1 [dev] at 1024x1024, 28 steps, full-size architectures with random weights.

Times, in one process, plain diffusers (the baseline) and each optimisation of `flux_ui.models.speed` added in
turn, then the app's own path (registry + text-to-image task) with the default profile; reports per-image
medians, seconds per step, peak VRAM, compile time, the optimised transformer's relative error against the
bf16 reference and the PSNR between full pipeline outputs. Random weights cost exactly the arithmetic of
trained ones; error figures on them show numerical drift, not image quality.

    python bench/speed.py --phase main --out results.json      # rows, errors, app path
    python bench/speed.py --phase restart --out restart.json   # a restarted process, warm compile cache
    python bench/speed.py --phase extra --out extra.json       # resolutions, Kontext, schnell, 24 GB cap
    python bench/speed.py --phase switch --out switch.json     # variant switching through the registry
    python bench/speed.py --phase lora-fast --out lf.json      # LoRAs merged into the fp8 profile's weights

Needs a CUDA GPU with about 40 GB free (the 24 GB row caps itself).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flux_ui.core import policies  # noqa: E402
from flux_ui.models import speed  # noqa: E402

log = logging.getLogger("bench")
STEPS, SIZE, RUNS = 28, 1024, 3
DEV = "cuda"
T5_TOKENS, T5_DIM, CLIP_DIM = 512, 4096, 768
# The text encoders' published architectures (random weights here).
T5_XXL = {
    "d_model": 4096,
    "d_ff": 10240,
    "d_kv": 64,
    "num_heads": 64,
    "num_layers": 24,
    "feed_forward_proj": "gated-gelu",
}
CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "projection_dim": 768}


PARTIAL: dict = {}  # results so far, written after every row so a run cut short still reports
OUT_PATH: Path | None = None


def checkpoint(key: str, value) -> None:
    PARTIAL[key] = value
    if OUT_PATH is not None:
        OUT_PATH.write_text(json.dumps(PARTIAL, indent=2))


def sync_time() -> float:
    torch.cuda.synchronize()
    return time.perf_counter()


def build_transformer(guidance: bool = True, seed: int = 0):
    """The FLUX.1 [dev] transformer (schnell: no guidance embedder), random bf16 weights, built on the GPU."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    with torch.device(DEV):
        prev = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            model = FluxTransformer2DModel(guidance_embeds=guidance)
        finally:
            torch.set_default_dtype(prev)
    return model.eval().requires_grad_(False)


def build_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(1)
    with torch.device(DEV):
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=16,
            scaling_factor=0.3611,
            shift_factor=0.1159,
            use_quant_conv=False,
            use_post_quant_conv=False,
        )
    return vae.to(torch.bfloat16).eval().requires_grad_(False)


def scheduler(dynamic: bool = True):
    from diffusers import FlowMatchEulerDiscreteScheduler

    if dynamic:
        return FlowMatchEulerDiscreteScheduler(
            base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15, use_dynamic_shifting=True
        )
    return FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)


def embeds(seed: int = 2):
    g = torch.Generator(DEV).manual_seed(seed)
    prompt = torch.randn(1, T5_TOKENS, T5_DIM, generator=g, device=DEV, dtype=torch.bfloat16)
    pooled = torch.randn(1, CLIP_DIM, generator=g, device=DEV, dtype=torch.bfloat16)
    return prompt, pooled


def pipeline(transformer, vae, cls_name: str = "FluxPipeline", dynamic: bool = True):
    import diffusers

    cls = getattr(diffusers, cls_name)
    pipe = cls(
        scheduler=scheduler(dynamic),
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, steps=STEPS, width=SIZE, height=SIZE, seed=0, guidance=3.5, **kw):
    prompt, pooled = embeds()
    step_times: list[float] = []

    def on_step(p, i, t, kwargs):
        step_times.append(sync_time())
        return {}

    start = sync_time()
    with torch.inference_mode():
        out = pipe(
            prompt_embeds=prompt,
            pooled_prompt_embeds=pooled,
            width=width,
            height=height,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=torch.Generator("cpu").manual_seed(seed),
            callback_on_step_end=on_step,
            output_type="np",
            **kw,
        )
    end = sync_time()
    per_step = statistics.median(np.diff([start, *step_times]).tolist())
    return out.images[0], end - start, per_step


def time_config(name: str, pipe, runs: int = RUNS, **kw) -> dict:
    torch.cuda.reset_peak_memory_stats()
    first_start = time.perf_counter()
    image, first, _ = generate(pipe, **kw)
    totals, steps = [], []
    for _ in range(runs):
        image, total, per_step = generate(pipe, **kw)
        totals.append(total)
        steps.append(per_step)
    row = {
        "config": name,
        "first_image_s": round(first, 2),
        "compile_s_approx": round(first - statistics.median(totals), 1),
        "median_s": round(statistics.median(totals), 3),
        "runs_s": [round(t, 3) for t in totals],
        "s_per_step": round(statistics.median(steps), 4),
        "peak_vram_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "wall_s": round(time.perf_counter() - first_start, 1),
    }
    log.info("%s", row)
    checkpoint(f"row: {name}", row)
    return row, image


def transformer_output(transformer, seed: int = 5) -> torch.Tensor:
    """One forward pass of the transformer on fixed random inputs (a 1024x1024 latent, 512 T5 tokens)."""
    g = torch.Generator(DEV).manual_seed(seed)
    tokens = (SIZE // 16) ** 2
    hidden = torch.randn(1, tokens, 64, generator=g, device=DEV, dtype=torch.bfloat16)
    prompt, pooled = embeds(seed)
    ids = torch.zeros(tokens, 3, device=DEV)
    ids[:, 1] = torch.arange(SIZE // 16, device=DEV).repeat_interleave(SIZE // 16)
    ids[:, 2] = torch.arange(SIZE // 16, device=DEV).repeat(SIZE // 16)
    with torch.inference_mode():
        out = transformer(
            hidden_states=hidden,
            encoder_hidden_states=prompt,
            pooled_projections=pooled,
            timestep=torch.tensor([0.5], device=DEV, dtype=torch.bfloat16),
            img_ids=ids,
            txt_ids=torch.zeros(T5_TOKENS, 3, device=DEV),
            guidance=torch.tensor([3.5], device=DEV, dtype=torch.bfloat16),
            return_dict=False,
        )[0]
    return out.float()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def free() -> None:
    """Release compiled graphs (they hold their models) and cached GPU memory; callers `del` first."""
    torch._dynamo.reset()
    gc.collect()
    torch.cuda.empty_cache()


def phase_main(args) -> dict:
    rows, images = [], {}
    vae = build_vae()

    tr = build_transformer()
    ref_out = transformer_output(tr)
    row, images["eager"] = time_config("diffusers FluxPipeline, eager (baseline)", pipeline(tr, vae))
    rows.append(row)

    tr.fuse_qkv_projections()  # measured, not used by the profiles (see flux_ui.models.speed)
    vae_fast = build_vae()
    speed.optimize_vae(vae_fast, "compile")
    row, _ = time_config("+ fused QKV, channels-last VAE (eager)", pipeline(tr, vae_fast))
    rows.append(row)
    tr.set_attention_backend("_native_cudnn")
    row, _ = time_config("+ cuDNN attention backend (eager; not used by the profiles)", pipeline(tr, vae_fast))
    rows.append(row)
    fused_err = rel_err(transformer_output(tr), ref_out)
    del tr
    free()

    tr = build_transformer()
    speed.optimize_transformer(tr, "compile")
    row, images["compile"] = time_config("+ regional torch.compile (profile 'compile', bf16)", pipeline(tr, vae_fast))
    rows.append(row)
    compile_err = rel_err(transformer_output(tr), ref_out)
    del tr
    free()

    tr = build_transformer()
    speed.optimize_transformer(tr, "fp8")
    row, images["fp8"] = time_config("+ float8 row-wise linear layers (profile 'fp8')", pipeline(tr, vae_fast))
    rows.append(row)
    fp8_err = rel_err(transformer_output(tr), ref_out)
    del tr
    free()

    errors = {
        "transformer_rel_err_fused_vs_bf16": round(fused_err, 5),
        "transformer_rel_err_compile_vs_bf16": round(compile_err, 5),
        "transformer_rel_err_fp8_vs_bf16": round(fp8_err, 5),
        "psnr_db_compile_vs_eager": round(psnr(images["compile"], images["eager"]), 2),
        "psnr_db_fp8_vs_eager": round(psnr(images["fp8"], images["eager"]), 2),
    }
    log.info("%s", errors)
    checkpoint("errors", errors)
    rows.append(app_path_row(vae_fast))
    return {"rows": rows, "errors": errors}


def random_registry(vae, profile: str, cache: int = 2, lora_dirs: tuple[Path, ...] = (), **settings_fields):
    """The app's Registry with full-size random-weight models built from configs instead of read from disk
    (the only difference from `python app.py`); placement, speed profile and pipelines are the app's.
    `settings_fields` set further Settings fields (max_megapixels, models_dirs...)."""
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from flux_ui.core.settings import Settings
    from flux_ui.models.loading import SharedParts
    from flux_ui.models.registry import Registry
    from flux_ui.tiny.models import _clip_tokenizer, _t5_tokenizer

    class RandomWeightRegistry(Registry):
        def _load_shared(self) -> SharedParts:
            with torch.device(DEV):
                clip = CLIPTextModel(CLIPTextConfig(**CLIP_L)).to(torch.bfloat16)
                t5 = T5EncoderModel(T5Config(**T5_XXL)).to(torch.bfloat16)
            return SharedParts(clip, _clip_tokenizer(), t5, _t5_tokenizer(), vae)

        def _load_transformer(self, variant):
            self.load_counts[f"transformer:{variant.name}"] += 1
            return build_transformer(guidance=variant.uses_guidance)

        def _scheduler(self, variant):
            return scheduler(variant.name != "schnell")

    settings = Settings(
        device=DEV,
        dtype=torch.bfloat16,
        speed=profile,
        preview_every=0,
        transformer_cache=cache,
        lora_dirs=lora_dirs,
        **settings_fields,
    )
    return RandomWeightRegistry(settings)


def app_path_row(vae) -> dict:
    """The app's own path: Registry (default speed profile) + tasks.text_to_image."""
    from flux_ui.tasks.text_to_image import TextToImageParams, text_to_image, validate_text_to_image

    registry = random_registry(vae, policies.resolve_profile("auto", DEV))
    settings = registry.settings
    params = validate_text_to_image(
        TextToImageParams(prompt="a red fox in the snow", width=SIZE, height=SIZE, steps=STEPS, seed=1), settings
    )
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    first = text_to_image(registry, params)
    first_s = time.perf_counter() - start
    totals, gens = [], []
    for _ in range(RUNS):
        r = text_to_image(registry, params)
        totals.append(r.timings["total"])
        gens.append(r.timings["generate"])
    row = {
        "config": f"app path: registry + text_to_image task (profile '{settings.speed}')",
        "first_image_s": round(first_s, 2),
        "first_image_timings": {k: round(v, 2) for k, v in first.timings.items()},
        "median_s": round(statistics.median(totals), 3),
        "median_generate_s": round(statistics.median(gens), 3),
        "runs_s": [round(t, 3) for t in totals],
        "peak_vram_gib_with_text_encoders": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }
    log.info("%s", row)
    del registry, first, r
    free()
    return row


def phase_restart(args) -> dict:
    """A fresh process with the inductor cache warm: time from weights in memory to the first fast image."""
    vae = build_vae()
    speed.optimize_vae(vae, "compile")
    tr = build_transformer()
    t0 = time.perf_counter()
    speed.optimize_transformer(tr, "fp8")
    pipe = pipeline(tr, vae)
    _, first, _ = generate(pipe)
    t_first = time.perf_counter() - t0
    _, second, per_step = generate(pipe)
    return {
        "restart_weights_in_memory_to_first_image_s": round(t_first, 2),
        "first_image_s": round(first, 2),
        "second_image_s": round(second, 3),
        "s_per_step": round(per_step, 4),
    }


def phase_extra(args) -> dict:
    out = {}
    vae = build_vae()
    speed.optimize_vae(vae, "compile")
    tr = build_transformer()
    speed.optimize_transformer(tr, "fp8")
    pipe = pipeline(tr, vae)
    generate(pipe)  # warm at 1024x1024
    res = []
    for w, h in ((1216, 832), (1344, 768), (832, 1216), (1152, 896), (1024, 1024)):
        _, first, _ = generate(pipe, width=w, height=h)
        _, again, _ = generate(pipe, width=w, height=h)
        res.append({"size": f"{w}x{h}", "first_s": round(first, 2), "again_s": round(again, 3)})
        log.info("%s", res[-1])
    out["resolutions_fp8"] = res

    from PIL import Image

    kontext = pipeline(tr, vae, "FluxKontextPipeline")
    source = Image.fromarray((np.random.default_rng(0).random((SIZE, SIZE, 3)) * 255).astype(np.uint8))
    row, _ = time_config("Kontext [dev] edit 1024x1024, 28 steps, fp8", kontext, image=source, guidance=2.5)
    out["kontext_fp8"] = row
    del pipe, kontext, tr
    free()

    tr = build_transformer(guidance=False)
    speed.optimize_transformer(tr, "fp8")
    row, _ = time_config("[schnell] 1024x1024, 4 steps, fp8", pipeline(tr, vae, dynamic=False), steps=4, guidance=0.0)
    out["schnell_fp8"] = row
    del tr
    free()
    return out


def phase_24gb(args) -> dict:
    """The 24 GB configuration: the process may use 24 GiB of the GPU; fp8 transformer, fp8 T5."""
    from transformers import T5Config, T5EncoderModel

    vae = build_vae()
    speed.optimize_vae(vae, "compile")
    with torch.device(DEV):
        t5 = T5EncoderModel(T5Config(**T5_XXL)).to(torch.bfloat16)
    speed.quantize_fp8(t5)
    tr = build_transformer()
    speed.optimize_transformer(tr, "fp8")
    t5_gib = sum(p.numel() * p.element_size() for p in t5.parameters()) / 2**30
    # The cap is set once the models are built and quantised: building in bf16 first needs more than
    # 24 GiB for a moment, which a 24 GB card avoids by quantising while loading.
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(24 * 2**30 / torch.cuda.get_device_properties(0).total_memory)
    torch.cuda.reset_peak_memory_stats()
    row, _ = time_config("24 GiB cap: fp8 transformer + fp8 T5 resident", pipeline(tr, vae))
    ids = torch.randint(0, 32000, (1, T5_TOKENS), device=DEV)
    start = sync_time()
    with torch.inference_mode():
        t5(ids)
    row["t5_encode_s"] = round(sync_time() - start, 3)
    row["t5_weights_gib_reported"] = round(t5_gib, 2)
    row["peak_vram_gib_total"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return row


def phase_dynamic(args) -> dict:
    """Regional compile with static-first shapes (dynamic=None) vs dynamic shapes from the start."""
    out = {}
    vae = build_vae()
    speed.optimize_vae(vae, "compile")
    for dynamic in (None, True):
        tr = build_transformer()
        speed.optimize_transformer(tr, "fp8", dynamic=dynamic)
        pipe = pipeline(tr, vae)
        sizes = []
        for w, h in ((1024, 1024), (1216, 832), (1344, 768)):
            _, first, _ = generate(pipe, width=w, height=h)
            _, again, per_step = generate(pipe, width=w, height=h)
            sizes.append({"size": f"{w}x{h}", "first_s": round(first, 2), "again_s": round(again, 3)})
            sizes[-1]["s_per_step"] = round(per_step, 4)
        out[f"dynamic={dynamic}"] = sizes
        log.info("dynamic=%s %s", dynamic, sizes)
        checkpoint(f"dynamic={dynamic}", sizes)
        del pipe, tr
        free()
    return out


def write_lora(path: Path, transformer, rank: int = 64, seed: int = 0, factor: float = 0.01) -> int:
    """A rank-`rank` LoRA in diffusers/PEFT layout over every linear layer of the transformer blocks
    (attention, feed-forward, single-block projections), random values; returns its size in bytes."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in transformer.named_modules():
        linear = isinstance(module, torch.nn.Linear | speed.Float8RowwiseLinear)
        if not linear or "transformer_blocks" not in name or ".norm" in name:
            continue
        a = torch.randn(rank, module.in_features, generator=g) * factor
        b = torch.randn(module.out_features, rank, generator=g) * factor
        tensors[f"transformer.{name}.lora_A.weight"] = a.to(torch.bfloat16)
        tensors[f"transformer.{name}.lora_B.weight"] = b.to(torch.bfloat16)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path.stat().st_size


def phase_lora(args) -> dict:
    """LoRA costs through the registry (bf16 [dev], no compile): loading a new rank-64 file, activating
    an already-loaded set, changing weights, switching LoRAs off."""
    folder = Path(args.scratch) / "loras"
    folder.mkdir(parents=True, exist_ok=True)  # the library looks for its folders when it is made
    vae = build_vae()
    registry = random_registry(vae, "off", lora_dirs=(folder,))
    registry.shared()
    tr = registry.transformer("dev")
    sizes = {n: write_lora(folder / f"{n}.safetensors", tr, seed=i) for i, n in enumerate(("style_a", "style_b"))}
    registry.loras.refresh()
    steps = []

    def timed(label: str, loras) -> None:
        start = sync_time()
        with registry.pipeline("dev", loras=loras):
            pass
        steps.append({"step": label, "s": round(sync_time() - start, 3)})
        log.info("%s", steps[-1])

    timed("no LoRA (baseline pipeline assembly)", ())
    timed("load new rank-64 LoRA style_a", (("style_a", 1.0),))
    timed("same LoRA, other weight", (("style_a", 0.6),))
    timed("load new rank-64 LoRA style_b", (("style_b", 1.0),))
    timed("activate loaded set style_a + style_b", (("style_a", 0.8), ("style_b", 0.5)))
    timed("all LoRAs off", ())
    timed("activate loaded set again", (("style_a", 0.8), ("style_b", 0.5)))
    reads = {k: v for k, v in registry.load_counts.items() if k.startswith("lora")}
    return {"lora_file_bytes": sizes, "steps": steps, "file_reads": reads}


def lora_effect(args) -> dict:
    """Quality of LoRAs merged into float8 weights: one transformer forward with a rank-64 LoRA merged
    into bf16 weights (the reference) and into the fp8 profile's float8 weights, as the app merges
    (stochastic rounding where rounding to nearest would drop the change) and by rounding to nearest;
    a strong LoRA (factors ~0.01, its change of the weights ~8 % of theirs) and a weak one (~0.8 %)."""
    from safetensors.torch import load_file

    from flux_ui.models.loras import merge as lora_merge

    tr = build_transformer()
    loras = {}
    for label, factor in (("strong", 0.01), ("weak", 0.0033)):
        path = Path(args.scratch) / "loras" / f"effect-{label}.safetensors"
        write_lora(path, tr, seed=7, factor=factor)
        loras[label] = [(lora_merge.parse(load_file(str(path)), None, None), 1.0)]

    def with_lora(label: str) -> torch.Tensor:
        merged = lora_merge.merge(tr, loras[label], 1)
        try:
            return transformer_output(tr)
        finally:
            lora_merge.restore(tr, merged)

    ref_base = transformer_output(tr)
    ref = {label: with_lora(label) for label in loras}
    speed.quantize_fp8(tr)
    fp8_base = transformer_output(tr)
    fp8 = {label: with_lora(label) for label in loras}
    stochastic = lora_merge.onto_fp8_grid_
    lora_merge.onto_fp8_grid_ = lambda x, generator: x.clamp_(-speed.FP8_MAX, speed.FP8_MAX)  # to nearest
    try:
        nearest = {label: with_lora(label) for label in loras}
    finally:
        lora_merge.onto_fp8_grid_ = stochastic

    def kept(label: str, out: torch.Tensor) -> dict:
        effect, change = (ref[label] - ref_base).flatten(), (out - fp8_base).flatten()
        return {
            "rel_err_vs_bf16_with_lora": round(rel_err(out, ref[label]), 4),
            "lora_effect_cosine": round(float(torch.nn.functional.cosine_similarity(change, effect, dim=0)), 4),
            "lora_effect_norm_ratio": round(float(change.norm() / effect.norm()), 4),
        }

    out = {"fp8_base_rel_err_vs_bf16_base": round(rel_err(fp8_base, ref_base), 4)}
    for label in loras:
        out[label] = {
            "lora_effect_rel_to_output": round(float((ref[label] - ref_base).norm() / ref_base.norm()), 4),
            "fp8_merged_as_the_app_does": kept(label, fp8[label]),
            "fp8_merged_round_to_nearest": kept(label, nearest[label]),
        }
    log.info("%s", out)
    return out


def phase_lora_fast(args) -> dict:
    """LoRAs with the default speed profile (fp8, compiled blocks) through the registry and the task:
    merged into the float8 weights per request. Times the merge and restore, images with and without
    LoRAs, counts recompiles across LoRA changes, and measures the merged model against bf16."""
    from flux_ui.tasks.text_to_image import TextToImageParams, text_to_image, validate_text_to_image

    out = {"quality": lora_effect(args)}
    checkpoint("quality", out["quality"])
    free()  # the quality check's transformer is gone with its frame
    folder = Path(args.scratch) / "loras"
    vae = build_vae()
    registry = random_registry(vae, policies.resolve_profile("auto", DEV), lora_dirs=(folder,))
    registry.shared()
    tr = registry.transformer("dev")
    out["lora_file_bytes"] = {
        n: write_lora(folder / f"{n}.safetensors", tr, seed=i) for i, n in enumerate(("style_a", "style_b"))
    }
    registry.loras.refresh()

    def image(prompt: str) -> dict:
        params = TextToImageParams(prompt=prompt, width=SIZE, height=SIZE, steps=STEPS, seed=1)
        start = time.perf_counter()
        result = text_to_image(registry, validate_text_to_image(params, registry.settings, registry.loras))
        return {"prompt": prompt, "s": round(time.perf_counter() - start, 3), "timings": result.timings}

    def assembly(loras) -> float:
        start = sync_time()
        with registry.pipeline("dev", loras=loras):
            sync_time()
        return round(sync_time() - start, 3)

    out["first_image"] = image("a red fox")  # compiles
    graphs = dict(torch._dynamo.utils.counters["stats"])
    prompts = [
        "a red fox <lora:style_a:1>",  # reads the file
        "a red fox <lora:style_a:1>",
        "a red fox <lora:style_a:0.6> <lora:style_b:0.8>",  # reads the second
        "a red fox <lora:style_a:0.6> <lora:style_b:0.8>",
        "a red fox",
        "a red fox",
        "a red fox <lora:style_b:1>",
    ]
    out["images"] = [image(p) for p in prompts]
    for row in out["images"]:
        log.info("%s", row)
    out["dynamo_stats_before"] = graphs
    out["dynamo_stats_after"] = dict(torch._dynamo.utils.counters["stats"])
    out["recompiles"] = dict(torch._dynamo.utils.counters["recompiles"])
    out["assembly_s"] = {  # entering and leaving registry.pipeline with loaded LoRAs
        "LoRAs off after style_b (restore)": assembly(()),
        "no LoRA again": assembly(()),
        "merge one rank-64 LoRA": assembly((("style_a", 1.0),)),
        "the same LoRA again (kept merged)": assembly((("style_a", 1.0),)),
        "restore it, merge two rank-64 LoRAs": assembly((("style_a", 0.6), ("style_b", 0.8))),
        "LoRAs off (restore two)": assembly(()),
    }
    log.info("%s", out["assembly_s"])
    out["peak_vram_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def forward_time(transformer, runs: int = 10) -> float:
    """Median seconds of one transformer forward at 1024x1024 (one denoising step), after 3 warm-ups."""
    for _ in range(3):
        transformer_output(transformer)
    times = []
    for _ in range(runs):
        start = sync_time()
        transformer_output(transformer)
        times.append(sync_time() - start)
    return statistics.median(times)


def kernel_profile(transformer, top: int = 12) -> list[dict]:
    """GPU time per kernel kind in one transformer forward (torch.profiler), largest first, in ms."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        transformer_output(transformer)
        torch.cuda.synchronize()
    rows = [(e.key, e.device_time_total / 1000, e.count) for e in prof.key_averages() if e.device_time_total > 0]
    rows.sort(key=lambda r: -r[1])
    total = sum(r[1] for r in rows)
    out = [{"kernel": k[:90], "ms": round(ms, 2), "calls": n} for k, ms, n in rows[:top]]
    return [{"kernel": "TOTAL", "ms": round(total, 2), "calls": sum(r[2] for r in rows)}, *out]


def phase_explore(args) -> dict:
    """Per-step time of the fp8 transformer under variants of its compilation and attention, against
    the app's fp8 profile in the same run: inductor's coordinate-descent tuning, max-autotune (no CUDA
    graphs), and float8 attention (flux_ui.fp8_attention) if present. Each row: compile seconds, median
    step, relative error of the output against the bf16 eager transformer."""
    import torch._inductor.config as inductor

    ref_tr = build_transformer()
    reference = transformer_output(ref_tr)
    del ref_tr
    free()
    variants = {
        "app": ("fp8 profile (app)", {}),
        "cdt": ("+ coordinate-descent tuning", {"inductor": {"coordinate_descent_tuning": True}}),
        "fp8attn": ("+ float8 attention", {"attention": True}),
        "autotune": ("+ max-autotune (no CUDA graphs)", {"mode": "max-autotune-no-cudagraphs"}),
        "cudagraphs": ("+ CUDA graphs (mode reduce-overhead)", {"mode": "reduce-overhead"}),
    }
    if "fp8attn" in args.variants:
        from flux_ui import fp8_attention  # on the fp8-attention branch only

        if not fp8_attention.fp8_attention_available():
            args.variants.remove("fp8attn")
    out = {}
    for name, v in (variants[key] for key in args.variants):
        tr = build_transformer()
        start = sync_time()
        try:
            with inductor.patch(v.get("inductor", {})):
                speed.quantize_fp8(tr)
                if v.get("attention"):
                    fp8_attention.use_fp8_attention(tr)
                else:
                    tr.set_attention_backend(speed.ATTENTION_BACKEND)
                kwargs = {"mode": v["mode"]} if "mode" in v else {}
                tr.compile_repeated_blocks(fullgraph=True, dynamic=True, **kwargs)
                first = transformer_output(tr)
                compile_s = sync_time() - start
                step = forward_time(tr)
            row = {
                "compile_s": round(compile_s, 1),
                "s_per_step": round(step, 4),
                "s_per_28_steps": round(28 * step, 2),
                "rel_err_vs_bf16_eager": round(rel_err(first, reference), 4),
                "gpu_kernels_per_step": kernel_profile(tr),
            }
        except Exception as err:  # noqa: BLE001 - an exploration row that fails is reported, the rest go on
            row = {"error": f"{type(err).__name__}: {str(err)[:400]}"}
        log.info("%s %s", name, row)
        out[name] = row
        checkpoint(f"explore: {name}", row)
        del tr
        free()
    return out


def phase_nofuse(args) -> dict:
    """fp8 profile with and without fused QKV projections (fusing keeps the unfused weights too)."""
    out = {}
    vae = build_vae()
    speed.optimize_vae(vae, "compile")
    for fuse in (False, True):
        tr = build_transformer()
        speed.optimize_transformer(tr, "fp8", fuse_qkv=fuse)
        row, _ = time_config(f"fp8 profile, fuse_qkv={fuse}", pipeline(tr, vae))
        out[f"fuse_qkv={fuse}"] = row
        del tr
        free()
    return out


def phase_switch(args) -> dict:
    """Variant switching through the registry with the encoders resident: [dev] -> Kontext -> [dev] ...
    (bf16 transformers, warm tier in pinned RAM), and plain diffusers from_pretrained from local disk."""
    from diffusers import FluxTransformer2DModel

    vae = build_vae()
    registry = random_registry(vae, "off", cache=2)
    registry.shared()
    switches = []
    for name in ("dev", "kontext-dev", "dev", "kontext-dev", "dev", "kontext-dev"):
        start = sync_time()
        registry.transformer(name)
        switches.append({"to": name, "s": round(sync_time() - start, 3)})
        log.info("%s", switches[-1])
    out = {"switches": switches, "moves": [list(m) for m in registry.moves]}
    del registry
    free()
    if args.no_disk:
        return out

    folder = Path(args.scratch) / "flux-dev-random"
    tr = build_transformer()
    start = time.perf_counter()
    tr.save_pretrained(folder, safe_serialization=True, max_shard_size="10GB")
    out["save_pretrained_s"] = round(time.perf_counter() - start, 1)
    del tr
    free()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        out["page_cache_dropped"] = True
    except OSError as err:
        out["page_cache_dropped"] = f"no ({err})"
    start = sync_time()
    model = FluxTransformer2DModel.from_pretrained(folder, torch_dtype=torch.bfloat16).to(DEV)
    out["diffusers_from_pretrained_to_gpu_s"] = round(sync_time() - start, 2)
    del model
    free()
    start = sync_time()
    model = FluxTransformer2DModel.from_pretrained(folder, torch_dtype=torch.bfloat16).to(DEV)
    out["diffusers_from_pretrained_to_gpu_again_s"] = round(sync_time() - start, 2)
    del model
    return out


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    p = argparse.ArgumentParser()
    p.add_argument(
        "--phase",
        choices=["main", "restart", "extra", "24gb", "switch", "dynamic", "lora", "lora-fast", "nofuse", "explore"],
        required=True,
    )
    p.add_argument("--no-disk", action="store_true", help="switch phase: skip the from_pretrained baseline")
    p.add_argument("--scratch", default="bench-scratch", help="folder for the switch phase's files")
    p.add_argument(
        "--variants",
        nargs="+",
        default=["app", "cdt", "cudagraphs"],
        help="explore phase: app, cdt, fp8attn (needs branch fp8-attention), autotune, cudagraphs",
    )
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    info = {
        "gpu": torch.cuda.get_device_name(0),
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "settings": {"steps": STEPS, "size": f"{SIZE}x{SIZE}", "runs": RUNS, "dtype": "bfloat16"},
    }
    import diffusers

    info["diffusers"] = diffusers.__version__
    phases = {"main": phase_main, "restart": phase_restart, "extra": phase_extra, "24gb": phase_24gb}
    phases["switch"] = phase_switch
    phases["dynamic"] = phase_dynamic
    phases["lora"] = phase_lora
    phases["lora-fast"] = phase_lora_fast
    phases["explore"] = phase_explore
    phases["nofuse"] = phase_nofuse
    global OUT_PATH
    OUT_PATH = Path(args.out)
    for k, v in {**info, "phase": args.phase}.items():
        checkpoint(k, v)
    result = {**info, "phase": args.phase, **phases[args.phase](args)}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
