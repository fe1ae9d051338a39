"""ComfyUI's newer mixed-precision files (its QUANTIZATION.md, format 1.0): float8_e4m3fn layers with a
`weight_scale`, an `input_scale` and a per-layer `comfy_quant` JSON marker, other layers in bf16. The scales
are applied (ignored, every weight would be off by its scale), the float8 values go to the float8 layers as
they are under a float8 policy, and layers in formats this app cannot read (nvfp4, int8) are refused with the
file named."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from test_quantized_files import DEV, image, shared_files

from flux_ui.core.errors import ModelUnavailableError
from flux_ui.core.variants import VARIANTS
from flux_ui.models import files, float8_file, single_file
from flux_ui.models.registry import Registry
from flux_ui.tiny import files as tiny_files

FP8_RELATIVE = 2**-4  # float8 e4m3's relative rounding bound (3 mantissa bits)


@pytest.fixture
def mixed(tiny_dir, tmp_path):
    models = tmp_path / "ComfyUI" / "models"
    state = tiny_files.fp8_mixed(tiny_files.bfl_transformer(tiny_dir, DEV))
    tiny_files._save(models / "diffusion_models" / "flux1-dev-fp8mixed.safetensors", state)
    shared_files(models, tiny_dir)
    return models / "diffusion_models" / "flux1-dev-fp8mixed.safetensors", state


def test_a_mixed_file_is_a_scaled_float8_transformer(mixed):
    path, _ = mixed
    found = files.identify(path)
    assert (found.kind, found.variant, found.format) == ("transformer", "dev", "fp8-scaled"), found


def test_its_weights_load_within_float8_rounding_with_the_scales_applied(settings, mixed, tiny_dir):
    path, state = mixed
    loaded = single_file.transformer(settings, VARIANTS["dev"], str(path)).state_dict()
    original = tiny_files.transformer_state(tiny_dir, DEV)
    assert loaded.keys() == original.keys()
    for name, want in original.items():
        got, want = loaded[name].float(), want.float()
        bound = FP8_RELATIVE * want.abs() + 2**-9 * max(1.0, float(want.abs().max()))
        assert ((got - want).abs() <= bound).all(), name
    assert torch.equal(loaded["x_embedder.weight"], original["x_embedder.weight"])  # a bf16 layer: as it was
    raw = state["double_blocks.0.img_mlp.0.weight"].float()
    assert raw.abs().max() > 100 * original["transformer_blocks.0.ff.net.0.proj.weight"].float().abs().max()


def test_under_a_float8_policy_the_values_go_to_the_float8_layers(settings, mixed, monkeypatch):
    from flux_ui.models import speed

    monkeypatch.setattr(speed, "FP8_MIN_FEATURES", 16)  # the tiny layers count as large
    path, state = mixed
    fp8 = replace(settings, memory_policy="fp8-24gb")
    assert float8_file.wanted(fp8, files.identify(path))
    model = single_file.transformer(fp8, VARIANTS["dev"], str(path))
    to_k = model.transformer_blocks[0].attn.to_k
    assert isinstance(to_k, speed.Float8RowwiseLinear)
    rows = state["double_blocks.0.img_attn.qkv.weight"][32:64]
    assert torch.equal(to_k.weight_fp8.view(torch.uint8), rows.view(torch.uint8))
    assert torch.equal(to_k.weight_scale, state["double_blocks.0.img_attn.qkv.weight_scale"].expand(1, 32))


def test_the_image_is_close_to_full_precision(settings, mixed):
    path, _ = mixed
    got = image(Registry(replace(settings, models_dirs=(path.parents[2],)))).astype(np.int16)
    want = image(Registry(settings)).astype(np.int16)
    diff = np.abs(got - want)
    print(f"mixed fp8 vs full precision: mean {diff.mean():.2f}, max {diff.max()} of 255")
    assert diff.mean() < 2


def test_layers_in_other_formats_are_refused_naming_the_file(settings, mixed, tmp_path):
    """An nvfp4 layer (two 4-bit values per byte, block scales) among float8 ones: the scan says what the file
    is and what to use instead, and asking for it by name says the same before anything is read."""
    _, state = mixed
    state = dict(state)
    layer = "double_blocks.0.img_mlp.0"
    out_f, in_f = state[f"{layer}.weight"].shape
    state[f"{layer}.weight"] = torch.zeros(out_f, in_f // 2, dtype=torch.uint8)
    state[f"{layer}.weight_scale"] = torch.ones(out_f, in_f // 16, dtype=torch.float8_e4m3fn)
    state[f"{layer}.comfy_quant"] = torch.tensor(list(json.dumps({"format": "nvfp4"}).encode()), dtype=torch.uint8)
    path = tmp_path / "unet" / "flux1-dev-nvfp4mixed.safetensors"
    tiny_files._save(path, state)
    found = files.identify(path)
    assert found.kind == "skipped" and "1 layers stored as U8" in found.reason and "nvfp4" in found.reason
    with pytest.raises(ModelUnavailableError) as err:
        single_file.transformer(settings, VARIANTS["dev"], str(path))
    assert path.name in str(err.value) and "fp8 (float8_e4m3fn), GGUF or bf16 file" in str(err.value)
