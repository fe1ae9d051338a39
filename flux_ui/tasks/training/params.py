"""A training request: the raw fields as sent (`TrainParams`), and what `validate_training` makes of them
(`TrainJob`), refusing bad input with a message that names the field and the fix before any GPU work.

A run lives in `<outputs>/training/<name>/`: its images, its settings (run.json) and its checkpoints, so
that Resume needs only the name. The finished LoRA goes to the first LoRA folder as `<name>.safetensors`.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from flux_ui.core.errors import InvalidInput
from flux_ui.core.seeds import SEED_MAX
from flux_ui.core.settings import Settings
from flux_ui.media.images import load_image
from flux_ui.media.server_folders import CAPTION_SUFFIX
from flux_ui.models.loras.library import SAFE_SUFFIX, LoraLibrary
from flux_ui.tasks.params import MIN_SIDE, check_float, check_int, check_range, check_seed, check_text
from flux_ui.tasks.training import folder as server_folder
from flux_ui.tasks.training.presets import DEFAULT_PRESET, Preset, check_preset, compiles

MIN_IMAGES = 4  # fewer teach the LoRA one picture, not a subject or a style
MAX_IMAGES = 500
MIN_IMAGE_SIDE = 256  # pixels; a smaller picture is upscaled into blur the LoRA would learn
MAX_STEPS = 20_000
MAX_RANK = 128
MAX_RESOLUTION = 2048
MAX_LEARNING_RATE = 0.05  # far above any useful value (1e-4); the tests train tiny models fast with 1e-2
MAX_SAMPLE_PROMPTS = 4
MAX_SAMPLE_STEPS = 50
# A name is one file name in the LoRA folder: no path separators, so it cannot leave the folder.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
RUNS_SUBDIR = "training"  # below the outputs folder: one folder per run
RUN_FILE = "run.json"
# Why a ZeroGPU Space does not train (README, "Hugging Face Space"): a ZeroGPU call holds the GPU for a
# duration asked up front and taken from the visitor's daily quota, in a forked process that the live loss
# plot, the sample images and Cancel cannot reach.
ZERO_GPU_REFUSAL = (
    "training is not offered on a ZeroGPU Space: a run takes 5 to 30 minutes of GPU time, more than a visitor's "
    "ZeroGPU call and daily quota allow; run the app on a dedicated GPU (a Space with GPU hardware, or your own "
    "machine)"
)


@dataclass(frozen=True)
class TrainParams:
    """A training run as sent: images in any form `load_image` reads, numbers possibly as floats."""

    images: object = ()  # the training images (at least MIN_IMAGES); or none, and a `folder`
    captions: object = ()  # one per image ("" for none); the trigger word is put in front of each
    folder: object = ""  # a folder on the server (inside --train-dir) holding the images, instead of `images`
    trigger: object = ""  # the word that calls up what the LoRA learnt, e.g. "ohwx"
    name: object = ""  # file name of the LoRA, without .safetensors
    preset: object = DEFAULT_PRESET
    steps: object | None = None  # None: the preset's
    learning_rate: object | None = None
    rank: object | None = None
    resolution: object | None = None  # pixels of a bucket's side at 1:1; None: the preset's
    sample_prompts: object = ""  # one per line; the trigger word is put in front of each
    sample_every: object = 0  # steps between sample images; 0: only at the end
    sample_steps: object = 20  # denoising steps of a sample image
    checkpoint_every: object = 250  # steps between checkpoints; 0: only when cancelled
    seed: object = 0
    resume: object = False  # continue the run called `name` from its last checkpoint
    compile: object | None = None  # compile the training step (CUDA only); None: the preset's, on CUDA


@dataclass(frozen=True)
class TrainJob:
    """A validated run (see TrainParams)."""

    name: str
    trigger: str
    images: tuple[Image.Image, ...]  # RGB
    captions: tuple[str, ...]  # as given, without the trigger word
    preset: Preset
    steps: int
    learning_rate: float
    rank: int
    resolution: int
    sample_prompts: tuple[str, ...]  # with the trigger word
    sample_every: int
    sample_steps: int
    checkpoint_every: int
    seed: int
    output: Path  # the LoRA file to write
    run_dir: Path  # images, run.json, checkpoints
    resume: bool
    folder: Path | None = None  # the server folder the images came from (None: uploaded)
    compile: bool = False  # compile the step's transformer blocks (model.compile_blocks)

    @property
    def prompts(self) -> tuple[str, ...]:
        """The captions the model is trained on: the trigger word first."""
        return tuple(with_trigger(self.trigger, c) for c in self.captions)

    def settings_json(self) -> dict:
        """What repeats this run: every setting, the captions, the images' file names in the run folder."""
        return {
            "name": self.name,
            "trigger": self.trigger,
            "captions": list(self.captions),
            "images": [image_file(i) for i in range(len(self.images))],
            "source_folder": None if self.folder is None else str(self.folder),
            "preset": self.preset.name,
            "base": self.preset.base,
            "steps": self.steps,
            "learning_rate": self.learning_rate,
            "rank": self.rank,
            "resolution": self.resolution,
            "batch": self.preset.batch,
            "gradient_checkpointing": self.preset.checkpointing,
            "optimizer": self.preset.optimizer,
            "compile": self.compile,
            "sample_prompts": list(self.sample_prompts),
            "sample_every": self.sample_every,
            "sample_steps": self.sample_steps,
            "checkpoint_every": self.checkpoint_every,
            "seed": self.seed,
        }


def with_trigger(trigger: str, text: str) -> str:
    text = text.strip()
    if not trigger or text.lower().startswith(trigger.lower()):
        return text or trigger
    return f"{trigger}, {text}" if text else trigger


def image_file(index: int) -> str:
    return f"{index:04d}.png"


def run_dir(settings: Settings, name: str) -> Path:
    return settings.outputs_dir / RUNS_SUBDIR / name


def check_name(value: object, settings: Settings, library: LoraLibrary | None, resume: bool) -> tuple[str, Path]:
    """The LoRA's name and the file it will be written to (in the first LoRA folder)."""
    if not isinstance(value, str):
        raise InvalidInput("name", f"expected text, got {type(value).__name__}")
    name = value.strip().removesuffix(SAFE_SUFFIX)
    if not name:
        raise InvalidInput("name", "is empty; name the LoRA, e.g. my-style")
    if not _NAME.match(name) or ".." in name:
        raise InvalidInput(
            "name",
            f"{name!r} is not allowed: use up to 64 letters, digits, '-', '_' and '.', starting with a letter or "
            "digit (a name is one file in the LoRA folder, never a path)",
        )
    if not settings.lora_dirs:
        raise InvalidInput("name", "there is no LoRA folder to save to; start the app with --lora-dir FOLDER")
    output = settings.lora_dirs[0] / f"{name}{SAFE_SUFFIX}"
    taken = output.exists() or (library is not None and name in {e.name for e in library.entries()})
    if taken:
        raise InvalidInput("name", f"a LoRA named {name!r} exists already ({output}); choose another name")
    started = (run_dir(settings, name) / RUN_FILE).is_file()
    if started and not resume:
        raise InvalidInput("name", f"a run named {name!r} was started before; press Resume, or choose another name")
    if resume and not started:
        raise InvalidInput("name", f"there is no run named {name!r} to resume; start it with Train")
    return name, output


def _check_caption(where: str, caption: object, trigger: str, tokenizers: tuple) -> str:
    if not isinstance(caption, str):
        raise InvalidInput(where, f"expected text, got {type(caption).__name__}")
    caption = check_text(where, caption.strip())
    if not caption and not trigger:
        raise InvalidInput(where, "is empty and there is no trigger word; write a caption or set a trigger word")
    text = with_trigger(trigger, caption)
    for encoder, tokenizer in zip(("CLIP", "T5"), tokenizers, strict=True):
        limit = tokenizer.model_max_length
        n = len(tokenizer(text, truncation=False).input_ids)
        if n > limit:
            words = len(text.split())
            keep = max(1, words * limit // n - 1)
            raise InvalidInput(
                where,
                f"is {n} {encoder} tokens long with the trigger word, over its limit of {limit}; "
                f"shorten it to about {keep} words",
            )
    return caption


def check_captions(
    captions: object,
    trigger: str,
    count: int,
    tokenizers: tuple,
    field: str = "captions",
    files: tuple[str, ...] | None = None,
) -> tuple[str, ...]:
    """One caption per image, each (with the trigger word) within CLIP's 77 and T5's 512 tokens: past them
    the encoders stop reading, and the LoRA would learn from words the model never sees. `files`: the
    caption files the captions were read from, named in a refusal instead of `field[i]`."""
    if captions is None or captions == "" or (isinstance(captions, list | tuple) and not captions):
        captions = [""] * count  # none given: the trigger word alone
    if isinstance(captions, str) or not isinstance(captions, list | tuple):
        raise InvalidInput(field, f"expected one caption per image, got {type(captions).__name__}")
    if len(captions) != count:
        raise InvalidInput(field, f"has {len(captions)} captions for {count} images; give one per image")
    out = []
    for i, caption in enumerate(captions):
        try:
            out.append(_check_caption(f"{field}[{i}]", caption, trigger, tokenizers))
        except InvalidInput as err:
            if files is None:
                raise
            raise InvalidInput(field, f"{files[i]} {str(err).split(': ', 1)[1]}") from None
    return tuple(out)


def check_folder_captions(source: server_folder.FolderSet, captions: object) -> tuple[object, tuple[str, ...] | None]:
    """The captions of a folder's images: its caption files where it has any (an image without one gets
    the trigger word alone, as kohya's scripts do), else those typed or written by the VQA model. Returns
    (captions, the files they came from or None)."""
    if not source.captioned:
        return captions, None
    typed = [captions] if isinstance(captions, str) else list(captions or [])
    if any(isinstance(c, str) and c.strip() for c in typed):
        raise InvalidInput(
            "captions",
            f"the folder has caption files for {source.captioned} of its {len(source.images)} images (NAME.txt "
            "beside NAME.png); leave captions empty to train on them, or remove those files to type captions here",
        )
    files = tuple(
        f"{n} (no caption file)" if c is None else Path(n).with_suffix(CAPTION_SUFFIX).name
        for n, c in zip(source.names, source.captions, strict=True)
    )
    return [c or "" for c in source.captions], files


def check_images(images: object, settings: Settings) -> tuple[Image.Image, ...]:
    if images is None or isinstance(images, str | bytes | dict) or not isinstance(images, list | tuple):
        raise InvalidInput("images", f"expected a list of at least {MIN_IMAGES} images")
    if len(images) < MIN_IMAGES:
        raise InvalidInput("images", f"has {len(images)}; upload at least {MIN_IMAGES} (10 to 50 work well)")
    if len(images) > MAX_IMAGES:
        raise InvalidInput("images", f"has {len(images)}; use at most {MAX_IMAGES}")
    return tuple(load_image(img, f"images[{i}]", min_side=MIN_IMAGE_SIDE) for i, img in enumerate(images))


def _number(field: str, value: object, default: float, low: float, high: float, whole: bool) -> float:
    n = default if value is None else (check_int(field, value) if whole else check_float(field, value))
    check_range(field, n, low, high)
    return n


def _saved(settings: Settings, name: str) -> TrainParams:
    """The params a run was started with, its images from its folder."""
    folder = run_dir(settings, name)
    saved = json.loads((folder / RUN_FILE).read_text())
    images = []
    for file in saved["images"]:
        with Image.open(folder / file) as img:
            images.append(img.convert("RGB"))
    keys = ("trigger", "preset", "learning_rate", "rank", "resolution", "sample_every", "sample_steps", "seed")
    return TrainParams(
        images=images,
        captions=saved["captions"],
        name=name,
        steps=saved["steps"],
        sample_prompts="\n".join(saved["sample_prompts"]),
        checkpoint_every=saved["checkpoint_every"],
        resume=True,
        compile=saved.get("compile"),  # absent from runs saved before the option
        **{k: saved[k] for k in keys},
    )


def validate_training(
    p: TrainParams, settings: Settings, library: LoraLibrary | None, tokenizers: tuple, gpu_gib: float | None = None
) -> TrainJob:
    """Check every field of `p` (`tokenizers`: CLIP's and T5's, for the caption limits; `gpu_gib`: the GPU
    memory to check the preset against, measured when None); raise InvalidInput on the first bad one.

    Resuming (`p.resume`) takes the run's saved settings and images; `steps` may be raised to train on."""
    if settings.zero_gpu:
        raise InvalidInput("preset", ZERO_GPU_REFUSAL)
    resume = bool(p.resume)
    name, output = check_name(p.name, settings, library, resume)
    if resume:
        saved = _saved(settings, name)
        more = None if p.steps is None else check_int("steps", p.steps)
        changes: dict = {"steps": more} if more is not None and more > saved.steps else {}
        if p.compile is not None:  # the step's compile changes its speed, not what it computes
            changes["compile"] = p.compile
        p = TrainParams(**{**saved.__dict__, **changes})
    preset = check_preset(p.preset, settings.device, gpu_gib)
    if not isinstance(p.trigger, str):
        raise InvalidInput("trigger", f"expected text, got {type(p.trigger).__name__}")
    trigger = check_text("trigger", p.trigger.strip())
    if len(trigger) > 64 or "," in trigger:
        raise InvalidInput("trigger", "is one short word or phrase (at most 64 characters, no commas), e.g. ohwx")
    source = None
    if server_folder.given(p.folder):
        if p.images:
            raise InvalidInput("folder", "give the images either as uploads or as a folder, not both; clear one")
        source = server_folder.read_folder(p.folder, settings, MIN_IMAGES, MAX_IMAGES, MIN_IMAGE_SIDE)
        images = source.images
        raw_captions, files = check_folder_captions(source, p.captions)
        captions = check_captions(
            raw_captions, trigger, len(images), tokenizers, "folder" if files else "captions", files
        )
    else:
        images = check_images(p.images, settings)
        captions = check_captions(p.captions, trigger, len(images), tokenizers)
    if not isinstance(p.sample_prompts, str):
        raise InvalidInput(
            "sample_prompts", f"expected text (one prompt per line), got {type(p.sample_prompts).__name__}"
        )
    lines = [check_text("sample_prompts", s.strip()) for s in p.sample_prompts.splitlines() if s.strip()]
    if len(lines) > MAX_SAMPLE_PROMPTS:
        raise InvalidInput("sample_prompts", f"has {len(lines)} prompts; use at most {MAX_SAMPLE_PROMPTS}")
    prompts = tuple(with_trigger(trigger, s) for s in lines)
    check_captions(prompts, "", len(prompts), tokenizers, field="sample_prompts")
    resolution = int(_number("resolution", p.resolution, preset.resolution, MIN_SIDE, MAX_RESOLUTION, True))
    if resolution % 16:
        low = resolution // 16 * 16
        raise InvalidInput("resolution", f"{resolution} is not a multiple of 16; use {low} or {low + 16}")
    steps = int(_number("steps", p.steps, preset.steps, 1, MAX_STEPS, True))
    if p.compile is not None and not isinstance(p.compile, bool):
        raise InvalidInput("compile", f"expected true or false, got {p.compile!r}")
    if p.compile and not compiles(settings.device):
        raise InvalidInput(
            "compile", f"the compiled step runs on CUDA GPUs only, not on {settings.device}; turn it off"
        )
    return TrainJob(
        name=name,
        trigger=trigger,
        images=images,
        captions=captions,
        preset=preset,
        steps=steps,
        learning_rate=_number("learning_rate", p.learning_rate, preset.learning_rate, 1e-7, MAX_LEARNING_RATE, False),
        rank=int(_number("rank", p.rank, preset.rank, 1, MAX_RANK, True)),
        resolution=resolution,
        sample_prompts=prompts,
        sample_every=int(_number("sample_every", p.sample_every, 0, 0, MAX_STEPS, True)),
        sample_steps=int(_number("sample_steps", p.sample_steps, 20, 1, MAX_SAMPLE_STEPS, True)),
        checkpoint_every=int(_number("checkpoint_every", p.checkpoint_every, 250, 0, MAX_STEPS, True)),
        seed=seed if (seed := check_seed(p.seed)) != -1 else secrets.randbelow(SEED_MAX + 1),
        output=output,
        run_dir=run_dir(settings, name),
        resume=resume,
        folder=None if source is None else source.path,
        compile=preset.compile and compiles(settings.device) if p.compile is None else p.compile,
    )
