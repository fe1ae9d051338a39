"""The Train tab: a LoRA from the user's own images, trained in the GPU's line like any other job.

Upload images, caption them (typed, one line per image, or written by the VQA model from an editable
instruction), name the LoRA, pick a preset for the GPU, train: the loss is plotted as it falls, sample
images appear every N steps, Cancel stops after the current step with a checkpoint that Resume continues.
The finished LoRA is in the Text to image tab's picker at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import gradio as gr

from flux_ui.core.errors import Cancelled, InvalidInput
from flux_ui.tasks.training.captions import CAPTION_TEMPLATE, caption_images, images_to_caption
from flux_ui.tasks.training.params import MIN_IMAGES, RUN_FILE, ZERO_GPU_REFUSAL, TrainParams, validate_training
from flux_ui.tasks.training.presets import PRESETS, compiles, default_preset
from flux_ui.tasks.training.run import TrainEvent, TrainResult, train_lora
from flux_ui.ui.common import UiContext, gpu_event, invalid

PLOT_EVERY_S = 1.0  # the loss plot is redrawn at most this often (each redraw sends the whole series)


@dataclass
class TrainTab:
    done: list[gr.events.Dependency]  # Train and Resume: chain `.success(...)` on each; a new LoRA is listed


def _captions(text: str | None, count: int) -> list[str]:
    """One caption per line; no text at all: an empty caption for each image (the trigger word alone)."""
    lines = (text or "").rstrip("\n").split("\n") if (text or "").strip() else []
    return lines or [""] * count


def _plot(losses: list[float]):
    import pandas as pd

    return pd.DataFrame({"step": range(1, len(losses) + 1), "loss": losses})


def _status(ev: TrainEvent) -> str:
    if ev.phase == "preparing":
        return "Encoding images and captions, loading the model…"
    if ev.phase == "saving":
        return f"Step {ev.step}/{ev.steps}: saving the LoRA…"
    if ev.phase == "resumed":
        return f"Resumed at step {ev.step}/{ev.steps}"
    loss = f" · loss {ev.loss:.4f}" if ev.loss is not None else ""
    what = "making sample images" if ev.phase == "sampling" and not ev.samples else "training"
    return f"Step {ev.step}/{ev.steps}{loss} · {what}"


def _summary(r: TrainResult) -> str:
    t = r.timings
    per_step = t["train"] / max(1, len(r.losses))
    return (
        f"**{r.name}** is ready: `{r.path}` · {r.steps} steps in {t['total']:.0f} s "
        f"({per_step:.2f} s/step) · final loss {r.losses[-1]:.4f}. Use it in Text to image as "
        f"`<lora:{r.name}:1>` with its trigger word."
    )


def build(ctx: UiContext) -> TrainTab:
    settings, registry = ctx.settings, ctx.registry

    def in_this_process() -> None:
        """Training and captioning run on this process's models; with --replicas the GPUs are the
        replicas' (a training run is not a job a replica takes)."""
        if registry.workers is not None:
            message = (
                "training runs on the server's own GPU, which --replicas gives to the replicas; "
                "train on a server started without --replicas"
            )
            raise gr.Error(message, title="Not with --replicas", print_exception=False)

    def run(raw: TrainParams, request: gr.Request | None):
        """Validate, then stream (status, loss plot, samples, result) while training."""
        in_this_process()
        try:
            job = validate_training(raw, settings, registry.loras, registry.tokenizers())
        except InvalidInput as err:
            raise invalid(err) from None
        losses: list[float] = []
        shown = {"at": 0.0, "step": 0}

        def show(ev: TrainEvent):
            if ev.phase == "resumed":
                losses[:] = ev.history
            elif ev.loss is not None and ev.phase == "training":
                losses.append(ev.loss)
            shown["step"] = ev.step
            now = time.monotonic()
            if ev.samples:
                return _status(ev), _plot(losses), list(ev.samples), gr.skip()
            if ev.phase != "training" or now - shown["at"] >= PLOT_EVERY_S or ev.step == ev.steps:
                shown["at"] = now
                return _status(ev), _plot(losses), gr.skip(), gr.skip()
            return None

        def waiting(ahead: int):
            return (f"Waiting for the GPU: {ahead} job(s) ahead" if ahead else "Starting…"), *(gr.skip(),) * 3

        try:
            result = yield from ctx.stream(
                lambda on_event, stop: train_lora(registry, job, on_event, stop),
                request,
                show,
                (gr.skip(),) * 4,
                waiting,
                keep_cancelled=True,
            )
        except Cancelled:
            if shown["step"]:
                text = f"**Cancelled** after step {shown['step']}: a checkpoint was saved; press Resume to continue."
            elif (job.run_dir / RUN_FILE).is_file():
                text = "**Cancelled** before the first step; press Resume to start the run again."
            else:
                text = "**Cancelled** while waiting for the GPU. Nothing was saved."
            yield text, gr.skip(), gr.skip(), ""
            return
        yield f"Done: {result.steps} steps.", _plot(result.losses), gr.skip(), _summary(result)

    def train(
        images: list | None,
        captions: str,
        trigger: str,
        name: str,
        preset: str,
        steps: float,
        learning_rate: float,
        rank: float,
        resolution: float,
        sample_prompts: str = "",
        sample_every: float = 0,
        checkpoint_every: float = 250,
        seed: float = 0,
        folder: str = "",
        compile: bool | None = None,
        request: gr.Request = None,
    ):
        """Train a LoRA on FLUX.1 [dev] from your images; it is saved as NAME.safetensors in the LoRA folder.

        Args:
            images: the training images (at least 4; 10 to 50 work well), each at least 256 px a side.
            captions: one caption per line, in the images' order; empty for the trigger word alone.
            trigger: the word that calls up what the LoRA learns; put in front of every caption.
            name: the LoRA's file name (letters, digits, '-', '_', '.').
            preset: the GPU memory preset ("12 GB", "16 GB", "24 GB", "80+ GB").
            steps: training steps.
            learning_rate: AdamW's learning rate (1e-4 is usual).
            rank: the LoRA's rank.
            resolution: the side in pixels of a square bucket (other buckets hold as many pixels).
            sample_prompts: prompts for sample images, one per line (the trigger word is put in front).
            sample_every: steps between sample images (0: only at the end).
            checkpoint_every: steps between checkpoints (0: only when cancelled).
            seed: the run's seed.
            folder: instead of images, a folder on the server inside a --train-dir folder (absolute, or
                relative to the first); NAME.txt beside NAME.png is that image's caption.
            compile: compile the training step (CUDA only; about a minute once, then faster steps); None:
                the preset's choice.

        Returns:
            Progress, the loss per step, the sample images, and where the LoRA was saved.
        """
        count = len(images) if isinstance(images, list) else 0
        raw = TrainParams(
            images=images or [],
            captions=_captions(captions, count),
            trigger=trigger or "",
            name=name or "",
            preset=preset,
            steps=steps,
            learning_rate=learning_rate,
            rank=rank,
            resolution=resolution,
            sample_prompts=sample_prompts or "",
            sample_every=sample_every,
            checkpoint_every=checkpoint_every,
            seed=seed,
            folder=folder or "",
            compile=compile,
        )
        yield from run(raw, request)

    def resume(name: str, steps: float | None = None, compile: bool | None = None, request: gr.Request = None):
        """Continue the training run called NAME from its last checkpoint (after a Cancel or a crash).

        Args:
            name: the run's LoRA name.
            steps: train to this many steps in all (only a larger number than the run's changes it).
            compile: compile the training step (CUDA only); None: as the run was started.
        """
        yield from run(TrainParams(name=name or "", steps=steps, resume=True, compile=compile), request)

    def caption(images: list | None, template: str, folder: str = "", request: gr.Request = None):
        """Caption every training image with the VQA model; the captions appear one line per image.

        Args:
            images: the training images.
            template: the instruction the VQA model gets for each image.
            folder: instead of images, a folder on the server (see train_lora); its images in file-name order.
        """
        in_this_process()
        try:
            images = images_to_caption(images, folder, settings)
        except InvalidInput as err:
            raise invalid(err) from None
        written: list[str] = []

        def show(item):
            written.append(item[1])
            return "\n".join(written)

        captions = yield from ctx.stream(
            lambda on_event, stop: caption_images(
                registry, list(images or []), template or CAPTION_TEMPLATE, lambda i, c: on_event((i, c)), stop
            ),
            request,
            show,
            gr.skip(),
        )
        yield "\n".join(captions)

    with gr.Tab("Train a LoRA", id="train"), gr.Row():
        with gr.Column(scale=1):
            if settings.zero_gpu:
                gr.Markdown(f"**Not on this Space**: {ZERO_GPU_REFUSAL}.", elem_id="train-zero-gpu")
            images = gr.File(
                label=f"Training images (at least {MIN_IMAGES})",
                file_count="multiple",
                file_types=["image"],
                elem_id="train-images",
            )
            allowed = ", ".join(f"`{d}`" for d in settings.train_dirs)
            folder = gr.Textbox(
                "",  # a value: clients that send no folder get this default
                label="…or a folder on this server (its images in file-name order; NAME.txt is NAME.png's caption)",
                info=f"inside {allowed}" if allowed else None,
                placeholder=str(settings.train_dirs[0]) if settings.train_dirs else None,
                visible=bool(settings.train_dirs),  # off unless --train-dir names folders
                elem_id="train-folder",
            )
            captions = gr.Textbox(
                label="Captions, one line per image in upload (or file-name) order; the trigger word is added in front",
                lines=6,
                elem_id="train-captions",
            )
            with gr.Accordion("Caption with the VQA model", open=False):
                template = gr.Textbox(value=CAPTION_TEMPLATE, label="Instruction per image", lines=3)
                caption_btn = gr.Button("Write captions", elem_id="train-caption")
            with gr.Row():
                trigger = gr.Textbox(label="Trigger word", placeholder="ohwx", elem_id="train-trigger")
                name = gr.Textbox(label="LoRA name", placeholder="my-style", elem_id="train-name")
            preset = gr.Dropdown(
                list(PRESETS),
                value=default_preset(settings.device),
                label="Preset (GPU memory)",
                elem_id="train-preset",
            )
            preset_note = gr.Markdown(PRESETS[default_preset(settings.device)].summary)
            with gr.Row():
                p = PRESETS[default_preset(settings.device)]
                steps = gr.Number(p.steps, label="Steps", precision=0, elem_id="train-steps")
                learning_rate = gr.Number(p.learning_rate, label="Learning rate", elem_id="train-lr")
                rank = gr.Number(p.rank, label="Rank", precision=0, elem_id="train-rank")
                resolution = gr.Number(p.resolution, label="Resolution (px)", precision=0, elem_id="train-resolution")
            with gr.Accordion("Samples, checkpoints and compile", open=False):
                sample_prompts = gr.Textbox(label="Sample prompts, one per line", lines=2, elem_id="train-samples")
                with gr.Row():
                    sample_every = gr.Number(250, label="Samples every N steps", precision=0)
                    checkpoint_every = gr.Number(250, label="Checkpoint every N steps", precision=0)
                    seed = gr.Number(0, label="Seed", precision=0)
                compile_step = gr.Checkbox(
                    p.compile and compiles(settings.device),
                    label="Compile the training step (CUDA only: about a minute at the first step, then faster steps)",
                    interactive=compiles(settings.device),
                    elem_id="train-compile",
                )
            with gr.Row():
                train_btn = gr.Button("Train", variant="primary", elem_id="train-start")
                cancel_btn = gr.Button("Cancel", variant="stop", elem_id="train-cancel")
                resume_btn = gr.Button("Resume", elem_id="train-resume")
        with gr.Column(scale=1):
            status = gr.Markdown(elem_id="train-status")
            plot = gr.LinePlot(x="step", y="loss", label="Loss", height=260, elem_id="train-loss")
            samples = gr.Gallery(label="Sample images", columns=2, height=320, elem_id="train-samples-gallery")
            result = gr.Markdown(elem_id="train-result")

    def on_preset(name: str):
        p = PRESETS.get(name)
        if p is None:
            return (gr.skip(),) * 6
        return p.summary, p.steps, p.learning_rate, p.rank, p.resolution, p.compile and compiles(settings.device)

    preset_fields = [preset_note, steps, learning_rate, rank, resolution, compile_step]
    preset.change(on_preset, preset, preset_fields, api_visibility="private")
    gpu = {**gpu_event(settings), "show_progress": "minimal"}
    outputs = [status, plot, samples, result]
    inputs = [images, captions, trigger, name, preset, steps, learning_rate, rank, resolution]
    inputs += [sample_prompts, sample_every, checkpoint_every, seed, folder, compile_step]
    train_ev = train_btn.click(train, inputs, outputs, api_name="train_lora", **gpu)
    resume_ev = resume_btn.click(resume, [name, steps, compile_step], outputs, api_name="resume_training", **gpu)
    caption_ev = caption_btn.click(caption, [images, template, folder], captions, api_name="caption_images", **gpu)
    cancel_btn.click(
        ctx.cancel, None, None, cancels=[caption_ev], queue=False, api_visibility="private"
    )  # training and resume stop after their step, with a checkpoint (see UiContext.cancel)
    return TrainTab(done=[train_ev, resume_ev])
