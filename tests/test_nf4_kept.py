"""Forge's NF4 files kept in 4 bits (bitsandbytes' Linear4bit on the file's packed weights), the path the app
takes on CUDA: the same weights and outputs as the unpacked path, exactly. bitsandbytes runs 4-bit layers on
the CPU too, so the builder is checked here; that the app picks it is checked on a CUDA GPU only."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from flux_ui.core.variants import VARIANTS
from flux_ui.models import files, nf4_file, quantized, single_file
from flux_ui.models.registry import Registry
from flux_ui.tiny import files as tiny_files
from flux_ui.tiny.quantized_files import nf4_state

DEV = "black-forest-labs/FLUX.1-dev"


@pytest.fixture(scope="module", params=[False, True], ids=["v2", "nested"])
def nf4_file_path(request, tiny_dir, tmp_path_factory) -> Path:
    """[dev] as an NF4 file: plain float32 scales ("v2") or nested ones (the first NF4 files)."""
    path = tmp_path_factory.mktemp("nf4") / "flux1-dev-bnb-nf4.safetensors"
    return tiny_files._save(path, nf4_state(tiny_files.bfl_transformer(tiny_dir, DEV), nested=request.param))


def inputs(config) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "hidden_states": torch.randn(1, 16, config.in_channels, generator=g).bfloat16(),
        "encoder_hidden_states": torch.randn(1, 8, config.joint_attention_dim, generator=g).bfloat16(),
        "pooled_projections": torch.randn(1, config.pooled_projection_dim, generator=g).bfloat16(),
        "timestep": torch.tensor([0.5]).bfloat16(),
        "guidance": torch.tensor([3.5]).bfloat16(),
        "img_ids": torch.zeros(16, 3),
        "txt_ids": torch.zeros(8, 3),
        "return_dict": False,
    }


def test_kept_in_4_bits_equals_the_unpacked_transformer(settings, nf4_file_path):
    import bitsandbytes as bnb
    from bitsandbytes.functional import dequantize_4bit

    s = replace(settings, dtype=torch.bfloat16)
    found = files.identify(nf4_file_path)
    kept = nf4_file.transformer(nf4_file_path, found, single_file.config_folder(s, "dev"), s.dtype)
    unpacked = single_file.transformer(s, VARIANTS["dev"], str(nf4_file_path))  # the CPU path
    layers = {n: m for n, m in kept.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    linears = [n for n, m in unpacked.named_modules() if isinstance(m, torch.nn.Linear)]
    assert sorted(layers) == sorted(linears)  # every linear layer stays 4-bit, the split ones included
    for name, layer in layers.items():
        assert layer.weight.dtype == torch.uint8
        weight = dequantize_4bit(layer.weight.data, layer.weight.quant_state)
        assert torch.equal(weight, unpacked.get_submodule(name).weight), name
    assert quantized.is_prequantized(kept) and not quantized.is_prequantized(unpacked)
    packed = sum(m.weight.numel() for m in layers.values())
    assert packed * 2 == sum(unpacked.get_submodule(n).weight.numel() for n in layers)  # two weights a byte
    with torch.no_grad():
        assert torch.equal(kept(**inputs(kept.config))[0], unpacked(**inputs(unpacked.config))[0])


def test_a_cpu_run_unpacks(settings, nf4_file_path):
    assert not nf4_file.wanted(settings, files.identify(nf4_file_path))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the app keeps NF4 in 4 bits there)")
def test_on_cuda_the_app_keeps_nf4_in_4_bits(settings, nf4_file_path):
    import bitsandbytes as bnb

    s = replace(settings, device="cuda", dtype=torch.bfloat16, model_paths={"dev": str(nf4_file_path)})
    assert nf4_file.wanted(s, files.identify(nf4_file_path))
    model = Registry(s).transformer("dev")
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.weight.device.type == "cuda" and m.weight.dtype == torch.uint8 for m in layers)


def test_the_app_runs_a_transformer_kept_in_4_bits(settings, nf4_file_path, monkeypatch):
    """Through the registry and the pipeline (placement, the speed profiles' checks), as on CUDA: forced on
    here, the image is the unpacked path's within one level of 255: the same weights, but under these float32
    settings bitsandbytes' CPU layers compute in the dtype the weights were stored in (bf16; 0.5% apart from a
    float32 linear in a one-layer check), where the GPU settings are bf16 throughout (exact, above)."""
    import bitsandbytes as bnb
    import numpy as np

    from flux_ui.tasks.text_to_image import TextToImageParams, text_to_image, validate_text_to_image

    def image(registry):
        p = TextToImageParams(prompt="a red fox", variant="dev", width=64, height=64, steps=2, seed=3)
        return np.asarray(text_to_image(registry, validate_text_to_image(p, registry.settings)).images[0].image)

    s = replace(settings, model_paths={"dev": str(nf4_file_path)})
    unpacked = image(Registry(s))
    monkeypatch.setattr(nf4_file, "wanted", lambda settings, found: found.format == "nf4")
    registry = Registry(s)
    kept = image(registry)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in registry.transformer("dev").modules())
    assert np.abs(kept.astype(int) - unpacked.astype(int)).max() <= 1
