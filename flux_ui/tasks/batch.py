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
from flux_ui.core.variants import FLUX1, FLUX2, Variant
from flux_ui.media.metadata import FAST_MODE_KEY, ImageMeta
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
    own `embeds`, (prompt_embeds, pooled_prompt_embeds), as Redux does) and generating. A FLUX.2 pipeline
    gets its own prompt embeddings."""
    timings = {}
    width, height = batch.size
    settings = registry.settings
    # The VAE is shared; it is set for this request while the pipeline is lent (under the registry's lock).
    if tile_vae(settings.vae_tiling, settings.policy, batch.size):
        pipe.vae.enable_tiling()
    else:
        pipe.vae.disable_tiling()
    text = batch.prompt if batch.encoder_prompt is None else batch.encoder_prompt
    notes = tuple(cut_notes(pipe, text, batch.variant.max_sequence_length, batch.variant.family))
    if embeds is None:
        t = time.perf_counter()
        with torch.inference_mode():
            prompt_inputs = encode(pipe, text, batch.variant, registry.settings.device)
        timings["encode"] = time.perf_counter() - t
    else:
        prompt_inputs = {"prompt_embeds": embeds[0], "pooled_prompt_embeds": embeds[1]}
    t = time.perf_counter()
    images = []
    steps_run = batch.steps if batch.steps_run is None else batch.steps_run  # what progress counts
    total = steps_run * batch.num_images
    if batch.guidance is not None:
        inputs["guidance_scale"] = batch.guidance
    elif batch.variant.family == FLUX2:
        inputs["guidance_scale"] = 1.0  # [klein] distilled: no guidance (its pipeline warns about any other)
    family = batch.variant.family
    extra = dict(batch.extra)
    if batch.fast:
        extra[FAST_MODE_KEY] = fast.describe(steps_run)
    outputs = []
    # Fast mode's step cache is on the pipeline for this request only; it is removed when the block ends.
    with fast.fast_mode(pipe, steps_run) if batch.fast else nullcontext():
        for i in range(batch.num_images):
            callback = step_callback(registry, on_step, should_stop, i, steps_run, total, batch.size, family)
            with torch.inference_mode():
                out = pipe(
                    **prompt_inputs,
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


def encode(pipe, text: str, variant: Variant, device: str) -> dict[str, torch.Tensor]:
    """The prompt's embeddings, as the pipeline's call takes them: FLUX.1's T5 and pooled CLIP embeddings;
    FLUX.2's text encoder's, and for a [klein] base model (classifier-free guidance) the empty prompt's too,
    which its pipeline would otherwise encode again for every image."""
    if variant.family == FLUX1:
        prompt_embeds, pooled, _ = pipe.encode_prompt(
            prompt=text, prompt_2=None, device=device, max_sequence_length=variant.max_sequence_length
        )
        return {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled}
    embeds = {"prompt_embeds": pipe.encode_prompt(text, device, max_sequence_length=variant.max_sequence_length)[0]}
    if variant.pipeline_class != "Flux2Pipeline" and not variant.distilled:
        embeds["negative_prompt_embeds"] = pipe.encode_prompt(
            "", device, max_sequence_length=variant.max_sequence_length
        )[0]
    return embeds


def cut_notes(pipe, prompt: str, t5_tokens: int, family: str = FLUX1) -> list[str]:
    """What the text encoders do not read of `prompt`, as notes for the user: the pipelines truncate it
    silently (diffusers only logs it) to CLIP-L's 77 tokens (the pooled embedding) and to the variant's
    T5 limit (512, or 256 for [schnell]); FLUX.2's one encoder to 512. Each note says where the cut falls. Counted with
    the pipeline's own tokenizers (the shared ones); a pipeline without them (Redux's base, which is given
    embeddings) gets none."""
    notes = []
    readers = {"CLIP": "the pooled prompt (CLIP-L)", "T5": "the text encoder (T5-XXL)", "FLUX.2": "the text encoder"}
    if family == FLUX2:  # one encoder, read up to `t5_tokens`; its chat template adds a few tokens around
        checks = [("FLUX.2", getattr(pipe, "tokenizer", None), t5_tokens)]
    else:
        checks = [
            (
                "CLIP",
                getattr(pipe, "tokenizer", None),
                getattr(getattr(pipe, "tokenizer", None), "model_max_length", 77),
            ),
            ("T5", getattr(pipe, "tokenizer_2", None), t5_tokens),
        ]
    for name, tokenizer, limit in checks:
        if tokenizer is None or not prompt:
            continue
        ids = tokenizer(prompt, truncation=False, add_special_tokens=True).input_ids
        if len(ids) <= limit:
            continue
        kept = tokenizer(prompt, truncation=True, max_length=limit, add_special_tokens=True).input_ids
        text = tokenizer.decode(kept, skip_special_tokens=True).strip()
        tail = " ".join(text.split()[-6:])
        reader = readers[name]
        notes.append(
            f"⚠ Prompt cut: it is {len(ids)} {name if name != 'FLUX.2' else 'text'} tokens and {reader} reads "
            f"only the first {limit}; "
            f"what comes after “…{tail}” is not seen by it."
        )
    return notes
