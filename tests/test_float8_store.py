"""--keep-float8: the float8 transformer written once and read back on the next start, the same image."""

import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from flux_ui.core.settings import settings_from_args
from flux_ui.core.variants import VARIANTS
from flux_ui.models import float8_store, loading, speed
from flux_ui.models.registry import Registry
from flux_ui.models.speed import Float8RowwiseLinear
from flux_ui.tasks.text_to_image import TextToImageParams, text_to_image, validate_text_to_image


def run(registry, variant="dev"):
    params = TextToImageParams(prompt="a red fox", variant=variant, width=64, height=64, steps=2, seed=3)
    params = validate_text_to_image(params, registry.settings, registry.loras)
    return np.asarray(text_to_image(registry, params).images[0].image)


def settle(registry):
    for thread in registry.float8_writes:
        thread.join(timeout=60)


@pytest.fixture
def fp8_settings(settings, tmp_path, monkeypatch):
    """The fp8-24gb policy (float8 at load, which runs on the CPU too) with --keep-float8; the tiny
    models' 32-wide layers count as large enough for float8 (real FLUX layers are 3072 and up)."""
    monkeypatch.setattr(speed, "FP8_MIN_FEATURES", 16)
    return replace(settings, memory_policy="fp8-24gb", keep_float8=True, compile_cache=tmp_path / "cache")


def test_the_second_start_reads_the_kept_float8_transformer_and_makes_the_same_image(fp8_settings, monkeypatch):
    first = Registry(fp8_settings)
    image = run(first)
    settle(first)
    kept = float8_store.entry(fp8_settings, VARIANTS["dev"])
    assert kept.is_file() and kept.parent == fp8_settings.compile_cache / float8_store.FOLDER
    assert first.load_counts["transformer:dev"] == 1

    def no_folder_read(*args, **kwargs):
        raise AssertionError("the transformer folder was read although a float8 copy is kept")

    monkeypatch.setattr(loading, "load_transformer", no_folder_read)
    second = Registry(fp8_settings)
    again = run(second)
    assert second.load_counts["transformer:dev:float8"] == 1 and not second.float8_writes
    assert again.tobytes() == image.tobytes()  # the stored values are the conversion's, exactly
    layers = [m for m in second.transformer("dev").modules() if isinstance(m, Float8RowwiseLinear)]
    reference = [m for m in first.transformer("dev").modules() if isinstance(m, Float8RowwiseLinear)]
    assert len(layers) == len(reference) > 0
    assert all(m.weight_fp8.dtype == torch.float8_e4m3fn for m in layers)


def test_a_changed_source_makes_a_new_entry_and_the_stale_one_goes(fp8_settings, tiny_dir, tmp_path):
    root = tmp_path / "models"
    shutil.copytree(tiny_dir / "black-forest-labs" / "FLUX.1-dev", root / "black-forest-labs" / "FLUX.1-dev")
    settings = replace(fp8_settings, model_root=root)
    registry = Registry(settings)
    registry.transformer("dev")
    settle(registry)
    old = float8_store.entry(settings, VARIANTS["dev"])
    weights = next((root / "black-forest-labs" / "FLUX.1-dev" / "transformer").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes())  # new modification time: the weights may have changed
    new = float8_store.entry(settings, VARIANTS["dev"])
    assert new != old and not new.is_file()
    registry = Registry(settings)
    registry.transformer("dev")
    settle(registry)
    assert new.is_file() and not old.exists()


def test_nothing_is_kept_unless_asked_or_without_float8(settings, fp8_settings):
    assert float8_store.entry(replace(fp8_settings, keep_float8=False), VARIANTS["dev"]) is None
    assert float8_store.entry(replace(settings, keep_float8=True), VARIANTS["dev"]) is None  # bf16 on the CPU
    registry = Registry(replace(fp8_settings, keep_float8=False))
    registry.transformer("dev")
    assert not registry.float8_writes
    assert not (fp8_settings.compile_cache / float8_store.FOLDER).exists()


def test_keep_float8_flag_and_environment(monkeypatch):
    assert settings_from_args(["--tiny", "--keep-float8"]).keep_float8
    assert not settings_from_args(["--tiny"]).keep_float8
    monkeypatch.setenv("FLUX_UI_KEEP_FLOAT8", "1")
    assert settings_from_args(["--tiny"]).keep_float8
