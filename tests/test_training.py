"""LoRA training on the tiny models: the loss falls, the trigger word moves the image toward the training
images, the file loads through the app's LoRA loader and through diffusers, cancel and resume continue
from the checkpoint, and each bad input is refused naming its field before any model is touched."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from flux_ui.core.errors import Cancelled, InvalidInput
from flux_ui.core.settings import Settings
from flux_ui.models.loras.library import header_metadata
from flux_ui.models.registry import Registry
from flux_ui.tasks.training import data
from flux_ui.tasks.training.params import TrainParams, validate_training
from flux_ui.tasks.training.run import CHECKPOINT, train_lora

TRIGGER = "ohwx"
STEPS = 40
FAST = {"preset": "80+ GB", "learning_rate": 2e-2, "rank": 8, "resolution": 64, "sample_steps": 4}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny models' matrices are too small to share between threads: on a busy 2-core machine two
    threads made a step 50 times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def training_images() -> list[Image.Image]:
    """Red pictures with a blue disc, in three shapes (so they fall in different buckets)."""
    out = []
    for i, (w, h) in enumerate([(256, 256), (320, 256), (256, 352), (256, 256), (288, 288)]):
        img = Image.new("RGB", (w, h), (210, 40 + 10 * i, 30))
        ImageDraw.Draw(img).ellipse((60, 60, 180, 180), fill=(30, 40, 200))
        out.append(img)
    return out


@pytest.fixture(scope="module")
def work(tiny_dir, tmp_path_factory) -> tuple[Settings, Registry]:
    folder = tmp_path_factory.mktemp("training")
    settings = Settings(
        tiny=True, tiny_dir=tiny_dir, model_root=tiny_dir, outputs_dir=folder / "outputs", lora_dirs=(folder / "loras",)
    )
    return settings, Registry(settings)


def params(name: str, **kw) -> TrainParams:
    base = {
        "images": training_images(),
        "captions": ["a red photo with a blue circle"] * 5,
        "trigger": TRIGGER,
        "name": name,
        "steps": STEPS,
        "sample_prompts": "a photo",
        "checkpoint_every": 0,
        **FAST,
    }
    return TrainParams(**{**base, **kw})


def validate(work, p: TrainParams, gpu_gib: float | None = None):
    settings, reg = work
    return validate_training(p, settings, reg.loras, reg.tokenizers(), gpu_gib)


@pytest.fixture(scope="module")
def trained(work):
    settings, reg = work
    job = validate(work, params("red-disc", sample_every=20))
    events = []
    result = train_lora(reg, job, events.append)
    return job, result, events


def channel_means(latents: torch.Tensor) -> torch.Tensor:
    """(16,) mean of each latent channel: the colour of a flat picture, whatever its size."""
    return latents.float().reshape(16, -1).mean(1)


def trigger_latents(pipe, steps: int, seed: int) -> torch.Tensor:
    """The packed latents `pipe` makes for the trigger word alone, 64x64."""
    gen = torch.Generator().manual_seed(seed)
    return pipe(TRIGGER, width=64, height=64, num_inference_steps=steps, output_type="latent", generator=gen).images


def generated_means(reg: Registry, loras) -> torch.Tensor:
    """Channel means of the latents the app's pipeline makes for the trigger word, with `loras` active."""
    from diffusers import FluxPipeline

    with reg.pipeline("dev", loras) as pipe:
        packed = trigger_latents(pipe, 8, 3)
        latents = FluxPipeline._unpack_latents(packed, 64, 64, pipe.vae_scale_factor)
    return channel_means(latents[0])


def test_loss_falls_and_the_trigger_word_moves_the_image(work, trained):
    settings, reg = work
    job, result, events = trained
    assert result.steps == STEPS and len(result.losses) == STEPS
    first, last = sum(result.losses[:8]) / 8, sum(result.losses[-8:]) / 8
    assert last < 0.9 * first, (first, last)
    assert [e.step for e in events if e.phase == "training"] == list(range(1, STEPS + 1))
    assert [len(e.samples) for e in events if e.samples] == [1, 1]  # at step 20 and at the end
    target = torch.stack(
        [channel_means(lat) for lat, _ in data.encode_images(reg.shared().vae, job.images, 64, "cpu")]
    ).mean(0)
    base, tuned = generated_means(reg, ()), generated_means(reg, (("red-disc", 1.0),))
    # The tiny transformer is random and 32 wide (its latents are 64): a LoRA cannot teach it the training
    # set whole, but the picture must move toward it: nearer, and most of the move in its direction. The
    # untrained LoRA (B = 0: the base model exactly) fails both.
    assert (tuned - target).norm() < 0.97 * (base - target).norm()
    cos = torch.nn.functional.cosine_similarity(tuned - base, target - base, dim=0)
    assert cos > 0.3, float(cos)


def test_the_file_is_a_lora_like_any_other(work, trained):
    settings, reg = work
    job, result, _ = trained
    assert result.path == settings.lora_dirs[0] / "red-disc.safetensors"
    entry = next(e for e in reg.loras.entries() if e.name == "red-disc")  # listed at once
    assert entry.trigger_words == (TRIGGER,)
    meta = header_metadata(result.path)
    assert meta["modelspec.architecture"] == "flux-1-dev/lora" and meta["ss_network_dim"] == "8"
    assert meta["ss_steps"] == str(STEPS) and TRIGGER in meta["ss_tag_frequency"]
    sidecar = result.path.with_suffix(".json")
    assert '"learning_rate": 0.02' in sidecar.read_text()
    from safetensors import safe_open

    with safe_open(str(result.path), "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("transformer.") and ".lora_" in k for k in keys)
    assert any("single_transformer_blocks.0.proj_mlp" in k for k in keys)


def test_diffusers_loads_it_and_makes_what_the_app_makes(work, trained, tiny_dir):
    from diffusers import FluxPipeline

    settings, reg = work
    _, result, _ = trained
    shared = reg.shared()  # the same encoders and VAE as the app's; the transformer is diffusers' own load
    pipe = FluxPipeline.from_pretrained(
        tiny_dir / "black-forest-labs/FLUX.1-dev",
        text_encoder=shared.text_encoder,
        tokenizer=shared.tokenizer,
        text_encoder_2=shared.text_encoder_2,
        tokenizer_2=shared.tokenizer_2,
        vae=shared.vae,
    )
    pipe.set_progress_bar_config(disable=True)

    base = trigger_latents(pipe, 4, 5)
    pipe.load_lora_weights(str(result.path), adapter_name="trained")
    theirs = trigger_latents(pipe, 4, 5)
    with reg.pipeline("dev", (("red-disc", 1.0),)) as app_pipe:
        ours = trigger_latents(app_pipe, 4, 5)
    assert not torch.allclose(theirs, base, atol=1e-3)
    torch.testing.assert_close(theirs, ours, atol=2e-3, rtol=1e-3)


def test_cancel_then_resume_continues_from_the_checkpoint(work):
    settings, reg = work
    steps = 10
    job = validate(work, params("resumed", steps=steps, sample_prompts=""))
    with pytest.raises(Cancelled):
        train_lora(reg, job, should_stop=lambda: True)  # stops after its first step
    assert (job.run_dir / CHECKPOINT).is_file() and not job.output.exists()
    with pytest.raises(InvalidInput, match="press Resume"):
        validate(work, params("resumed"))
    resumed_job = validate(work, TrainParams(name="resumed", resume=True))
    assert resumed_job.captions == job.captions and resumed_job.steps == steps
    # Resume may turn the compiled step on or off (validated as at the start: CUDA only, so refused here).
    with pytest.raises(InvalidInput, match="compile: the compiled step runs on CUDA GPUs only"):
        validate(work, TrainParams(name="resumed", resume=True, compile=True))
    assert not validate(work, TrainParams(name="resumed", resume=True, compile=False)).compile
    done = []
    resumed = []
    result = train_lora(reg, resumed_job, lambda ev: (done if ev.phase == "training" else resumed).append(ev))
    assert [ev.step for ev in done] == list(range(2, steps + 1))  # from the checkpoint's step on
    assert resumed[1].phase == "resumed" and len(resumed[1].history) == 1  # after "preparing"
    straight = train_lora(reg, validate(work, params("straight", steps=steps, sample_prompts="")))
    torch.testing.assert_close(torch.tensor(result.losses), torch.tensor(straight.losses), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("change", "field", "fix"),
    [
        ({"images": training_images()[:3]}, "images", "at least 4"),
        ({"images": [*training_images()[:4], b"not an image"]}, "images[4]", "is not an image"),
        ({"images": [*training_images()[:4], Image.new("RGB", (300, 120))]}, "images[4]", "at least 256"),
        ({"captions": ["word"] * 4}, "captions", "one per image"),
        ({"captions": ["a " + "red " * 90] + ["x"] * 4}, "captions[0]", "CLIP tokens"),
        ({"captions": [""] * 5, "trigger": ""}, "captions[0]", "trigger word"),
        ({"name": "../escape"}, "name", "never a path"),
        ({"name": "sub/dir"}, "name", "never a path"),
        ({"name": ""}, "name", "is empty"),
        ({"preset": "huge"}, "preset", "choose one of"),
        ({"resolution": 100}, "resolution", "use 96 or 112"),
        ({"steps": 0}, "steps", "out of range"),
        ({"learning_rate": 1.0}, "learning_rate", "out of range"),
        ({"sample_prompts": "a\nb\nc\nd\ne"}, "sample_prompts", "at most 4"),
    ],
)
def test_bad_input_is_refused_naming_the_field(work, change, field, fix):
    with pytest.raises(InvalidInput) as err:
        validate(work, params(**{"name": "bad", **change}))
    assert err.value.field == field and fix in str(err.value)


def test_a_preset_larger_than_the_gpu_is_refused(work):
    with pytest.raises(InvalidInput) as err:
        validate(work, params("big", preset="24 GB"), gpu_gib=15.6)
    assert err.value.field == "preset" and "choose '16 GB'" in str(err.value)


def test_a_name_that_exists_is_refused(work):
    settings, _ = work
    folder: Path = settings.lora_dirs[0]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "taken.safetensors").write_bytes(b"")
    with pytest.raises(InvalidInput, match="exists already"):
        validate(work, params("taken"))
    with pytest.raises(InvalidInput, match="no run named"):
        validate(work, TrainParams(name="never-started", resume=True))


def test_buckets_keep_the_area_and_the_aspect():
    choices = data.buckets(1024)
    assert (1024, 1024) in choices and all(w % 64 == 0 and h % 64 == 0 and w * h <= 1024**2 for w, h in choices)
    assert data.bucket_for((1600, 900), choices) in [(1344, 768), (1280, 768), (1344, 704)]
    assert data.bucket_for((900, 1600), choices)[1] > data.bucket_for((900, 1600), choices)[0]


def test_the_small_presets_train_on_a_4bit_base(work, monkeypatch):
    """The 12/16/24 GB presets quantise the blocks' linear layers to NF4 (bitsandbytes runs on the CPU too)."""
    import bitsandbytes as bnb

    from flux_ui.tasks.training import run

    settings, reg = work
    seen = {}
    place = run._transformer

    def spy(registry, job):
        seen["model"] = place(registry, job)
        return seen["model"]

    monkeypatch.setattr(run, "_transformer", spy)
    job = validate(work, params("four-bit", preset="12 GB", steps=3, sample_prompts=""))
    result = train_lora(reg, job)
    layers = [m for m in seen["model"].modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) >= 10 and seen["model"].transformer_blocks[0].ff.net[2].base_layer in layers
    assert seen["model"].is_gradient_checkpointing
    assert all(torch.isfinite(torch.tensor(result.losses))) and result.path.is_file()


def test_captions_come_from_the_vqa_model_one_per_image(work):
    from flux_ui.tasks.training.captions import caption_images

    settings, reg = work
    seen = []
    captions = caption_images(reg, training_images()[:2], "Describe it.", lambda i, c: seen.append(i))
    assert len(captions) == 2 and seen == [0, 1] and all(isinstance(c, str) for c in captions)
    with pytest.raises(InvalidInput, match="images: upload the training images first"):
        caption_images(reg, [], "Describe it.")
    with pytest.raises(InvalidInput) as err:
        caption_images(reg, [training_images()[0], b"junk"], "Describe it.")
    assert err.value.field == "images[1]"
    with pytest.raises(Cancelled):
        caption_images(reg, training_images()[:2], "Describe it.", should_stop=lambda: True)


def test_a_diverging_run_names_the_learning_rate_and_can_start_again(work, monkeypatch):
    from flux_ui.tasks.training import model

    settings, reg = work
    job = validate(work, params("diverges", steps=3, sample_prompts=""))
    # Divergence takes many steps on the tiny model: the real loss times NaN stands for it.
    loss = model.flow_matching_loss
    monkeypatch.setattr(model, "flow_matching_loss", lambda *a, **k: loss(*a, **k) * float("nan"))
    with pytest.raises(InvalidInput) as err:
        train_lora(reg, job)
    assert err.value.field == "learning_rate" and "lower it" in str(err.value)
    assert not job.run_dir.exists() and not job.output.exists()
    monkeypatch.undo()
    validate(work, params("diverges"))  # the name is free again
