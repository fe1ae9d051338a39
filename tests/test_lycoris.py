"""LyCORIS LoKr and LoHa files, and DoRA files, on the tiny models: written in the tools' key layouts,
loaded through the LoRA library into PEFT's LoKr/LoHa layers, changing the image by the deltas LyCORIS
defines; DoRA and LoKr on fused layers refused with what they are."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from flux_ui.core.errors import InvalidInput
from flux_ui.models.registry import Registry
from flux_ui.tasks.text_to_image import TextToImageParams, text_to_image, validate_text_to_image
from flux_ui.tiny.loras import dora_state, loha_state, lokr_state, save


@pytest.fixture
def reg(settings, tmp_path) -> Registry:
    folder = tmp_path / "loras"
    save(folder / "lokr-ink.safetensors", lokr_state(21))
    save(folder / "loha-fox.safetensors", loha_state(22))
    save(folder / "lokr-fused.safetensors", lokr_state(23, prefix="lora_unet_"))
    save(folder / "dora.safetensors", dora_state(24))
    return Registry(replace(settings, lora_dirs=(folder,)))


def pixels(registry: Registry, prompt: str) -> np.ndarray:
    params = TextToImageParams(prompt=prompt, variant="dev", width=64, height=64, steps=2, seed=3)
    result = text_to_image(registry, validate_text_to_image(params, registry.settings, registry.loras))
    return np.asarray(result.images[0].image)


@pytest.mark.parametrize("name", ["lokr-ink", "loha-fox"])
def test_lycoris_files_change_the_image_and_weight_zero_is_the_base(reg, name):
    base = pixels(reg, "a red fox")
    with_it = pixels(reg, f"a red fox <lora:{name}:1>")
    assert np.abs(with_it.astype(int) - base.astype(int)).mean() > 1, name
    np.testing.assert_array_equal(pixels(reg, f"a red fox <lora:{name}:0>"), base)
    np.testing.assert_array_equal(pixels(reg, "a red fox"), base)  # and off again, bit for bit


def _delta(reg: Registry, name: str, module: str) -> torch.Tensor:
    pixels(reg, f"a red fox <lora:{name}:1>")
    layer = reg.transformer("dev").get_submodule(module)
    (adapter,) = layer.active_adapters
    return layer.get_delta_weight(adapter).float()


def test_loha_on_a_fused_layer_gives_lycoris_delta_on_each_part(reg):
    """LyCORIS's LoHa delta, alpha / rank x (w1a @ w1b) * (w2a @ w2b), of BFL's fused qkv and linear1 lands
    row for row on diffusers' q, k, v (and the MLP input) layers."""
    sd = loha_state(22)
    for bfl, module, rows in (
        ("double_blocks_0_img_attn_qkv", "transformer_blocks.0.attn.to_k", slice(32, 64)),
        ("single_blocks_0_linear1", "single_transformer_blocks.0.proj_mlp", slice(96, 224)),
        ("double_blocks_0_txt_mlp_0", "transformer_blocks.0.ff_context.net.0.proj", slice(None)),
    ):
        k = f"lora_unet_{bfl}."
        full = (sd[k + "hada_w1_a"] @ sd[k + "hada_w1_b"]) * (sd[k + "hada_w2_a"] @ sd[k + "hada_w2_b"])
        want = full[rows] * float(sd[k + "alpha"]) / sd[k + "hada_w1_b"].shape[0]
        torch.testing.assert_close(_delta(reg, "loha-fox", module), want, rtol=1e-5, atol=1e-6)


def test_lokr_gives_lycoris_kronecker_delta(reg):
    """LyCORIS's LoKr delta: kron(w1, w2a @ w2b) x alpha / rank (the rank of the decomposed factor)."""
    sd = lokr_state(21)
    k = "lycoris_single_transformer_blocks_0_proj_mlp."
    want = torch.kron(sd[k + "lokr_w1"], sd[k + "lokr_w2_a"] @ sd[k + "lokr_w2_b"]) * float(sd[k + "alpha"]) / 2
    torch.testing.assert_close(_delta(reg, "lokr-ink", "single_transformer_blocks.0.proj_mlp"), want)


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("dora", "DoRA"),
        ("lokr-fused", "double_blocks_0_img_attn_qkv cannot be split"),
    ],
)
def test_what_cannot_be_applied_is_refused_with_what_it_is(reg, name, words):
    base = pixels(reg, "a red fox")
    with pytest.raises(InvalidInput, match=words) as exc:
        pixels(reg, f"a red fox <lora:{name}:1>")
    assert exc.value.field == "prompt" and "LyCORIS" in str(exc.value)
    np.testing.assert_array_equal(pixels(reg, "a red fox"), base)
