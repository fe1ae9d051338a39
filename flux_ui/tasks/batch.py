"""One prompt, several images: the generation loop every FLUX task but Redux shares.

The prompt is encoded once; image i is denoised from the noise of seed + i, drawn on the CPU so that a
seed gives the same image on any device (as in text-to-image).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from flux_ui.core.policies import tile_vae
from flux_ui.core.seeds import batch_seed
from flux_ui.core.variants import Variant
from flux_ui.media.metadata import ImageMeta
from flux_ui.models import fast
from flux_ui.models.registry import Registry
from flux_ui.tasks import GeneratedImage, StepCallback, step_callback


@dataclass(frozen=True)
class Batch:
    """What every image of one request shares."""

    prompt: str
    variant: Variant  # recorded in the metadata (the base variant when a LoRA does the work)
    seed: int  # resolved seed of the first image; image i uses seed + i
    steps: int
    guidance: float | None  # None for guidance-free variants ([schnell]): no guidance_scale is passed
    num_images: int
    size: tuple[int, int]  # (width, height) in pixels, multiples of 16
    loras: tuple[tuple[str, float], ...] = ()  # (name, scale) for the metadata
    extra: dict[str, str] = field(default_factory=dict)  # task-specific metadata
    encoder_prompt: str | None = None  # what the text encoders see, when not `prompt` (LoRA tags stripped)
    steps_run: int | None = None  # steps the pipeline runs, when fewer than `steps` (image to image's strength)
    fast: bool = False  # fast mode: the step cache of `flux_ui.models.fast` for this request's images


def generate_batch(
    registry: Registry,
    pipe,
    batch: Batch,
    on_step: StepCallback | None,
    should_stop: Callable[[], bool] | None,
    embeds: tuple[torch.Tensor, torch.Tensor] | None = None,
    **inputs,
) -> tuple[list[GeneratedImage], dict[str, float]]:
    """Run `pipe` once per image with the task's `inputs` (image, mask_image, control_image, ...);
    return the images with their metadata, and the seconds spent encoding (unless the caller brings its
    own `embeds`, (prompt_embeds, pooled_prompt_embeds), as Redux does) and generating."""
    timings = {}
    width, height = batch.size
    settings = registry.settings
    # The VAE is shared; it is set for this request while the pipeline is lent (under the registry's lock).
    if tile_vae(settings.vae_tiling, settings.policy, batch.size):
        pipe.vae.enable_tiling()
    else:
        pipe.vae.disable_tiling()
    text = batch.prompt if batch.encoder_prompt is None else batch.encoder_prompt
    notes = tuple(cut_notes(pipe, text, batch.variant.max_sequence_length))
    if embeds is None:
        t = time.perf_counter()
        with torch.inference_mode():
            prompt_embeds, pooled, _ = pipe.encode_prompt(
                prompt=text,
                prompt_2=None,
                device=registry.settings.device,
                max_sequence_length=batch.variant.max_sequence_length,
            )
        timings["encode"] = time.perf_counter() - t
    else:
        prompt_embeds, pooled = embeds
    t = time.perf_counter()
    images = []
    steps_run = batch.steps if batch.steps_run is None else batch.steps_run  # what progress counts
    total = steps_run * batch.num_images
    if batch.guidance is not None:
        inputs["guidance_scale"] = batch.guidance
    extra = dict(batch.extra)
    if batch.fast:
        extra["Fast mode"] = fast.describe(steps_run)
    outputs = []
    # Fast mode's step cache is on the pipeline for this request only; it is removed when the block ends.
    with fast.fast_mode(pipe, steps_run) if batch.fast else nullcontext():
        for i in range(batch.num_images):
            callback = step_callback(registry, on_step, should_stop, i, steps_run, total, batch.size)
            with torch.inference_mode():
                out = pipe(
                    prompt_embeds=prompt_embeds,
                    pooled_prompt_embeds=pooled,
                    width=width,
                    height=height,
                    num_inference_steps=batch.steps,
                    generator=torch.Generator("cpu").manual_seed(batch_seed(batch.seed, i)),
                    max_sequence_length=batch.variant.max_sequence_length,
                    callback_on_step_end=callback,
                    **inputs,
                )
            outputs.append(out.images[0])
    timings["generate"] = time.perf_counter() - t
    # After the images: a transformer file's hash started when it loaded, and has had their time to finish.
    model_hash, lora_hashes = registry.file_hashes(batch.variant, batch.loras)
    for i, image in enumerate(outputs):
        meta = ImageMeta(
            prompt=batch.prompt,
            variant=batch.variant.name,
            seed=batch_seed(batch.seed, i),
            steps=batch.steps,
            guidance=batch.guidance,
            width=width,
            height=height,
            loras=batch.loras,
            extra=dict(extra),
            model_hash=model_hash,
            lora_hashes=lora_hashes,
        )
        images.append(GeneratedImage(image, meta, notes))
    return images, timings


def cut_notes(pipe, prompt: str, t5_tokens: int) -> list[str]:
    """What the text encoders do not read of `prompt`, as notes for the user: the pipelines truncate it
    silently (diffusers only logs it) to CLIP-L's 77 tokens (the pooled embedding) and to the variant's
    T5 limit, `t5_tokens` (512, or 256 for [schnell]). Each note says where the cut falls. Counted with
    the pipeline's own tokenizers (the shared ones); a pipeline without them (Redux's base, which is given
    embeddings) gets none."""
    notes = []
    for name, tokenizer, limit in (
        ("CLIP", getattr(pipe, "tokenizer", None), getattr(getattr(pipe, "tokenizer", None), "model_max_length", 77)),
        ("T5", getattr(pipe, "tokenizer_2", None), t5_tokens),
    ):
        if tokenizer is None or not prompt:
            continue
        ids = tokenizer(prompt, truncation=False, add_special_tokens=True).input_ids
        if len(ids) <= limit:
            continue
        kept = tokenizer(prompt, truncation=True, max_length=limit, add_special_tokens=True).input_ids
        text = tokenizer.decode(kept, skip_special_tokens=True).strip()
        tail = " ".join(text.split()[-6:])
        reader = "the pooled prompt (CLIP-L)" if name == "CLIP" else "the text encoder (T5-XXL)"
        notes.append(
            f"⚠ Prompt cut: it is {len(ids)} {name} tokens and {reader} reads only the first {limit}; "
            f"what comes after “…{tail}” is not seen by it."
        )
    return notes
