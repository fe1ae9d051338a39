"""FLUX.1's tool files as ComfyUI keeps them (Redux's `flux1-redux-dev.safetensors`, the SigLIP
`sigclip_vision_patch14_384.safetensors`, BFL's control LoRAs), written from the tiny models in those
layouts, found in a models folder by their tensors, and giving the images the hub-layout tiny models give."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from flux_ui.core.errors import ModelUnavailableError
from flux_ui.core.variants import CONTROL_LORAS, VARIANTS
from flux_ui.models import file_report, files, redux_files, sources
from flux_ui.models.loras import control as control_lora
from flux_ui.models.registry import Registry
from flux_ui.tasks.control import ControlParams, control, validate_control
from flux_ui.tasks.redux import ReduxParams, redux_variation, validate_redux
from flux_ui.tiny import tool_files as tiny_tools

RED = Image.new("RGB", (300, 200), (200, 30, 30))


@pytest.fixture(scope="module")
def comfyui(tiny_dir, tmp_path_factory) -> Path:
    return tiny_tools.write_tool_files(tmp_path_factory.mktemp("ComfyUI"), tiny_dir)


def test_tool_files_are_found_by_their_tensors(comfyui):
    found = {f.path.name: f for f in files.scan([comfyui], fresh=True)}
    assert {n: (f.kind, f.variant) for n, f in found.items()} == {
        "flux1-redux-dev.safetensors": ("redux", "redux-dev"),
        "sigclip_vision_patch14_384.safetensors": ("siglip", None),
        "flux1-canny-dev-lora.safetensors": ("control_lora", "canny-dev-lora"),
        "flux1-depth-dev-lora.safetensors": ("control_lora", "depth-dev-lora"),
    }
    assert "bfl keys" in found["flux1-canny-dev-lora.safetensors"].note
    used = {Path(r["file"]).name: r["used for"] for r in file_report.report(list(found.values()))}
    assert used["flux1-redux-dev.safetensors"] == "redux-dev"
    assert used["sigclip_vision_patch14_384.safetensors"] == "siglip"
    assert used["flux1-depth-dev-lora.safetensors"] == "depth-dev-lora"


def test_a_control_lora_named_neither_canny_nor_depth_says_so(comfyui, tmp_path):
    target = tmp_path / "loras" / "my-control.safetensors"
    target.parent.mkdir()
    target.write_bytes((comfyui / "models/loras/flux1-canny-dev-lora.safetensors").read_bytes())
    (found,) = files.scan([tmp_path], fresh=True)
    assert (found.kind, found.variant) == ("control_lora", None)
    assert "rename it" in found.note


def test_the_parts_read_back_exactly(settings, comfyui, tiny_dir):
    from diffusers import ReduxImageEncoder
    from transformers import SiglipVisionModel

    redux = tiny_dir / tiny_tools.REDUX
    got = redux_files.image_encoder(
        settings, str(comfyui / "models/clip_vision/sigclip_vision_patch14_384.safetensors")
    )
    want = SiglipVisionModel.from_pretrained(redux, subfolder="image_encoder").state_dict()
    assert not got.config.vision_use_head  # the file has no pooling head: none is built
    assert got.state_dict().keys() == {k for k in want if not k.startswith("head.")}
    assert all(torch.equal(t, want[k]) for k, t in got.state_dict().items())
    got = redux_files.image_embedder(settings, str(comfyui / "models/style_models/flux1-redux-dev.safetensors"))
    want = ReduxImageEncoder.from_pretrained(redux, subfolder="image_embedder").state_dict()
    assert all(torch.equal(t, want[k]) for k, t in got.state_dict().items())


def redux_image(registry) -> np.ndarray:
    base = {"images": (RED,), "strengths": (1.0,), "width": 96, "height": 64, "steps": 2, "seed": 5}
    params = validate_redux(ReduxParams(**base), registry.settings)
    return np.asarray(redux_variation(registry, params).images[0].image)


def test_redux_from_single_files_equals_the_hub_layout_redux(settings, comfyui):
    """Redux's embedder and SigLIP from the ComfyUI files give exactly the hub-layout tiny Redux's image."""
    s = replace(settings, models_dirs=(comfyui,))
    variant = VARIANTS["redux-dev"]
    redux_src = sources.resolve_source(s, variant.name, variant.repo_id)
    assert redux_src.endswith("flux1-redux-dev.safetensors")
    assert redux_files.encoder_source(s, variant, redux_src).endswith("sigclip_vision_patch14_384.safetensors")
    np.testing.assert_array_equal(redux_image(Registry(s)), redux_image(Registry(settings)))


def test_a_redux_file_with_the_hub_image_encoder(settings, comfyui, tiny_dir):
    """Only the embedder as a file: SigLIP comes from the Redux repo, and the image is the same."""
    only = {"redux-dev": str(comfyui / "models/style_models/flux1-redux-dev.safetensors")}
    s = replace(settings, model_paths=only)
    parts = redux_files.prior_parts(s, VARIANTS["redux-dev"], only["redux-dev"])
    assert parts["image_encoder"].source == str(tiny_dir / tiny_tools.REDUX)
    np.testing.assert_array_equal(redux_image(Registry(s)), redux_image(Registry(settings)))


@pytest.mark.parametrize(
    ("name", "file", "words"),
    [
        ("siglip", "models/style_models/flux1-redux-dev.safetensors", "is a redux file, not a siglip file"),
        ("redux-dev", "models/clip_vision/sigclip_vision_patch14_384.safetensors", "not a redux file"),
    ],
)
def test_a_wrong_tool_file_is_named_with_the_reason(settings, comfyui, name, file, words):
    registry = Registry(replace(settings, model_paths={name: str(comfyui / file)}))
    with pytest.raises(ModelUnavailableError) as exc:
        redux_variation(registry, validate_redux(ReduxParams((RED,), (1.0,), steps=1), registry.settings))
    assert str(comfyui / file) in str(exc.value) and words in str(exc.value), str(exc.value)


def test_a_siglip_of_another_size_names_the_tensor(settings, comfyui, tmp_path):
    from safetensors.torch import load_file, save_file

    state = load_file(comfyui / "models/clip_vision/sigclip_vision_patch14_384.safetensors")
    state["vision_model.embeddings.position_embedding.weight"] = torch.zeros(25, 16)  # another image size
    save_file(state, tmp_path / "siglip_512.safetensors")
    with pytest.raises(ModelUnavailableError, match="position_embedding.weight is \\(25, 16\\)") as exc:
        redux_files.image_encoder(settings, str(tmp_path / "siglip_512.safetensors"))
    assert "siglip_512.safetensors" in str(exc.value)


@pytest.fixture(scope="module")
def source() -> Image.Image:
    img = Image.new("RGB", (64, 64), (0, 0, 128))
    ImageDraw.Draw(img).ellipse((12, 10, 50, 54), fill="orange")
    return img


@pytest.mark.parametrize("mode", ["canny", "depth"])
def test_control_lora_from_a_models_folder_gives_the_hub_image(settings, comfyui, source, mode):
    """BFL's layout, with the fused projections' LoRAs at a higher rank, holds the same products: the image
    equals the hub-layout LoRA's within float32 rounding."""
    s = replace(settings, models_dirs=(comfyui,))
    lora = CONTROL_LORAS[mode]
    assert sources.resolve_source(s, lora.name, lora.repo_id) == str(comfyui / "models/loras" / lora.weight_name)
    p = validate_control(ControlParams("a robot", source, mode=mode, route="lora", steps=2, seed=4), settings)
    got = np.asarray(control(Registry(s), p).images[0].image, dtype=np.int16)
    want = np.asarray(control(Registry(settings), p).images[0].image, dtype=np.int16)
    assert np.abs(got - want).max() <= 1


def test_bfl_control_lora_map_matches_diffusers_converter_at_flux1_width(tmp_path):
    """At FLUX.1's width diffusers' converter reads BFL's file; ours (for other widths) gives the same."""
    from safetensors.torch import load_file
    from test_control_lora_bfl import bfl_lora_file

    bfl_lora_file(tmp_path, "lora.safetensors", rank=2, device="cpu")
    theirs = control_lora.read(str(tmp_path), "lora.safetensors")  # diffusers' converter, corrected
    ours = control_lora.bfl_to_diffusers(load_file(tmp_path / "lora.safetensors"))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_a_cut_short_control_lora_is_named(settings, comfyui, source, tmp_path):
    cut = tmp_path / "flux1-canny-dev-lora.safetensors"
    data = (comfyui / "models/loras/flux1-canny-dev-lora.safetensors").read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    registry = Registry(replace(settings, model_paths={"canny-dev-lora": str(cut)}))
    p = validate_control(ControlParams("a robot", source, route="lora", steps=1), settings)
    with pytest.raises(ModelUnavailableError) as exc:
        control(registry, p)
    assert str(cut) in str(exc.value) and "could not be read" in str(exc.value), str(exc.value)
