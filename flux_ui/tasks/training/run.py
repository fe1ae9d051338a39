"""One LoRA training run, from a validated `TrainJob` to a LoRA file in the picker.

1. Other models leave the GPU (`registry.make_room`); the shared encoders and VAE come to it.
2. Captions, sample prompts and images are encoded once (`data`); then the text encoders leave too.
3. A fresh copy of the [dev] transformer (never the one inference uses: training changes its layers) is
   placed as the preset says: bf16, float8 or 4-bit NF4; a PEFT LoRA goes on its projections (`model`).
4. Steps: a batch from one bucket, the flow-matching loss under bf16 autocast on CUDA (the blocks compiled
   where the run asks), AdamW (8-bit where bitsandbytes runs); a checkpoint every N steps, sample images
   every N steps, and `should_stop` checked after each step. A stop saves a checkpoint first, so Resume
   continues from there.
5. The LoRA is written (`export`) and the LoRA library rescanned, so the picker lists it at once.

The caller holds the GPU's turn (`registry.line`); the registry's lock is not held, so status and other
reads answer during a run. cuDNN's attention is off while training: its backward pass faulted with
FLUX's shapes on an H200 (DESIGN.md), and PyTorch then picks its flash or memory-efficient kernels.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from flux_ui.core.errors import Cancelled, InvalidInput
from flux_ui.models.registry import Registry
from flux_ui.tasks.training import data, export, model
from flux_ui.tasks.training.params import RUN_FILE, TrainJob, image_file

log = logging.getLogger(__name__)

VARIANT = "dev"  # LoRAs are trained on FLUX.1 [dev]; they also load into Krea [dev] and [schnell]
CHECKPOINT = "checkpoint.pt"
EVERYTHING = 2**62  # bytes asked of `make_room`: evict all that may go


@dataclass
class TrainEvent:
    """Progress of a run: a phase ("preparing", "resumed", "training", "sampling", "saving"), the step, the
    loss."""

    phase: str
    step: int  # steps done
    steps: int  # steps of the run
    loss: float | None = None  # this step's loss
    samples: tuple[Image.Image, ...] = ()  # sample images made at this step
    history: tuple[float, ...] = ()  # "resumed": the losses of the steps before the checkpoint


@dataclass
class TrainResult:
    name: str
    path: Path  # the LoRA file
    steps: int  # steps trained in all (a resumed run counts its earlier ones)
    losses: list[float]  # per step, from step 1
    samples: list[Image.Image] = field(default_factory=list)  # the last sample images
    timings: dict[str, float] = field(default_factory=dict)  # seconds: prepare, train, save, total


@contextmanager
def no_cudnn_attention(device: str) -> Iterator[None]:
    cuda = torch.device(device).type == "cuda"
    before = torch.backends.cuda.cudnn_sdp_enabled() if cuda else None
    if cuda:
        torch.backends.cuda.enable_cudnn_sdp(False)
    try:
        yield
    finally:
        if cuda:
            torch.backends.cuda.enable_cudnn_sdp(before)


def _save_run(job: TrainJob) -> None:
    """The run's images and settings in its folder: what Resume reads back."""
    job.run_dir.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(job.images):
        image.save(job.run_dir / image_file(i))
    (job.run_dir / RUN_FILE).write_text(json.dumps(job.settings_json(), indent=2))


def _save_checkpoint(job: TrainJob, transformer, opt, step: int, losses: list[float]) -> None:
    """The LoRA, the optimizer's state and the losses at `step`, replacing the previous checkpoint whole."""
    state = {"step": step, "lora": model.lora_state(transformer), "optimizer": opt.state_dict(), "losses": losses}
    tmp = job.run_dir / (CHECKPOINT + ".tmp")
    torch.save(state, tmp)
    tmp.replace(job.run_dir / CHECKPOINT)
    log.info("training %s: checkpoint at step %d", job.name, step)


def _load_checkpoint(job: TrainJob, transformer, opt) -> tuple[int, list[float]]:
    path = job.run_dir / CHECKPOINT
    if not path.is_file():
        return 0, []
    state = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain types only
    model.load_lora_state(transformer, state["lora"])
    opt.load_state_dict(state["optimizer"])
    log.info("training %s: resumed at step %d", job.name, state["step"])
    return int(state["step"]), [float(x) for x in state["losses"]]


def _encode(registry: Registry, job: TrainJob) -> tuple[list[data.Example], list[tuple], torch.nn.Module]:
    """Every image and caption encoded once, and the sample prompts; the text encoders leave the GPU after,
    the VAE (returned, for the sample images) stays."""
    from diffusers import FluxPipeline

    device = registry.settings.device
    registry.make_room(EVERYTHING)
    shared = registry.shared()
    pipe = FluxPipeline(
        scheduler=registry.scheduler(VARIANT),
        vae=shared.vae,
        text_encoder=shared.text_encoder,
        tokenizer=shared.tokenizer,
        text_encoder_2=shared.text_encoder_2,
        tokenizer_2=shared.tokenizer_2,
        transformer=None,
    )
    texts = data.encode_prompts(pipe, list(job.prompts), device)
    samples = data.encode_prompts(pipe, list(job.sample_prompts), device)
    images = data.encode_images(shared.vae, job.images, job.resolution, device)
    examples = [
        data.Example(lat, emb, pooled, bucket) for (lat, bucket), (emb, pooled) in zip(images, texts, strict=True)
    ]
    registry.make_room(EVERYTHING, keep=("vae",))
    return examples, samples, shared.vae


def _transformer(registry: Registry, job: TrainJob) -> torch.nn.Module:
    """A fresh [dev] transformer on the device, as the preset says, gradient checkpointing set."""
    settings = registry.settings
    transformer = registry.fresh_transformer(VARIANT)
    if job.preset.base == "nf4":
        n = model.quantize_nf4(transformer, settings.device, settings.dtype)
        log.info("training base: %d linear layers in 4-bit NF4", n)
    elif job.preset.base == "float8":
        n = model.quantize_float8(transformer, settings.device)
        log.info("training base: %d linear layers in float8", n)
    else:
        transformer.to(settings.device)
    if job.preset.checkpointing:
        transformer.enable_gradient_checkpointing()
    return transformer.train()


@torch.no_grad()
def _sample(registry: Registry, job: TrainJob, transformer, vae, embeds: list[tuple], autocast) -> list[Image.Image]:
    """One image per sample prompt, with the LoRA as trained so far (same seed each time, to compare).
    Only the transformer and the VAE are used: the prompts were encoded before training."""
    from diffusers import FluxPipeline

    pipe = FluxPipeline(
        scheduler=registry.scheduler(VARIANT),
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    device, dtype = registry.settings.device, registry.settings.dtype
    images = []
    with autocast:
        for emb, pooled in embeds:
            out = pipe(
                prompt_embeds=emb[None].to(device, dtype),
                pooled_prompt_embeds=pooled[None].to(device, dtype),
                width=job.resolution,
                height=job.resolution,
                num_inference_steps=job.sample_steps,
                guidance_scale=model.GUIDANCE,
                generator=torch.Generator().manual_seed(job.seed),
            )
            images.append(out.images[0])
    return images


def train_lora(
    registry: Registry,
    job: TrainJob,
    on_event: Callable[[TrainEvent], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train `job` (see the module docstring); raises Cancelled after saving a checkpoint when stopped."""
    emit = on_event or (lambda ev: None)
    stop = should_stop or (lambda: False)
    settings = registry.settings
    device, dtype = settings.device, settings.dtype
    start = time.perf_counter()
    emit(TrainEvent("preparing", 0, job.steps))
    if not job.resume:
        _save_run(job)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else nullcontext()
    transformer = None
    try:
        with no_cudnn_attention(device):
            examples, sample_embeds, vae = _encode(registry, job)
            transformer = _transformer(registry, job)
            with torch.random.fork_rng(devices=[]):  # the LoRA's initial weights from the run's seed
                torch.manual_seed(job.seed)
                params = model.add_lora(transformer, job.rank)
            opt = model.optimizer(params, job.preset.optimizer, job.learning_rate, device)
            if job.compile:
                model.compile_blocks(transformer)
            step, losses = _load_checkpoint(job, transformer, opt)
            if step:
                emit(TrainEvent("resumed", step, job.steps, losses[-1] if losses else None, history=tuple(losses)))
            sigmas = registry.scheduler(VARIANT).sigmas
            prepared = time.perf_counter()
            samples: list[Image.Image] = []
            while step < job.steps:
                gen = data.step_generator(job.seed, step)
                batch = data.draw_batch(examples, job.preset.batch, gen)
                with autocast:
                    loss = model.flow_matching_loss(
                        transformer,
                        torch.stack([ex.latents for ex in batch]).to(device),
                        torch.stack([ex.prompt_embeds for ex in batch]).to(device),
                        torch.stack([ex.pooled for ex in batch]).to(device),
                        sigmas,
                        gen,
                        dtype,
                    )
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, model.MAX_GRAD_NORM)
                opt.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                losses.append(float(loss.detach()))
                if not math.isfinite(losses[-1]):
                    if not job.resume:  # nothing worth keeping: the same name can be trained again at once
                        shutil.rmtree(job.run_dir, ignore_errors=True)
                    raise InvalidInput(
                        "learning_rate",
                        f"{job.learning_rate:g} made the loss {losses[-1]} at step {step}; lower it (1e-4 is usual) "
                        "and train again",
                    )
                emit(TrainEvent("training", step, job.steps, losses[-1]))
                if stop():
                    _save_checkpoint(job, transformer, opt, step, losses)
                    raise Cancelled()
                if job.checkpoint_every and step % job.checkpoint_every == 0 and step < job.steps:
                    _save_checkpoint(job, transformer, opt, step, losses)
                last = step == job.steps
                if sample_embeds and ((job.sample_every and step % job.sample_every == 0) or last):
                    emit(TrainEvent("sampling", step, job.steps, losses[-1]))
                    samples = _sample(registry, job, transformer, vae, sample_embeds, autocast)
                    emit(TrainEvent("sampling", step, job.steps, losses[-1], tuple(samples)))
            trained = time.perf_counter()
            emit(TrainEvent("saving", step, job.steps, losses[-1] if losses else None))
            timings = {"prepare": prepared - start, "train": trained - prepared}
            path = export.save_lora(job, model.lora_state(transformer), step, losses[-1] if losses else None, timings)
            (job.run_dir / CHECKPOINT).unlink(missing_ok=True)  # the run is done; its images and settings stay
    finally:
        del transformer
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    registry.loras.refresh()
    end = time.perf_counter()
    timings |= {"save": end - trained, "total": end - start}
    log.info("training %s: %d steps in %.1f s, final loss %.4f", job.name, step, timings["train"], losses[-1])
    return TrainResult(job.name, path, step, losses, samples, timings)
