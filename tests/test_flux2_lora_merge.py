"""FLUX.2 LoRAs on compiled and float8 transformers (the speed profiles, the fp8-24gb policy): merged into
the weights per request, as FLUX.1's are (`models.loras.merge`), on the tiny [klein] 4B transformer."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from flux_ui.core.errors import InvalidInput
from flux_ui.models import speed
from flux_ui.models.registry import Registry
from flux_ui.tasks.text_to_image import TextToImageParams, text_to_image, validate_text_to_image
from flux_ui.tiny.flux2 import flux2_lora_state
from flux_ui.tiny.loras import kohya_state, save

KLEIN = "flux2-klein-4b"
STYLED = "a red fox <lora:klein-ink:1>"


@pytest.fixture
def lora_settings(settings, tmp_path):
    folder = tmp_path / "loras"
    save(folder / "klein-ink.safetensors", flux2_lora_state(1))
    save(folder / "flux1-fox.safetensors", kohya_state(2))
    return replace(settings, lora_dirs=(folder,))


def image(registry: Registry, prompt: str) -> np.ndarray:
    params = TextToImageParams(prompt, KLEIN, width=64, height=64, steps=2, seed=5)
    job = validate_text_to_image(params, registry.settings, registry.loras)
    return np.asarray(text_to_image(registry, job).images[0].image).astype(np.int16)


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def unchanged(before: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
    after = module.state_dict()
    same = (torch.equal(before[k].view(torch.uint8), after[k].view(torch.uint8)) for k in before)
    return list(after) == list(before) and all(same)


def test_a_compiled_flux2_transformer_gets_the_lora_merged_and_matches_peft(lora_settings):
    reference = image(Registry(lora_settings), STYLED)  # eager: PEFT's layers
    fast = Registry(lora_settings)
    transformer = fast.transformer(KLEIN)
    transformer.compile_repeated_blocks(backend="eager", fullgraph=True, dynamic=True)
    base, before = image(fast, "a red fox"), state(transformer)
    np.testing.assert_array_equal(image(fast, STYLED), reference)
    assert not any("lora" in k for k in transformer.state_dict())  # merged, no PEFT layer added
    np.testing.assert_array_equal(image(fast, "a red fox"), base)
    assert unchanged(before, transformer)


def test_a_float8_flux2_transformer_takes_the_lora(lora_settings, monkeypatch):
    bf16 = Registry(lora_settings)
    effect = image(bf16, STYLED) - image(bf16, "a red fox")
    monkeypatch.setattr(speed, "FP8_MIN_FEATURES", 16)  # the tiny model's layers are 32 to 288 wide
    fp8 = Registry(lora_settings)
    transformer = fp8.transformer(KLEIN)
    assert speed.quantize_fp8(transformer) > 0
    base, before = image(fp8, "a red fox"), state(transformer)
    styled = image(fp8, STYLED)
    assert np.array_equal(image(fp8, STYLED), styled)  # seeded rounding: the same image again
    np.testing.assert_array_equal(image(fp8, "a red fox"), base)  # the base model back, bit for bit
    assert unchanged(before, transformer)
    # The merged LoRA changes the float8 model's image as PEFT's layers change the bf16 model's.
    assert np.corrcoef(effect.ravel(), (styled - base).ravel())[0, 1] > 0.5


def test_a_flux1_lora_on_a_float8_flux2_transformer_is_refused_and_changes_nothing(lora_settings, monkeypatch):
    monkeypatch.setattr(speed, "FP8_MIN_FEATURES", 16)
    fp8 = Registry(lora_settings)
    transformer = fp8.transformer(KLEIN)
    speed.quantize_fp8(transformer)
    before = state(transformer)
    with pytest.raises(InvalidInput, match="flux1-fox' does not fit FLUX.2 \\[klein\\] 4B"):
        image(fp8, "a red fox <lora:flux1-fox:1>")
    assert unchanged(before, transformer)
