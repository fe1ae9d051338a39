"""FLUX.2 single files as ComfyUI users keep them: transformers (BFL / ComfyUI keys, GGUF), the FLUX.2 VAE
and the Qwen3 / Mistral text encoders, recognised by their shapes and read through diffusers' converters,
on the tiny models written in those layouts."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from flux_ui.core.errors import ModelUnavailableError
from flux_ui.core.variants import get_variant
from flux_ui.models import file_report, files, quantized
from flux_ui.models.flux2_layouts import diffusers_to_bfl
from flux_ui.models.registry import Registry
from flux_ui.tasks.text_to_image import TextToImageParams, text_to_image, validate_text_to_image
from flux_ui.tiny import flux2_files as tiny_files


@pytest.fixture(scope="module")
def tree(tiny_dir, tmp_path_factory) -> Path:
    return tiny_files.write_comfyui_flux2_tree(tmp_path_factory.mktemp("comfyui-flux2"), tiny_dir)


def _paths(tree: Path, variant: str) -> dict[str, str]:
    """--model entries that read every part of `variant` from the tree's files."""
    m = tree / "models"
    parts = {
        "flux2-klein-4b": {"flux2-klein-4b": "diffusion_models/flux-2-klein-4b.safetensors", "qwen3-4b": "qwen_3_4b"},
        "flux2-klein-9b": {"flux2-klein-9b": "diffusion_models/flux-2-klein-9b-Q8_0.gguf", "qwen3-8b": "qwen_3_8b"},
        "flux2-dev": {"flux2-dev": "diffusion_models/flux2-dev.safetensors", "mistral-small-3.2": "mistral"},
    }[variant]
    encoders = {"qwen_3_4b": "qwen_3_4b", "qwen_3_8b": "qwen_3_8b", "mistral": "mistral_3_small_flux2_bf16"}
    out = {
        k: str(m / v) if "/" in v else str(m / "text_encoders" / f"{encoders[v]}.safetensors") for k, v in parts.items()
    }
    return out | {files.FLUX2_VAE: str(m / "vae" / "flux2-vae.safetensors")}


def _image(registry: Registry, variant: str) -> np.ndarray:
    params = TextToImageParams("a red fox", variant, width=64, height=64, steps=2, seed=5)
    result = text_to_image(registry, validate_text_to_image(params, registry.settings))
    return np.asarray(result.images[0].image).astype(int)


@pytest.mark.parametrize("repo", ["FLUX.2-dev", "FLUX.2-klein-4B"])
def test_the_inverse_layout_is_undone_exactly_by_diffusers_converter(tiny_dir, repo):
    from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers

    state = tiny_files.transformer_state(tiny_dir, f"black-forest-labs/{repo}")
    bfl = diffusers_to_bfl(state)
    assert "double_blocks.0.img_attn.qkv.weight" in bfl and "single_blocks.0.linear1.weight" in bfl
    back = convert_flux2_transformer_checkpoint_to_diffusers(dict(bfl))
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_the_scan_recognises_the_flux2_files_of_a_comfyui_folder(tree):
    found = {f.path.name: f for f in files.scan([tree], fresh=True)}
    klein = found["flux-2-klein-4b.safetensors"]
    assert (klein.kind, klein.family, klein.layout) == ("transformer", "flux2-klein", "bfl")
    assert klein.parts == {"transformer": "model.diffusion_model."}
    gguf = found["flux-2-klein-9b-Q8_0.gguf"]
    assert (gguf.kind, gguf.family, gguf.format) == ("transformer", "flux2-klein", "gguf-Q8_0")
    assert found["flux2-dev.safetensors"].family == "flux2-dev"
    assert found["flux2-vae.safetensors"].kind == "flux2_vae"
    assert found["qwen_3_4b.safetensors"].kind == found["qwen_3_8b.safetensors"].kind == "qwen3"
    assert found["mistral_3_small_flux2_bf16.safetensors"].kind == "mistral"
    # The tiny models' widths are no published model's: the scan says so rather than guess a variant.
    assert klein.variant is None and "--model" in klein.note
    assert files.flux2_part_files(found.values()) == {files.FLUX2_VAE: tree / "models/vae/flux2-vae.safetensors"}
    rows = {Path(r["file"]).name: r for r in file_report.report(list(found.values()))}
    assert rows["flux-2-klein-4b.safetensors"]["recognised as"] == "transformer (FLUX.2 [klein])"
    assert rows["flux2-vae.safetensors"]["used for"] == files.FLUX2_VAE


def _bfl_transformer(width: int, text: int, guidance: bool) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The header of a full-size FLUX.2 transformer file (the tensors that tell them apart)."""
    header = {
        "img_in.weight": ("BF16", (width, 128)),
        "txt_in.weight": ("BF16", (width, text)),
        "single_stream_modulation.lin.weight": ("BF16", (3 * width, width)),
        "double_blocks.0.img_attn.qkv.weight": ("BF16", (3 * width, width)),
    }
    return header | ({"guidance_in.in_layer.weight": ("BF16", (width, 256))} if guidance else {})


def _lm(width: int, qwen: bool) -> dict[str, tuple[str, tuple[int, ...]]]:
    header = {
        "model.embed_tokens.weight": ("BF16", (151936, width)),
        "model.layers.0.self_attn.q_proj.weight": ("BF16", (4096, width)),
    }
    return header | ({"model.layers.0.self_attn.q_norm.weight": ("BF16", (128,))} if qwen else {})


@pytest.mark.parametrize(
    ("name", "header", "variant"),
    [
        # Widths of the published models (assets/configs): 3072 / 4096 / 6144 wide, reading three stacked
        # hidden states of Qwen3-4B (2560), Qwen3-8B (4096), Mistral Small 3.2 (5120).
        ("flux-2-klein-4b.safetensors", _bfl_transformer(3072, 7680, False), "flux2-klein-4b"),
        ("flux-2-klein-base-4b.safetensors", _bfl_transformer(3072, 7680, False), "flux2-klein-base-4b"),
        ("flux-2-klein-9b-fp8.safetensors", _bfl_transformer(4096, 12288, False), "flux2-klein-9b"),
        ("some-name.safetensors", _bfl_transformer(6144, 15360, True), "flux2-dev"),
        ("qwen_3_4b.safetensors", _lm(2560, qwen=True), "qwen3-4b"),
        ("qwen_3_8b_fp8mixed.safetensors", _lm(4096, qwen=True), "qwen3-8b"),
        ("mistral_3_small_flux2_fp8.safetensors", _lm(5120, qwen=False), "mistral-small-3.2"),
    ],
)
def test_full_size_files_are_told_apart_by_their_shapes(name, header, variant):
    found = files.classify(Path(name), 1, header)
    assert found.usable and found.variant == variant
    if found.kind == "transformer":
        assert files.variant_files([found]) == {variant: Path(name)}
    else:
        assert files.flux2_part_files([found]) == {variant: Path(name)}


def test_klein_from_single_files_makes_the_image_of_the_hub_layout(settings, tree):
    hub = _image(Registry(settings), "flux2-klein-4b")
    registry = Registry(replace(settings, model_paths=_paths(tree, "flux2-klein-4b")))
    assert np.array_equal(_image(registry, "flux2-klein-4b"), hub)
    assert registry.load_counts["transformer:flux2-klein-4b"] == 1


def test_dev_from_single_files_makes_the_image_of_the_hub_layout(settings, tree):
    hub = _image(Registry(settings), "flux2-dev")
    registry = Registry(replace(settings, model_paths=_paths(tree, "flux2-dev")))
    assert np.array_equal(_image(registry, "flux2-dev"), hub)
    with registry.pipeline("flux2-dev") as pipe:  # Mistral Small 3.2's text model alone: FLUX.2 sends text only
        assert type(pipe.text_encoder).__name__ == "MistralForCausalLM"


def test_a_gguf_q8_transformer_stays_quantised_and_makes_nearly_the_same_image(settings, tree):
    hub = _image(Registry(settings), "flux2-klein-9b")
    registry = Registry(replace(settings, model_paths=_paths(tree, "flux2-klein-9b")))
    image = _image(registry, "flux2-klein-9b")
    assert quantized.is_prequantized(registry.transformer("flux2-klein-9b"))
    assert np.abs(image - hub).max() <= 8 and np.abs(image - hub).mean() < 1.0


def test_a_file_of_another_size_or_part_is_refused_by_name(settings, tree):
    paths = _paths(tree, "flux2-klein-9b")
    registry = Registry(replace(settings, model_paths={"flux2-klein-4b": paths["flux2-klein-9b"]}))
    with pytest.raises(ModelUnavailableError, match="reads text 72 wide; FLUX.2 \\[klein\\] 4B's .* reads 48"):
        registry.transformer("flux2-klein-4b")
    registry = Registry(replace(settings, model_paths={"qwen3-4b": paths[files.FLUX2_VAE]}))
    with pytest.raises(ModelUnavailableError, match="holds flux2_vae, not a qwen3"):
        registry.flux2_parts(get_variant("flux2-klein-4b"))


def test_an_encoder_file_without_its_tokenizer_on_disk_says_how_to_get_it(settings, tree, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    paths = _paths(tree, "flux2-klein-4b")
    registry = Registry(replace(settings, model_root=None, model_paths=paths))
    with pytest.raises(ModelUnavailableError, match="huggingface-cli download black-forest-labs/FLUX.2-klein-4B"):
        registry.flux2_parts(get_variant("flux2-klein-4b"))
