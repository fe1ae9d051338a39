"""`Model hash` and `Lora hashes` in our PNGs as A1111 and Forge write them, the LoRAs as prompt tags for
other tools, each file hashed once, and Load parameters reading our own images back without doubling the
tags."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from flux_ui.media.foreign_metadata import from_a1111
from flux_ui.media.metadata import meta_from_parameters, read_parameters
from flux_ui.models import hashes
from flux_ui.models.loras.library import with_tags
from flux_ui.models.registry import Registry
from flux_ui.output.files import save_image
from flux_ui.tasks.text_to_image import TextToImageParams, text_to_image, validate_text_to_image
from flux_ui.tiny import files as tiny_files
from flux_ui.tiny.loras import kohya_state, save

DEV = "black-forest-labs/FLUX.1-dev"


@pytest.fixture
def fresh_hashes(monkeypatch, tmp_path):
    """No hash known yet, the cache file in tmp_path, and every sha256 pass over a file counted."""
    monkeypatch.setenv("FLUX_UI_HASH_CACHE", str(tmp_path / "hashes.json"))
    monkeypatch.setattr(hashes, "_futures", {})
    passes = []
    real = hashes._sha256

    def counting(path, skip_header):
        passes.append(Path(path).name)
        return real(path, skip_header)

    monkeypatch.setattr(hashes, "_sha256", counting)
    return passes


def test_hashes_are_a1111s(tmp_path, fresh_hashes):
    """Model hash: sha256 of the whole file, 10 digits; LoRA hash: sha256 of the tensor data after the
    safetensors header, 12 digits (Kohya's and A1111's "addnet" hash, Civitai's AutoV3)."""
    path = save(tmp_path / "ink.safetensors", kohya_state(5), metadata={"ss_output_name": "ink"})
    data = path.read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    assert hashes.model_hash(path) == hashlib.sha256(data).hexdigest()[:10]
    assert hashes.lora_hash(path) == hashlib.sha256(data[header:]).hexdigest()[:12]
    # The LoRA hash ignores the header: new metadata, same hash.
    again = save(tmp_path / "ink2.safetensors", kohya_state(5), metadata={"ss_output_name": "renamed"})
    assert hashes.lora_hash(again) == hashes.lora_hash(path)
    assert hashes.model_hash(again) != hashes.model_hash(path)


def test_each_file_is_hashed_once_and_big_ones_are_remembered_across_runs(tmp_path, fresh_hashes, monkeypatch):
    path = save(tmp_path / "model.safetensors", kohya_state(6))
    for _ in range(3):
        hashes.model_hash(path)
    assert fresh_hashes == ["model.safetensors"]
    monkeypatch.setattr(hashes, "HASH_CACHE_MIN_BYTES", 0)  # as if it were a multi-GB file
    other = save(tmp_path / "big.safetensors", kohya_state(7))
    first = hashes.model_hash(other)
    recorded = json.loads((tmp_path / "hashes.json").read_text())
    assert [v for k, v in recorded.items() if "big.safetensors" in k] == [
        hashlib.sha256(other.read_bytes()).hexdigest()
    ]
    monkeypatch.setattr(hashes, "_futures", {})  # a new process: memory empty, the cache file stays
    assert hashes.model_hash(other) == first
    assert fresh_hashes.count("big.safetensors") == 1
    save(other, kohya_state(8))  # changed on disk (size or time): hashed again
    assert hashes.model_hash(other) != first


@pytest.fixture
def models_dir(tiny_dir, tmp_path) -> Path:
    models = tmp_path / "ComfyUI" / "models"
    tiny_files._save(models / "unet" / "flux1-dev.safetensors", tiny_files.bfl_transformer(tiny_dir, DEV))
    tiny_files._save(models / "vae" / "ae.safetensors", tiny_files.ae_vae(tiny_dir))
    tiny_files._save(models / "clip" / "clip_l.safetensors", tiny_files.clip_l(tiny_dir))
    tiny_files._save(models / "text_encoders" / "t5xxl_fp16.safetensors", tiny_files.t5xxl(tiny_dir))
    save(models / "loras" / "ink.safetensors", kohya_state(9, guidance=True))
    return models.parent


def test_images_carry_model_and_lora_hashes_and_lora_tags(settings, models_dir, fresh_hashes):
    """A PNG from a single-file transformer with a LoRA says what A1111 would: `Model hash`, `Lora
    hashes` and the LoRA as a prompt tag; reading it back gives the LoRA once, not twice."""
    lora = models_dir / "models/loras/ink.safetensors"
    registry = Registry(replace(settings, models_dirs=(models_dir,), lora_dirs=(lora.parent,)))
    params = TextToImageParams(prompt="a red fox", variant="dev", width=64, height=64, steps=1, seed=3,
                               loras=(("ink", 0.8),))  # fmt: skip
    result = text_to_image(registry, validate_text_to_image(params, registry.settings, registry.loras))
    text_to_image(registry, validate_text_to_image(params, registry.settings, registry.loras))
    path = save_image(result.images[0].image, result.images[0].meta, settings.outputs_dir)
    text = read_parameters(Image.open(path))
    model = hashes.model_hash(models_dir / "models/unet/flux1-dev.safetensors")
    assert model == hashlib.sha256((models_dir / "models/unet/flux1-dev.safetensors").read_bytes()).hexdigest()[:10]
    prompt, settings_line = text.split("\n")
    assert prompt == "a red fox <lora:ink:0.8>"
    assert f"Model hash: {model}, Model: FLUX.1 [dev]" in settings_line
    assert f'Lora hashes: "ink: {hashes.lora_hash(lora)}"' in settings_line
    assert fresh_hashes.count("flux1-dev.safetensors") == 1  # two requests, one pass over the file
    # Read back: the tag is in the LoRAs, not in the prompt as well.
    meta = meta_from_parameters(text)
    assert (meta.prompt, meta.loras) == ("a red fox", (("ink", 0.8),))
    loaded = from_a1111(text)
    assert (loaded.prompt, loaded.loras) == ("a red fox", (("ink", 0.8),))
    assert not any("hash" in n for n in loaded.notes)
    # What the text-to-image tab puts in the prompt box: one tag.
    assert with_tags(loaded.prompt, [n for n, _ in loaded.loras], dict(loaded.loras)) == "a red fox <lora:ink:0.8>"


def test_a_tag_the_user_wrote_is_not_written_twice(settings, models_dir, fresh_hashes):
    registry = Registry(replace(settings, lora_dirs=(models_dir / "models/loras",)))
    params = TextToImageParams(prompt="a <lora:ink:0.5> fox", variant="dev", width=64, height=64, steps=1, seed=3)
    result = text_to_image(registry, validate_text_to_image(params, registry.settings, registry.loras))
    path = save_image(result.images[0].image, result.images[0].meta, settings.outputs_dir)
    text = read_parameters(Image.open(path))
    assert text.split("\n")[0] == "a <lora:ink:0.5> fox"
    assert "Model hash" not in text  # the tiny repo in diffusers layout is no one file
    assert meta_from_parameters(text).prompt == "a fox"
