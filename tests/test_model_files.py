"""Single model files and ComfyUI / Forge models folders: the tiny models written in those tools' layouts,
found and identified by their tensors, and loaded through diffusers' single-file loaders into the same
weights (and so the same images) as the diffusers-layout repos."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from flux_ui.core.errors import ModelUnavailableError
from flux_ui.core.settings import settings_from_args
from flux_ui.core.variants import VARIANTS
from flux_ui.models import files, layouts, quantized, single_file, sources
from flux_ui.models.registry import Registry
from flux_ui.tasks.text_to_image import TextToImageParams, text_to_image, validate_text_to_image
from flux_ui.tiny import files as tiny_files

DEV, SCHNELL = "black-forest-labs/FLUX.1-dev", "black-forest-labs/FLUX.1-schnell"


@pytest.fixture(scope="module")
def comfyui(tiny_dir, tmp_path_factory) -> Path:
    return tiny_files.write_comfyui_tree(tmp_path_factory.mktemp("ComfyUI"), tiny_dir)


@pytest.fixture(scope="module")
def forge(tiny_dir, tmp_path_factory) -> Path:
    return tiny_files.write_forge_tree(tmp_path_factory.mktemp("forge"), tiny_dir)


def by_name(found):
    return {f.path.name: f for f in found}


def test_bfl_key_map_matches_diffusers_converter_at_flux1_width(tiny_dir):
    """diffusers' converter splits at FLUX.1's width, so it is checked at that width: diffusers' converter
    only moves rows (dim 0), so each full-size tensor is stood in for by one column of random rows."""
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    with torch.device("meta"):
        full = FluxTransformer2DModel(num_layers=2, num_single_layers=2, guidance_embeds=True)
    g = torch.Generator().manual_seed(0)
    state = {
        k: torch.randn(v.shape[0], *([1] if v.ndim > 1 else []), generator=g) for k, v in full.state_dict().items()
    }
    bfl = layouts.diffusers_to_bfl(state)
    for back in (convert_flux_transformer_checkpoint_to_diffusers(dict(bfl)), layouts.bfl_to_diffusers(bfl)):
        assert back.keys() == state.keys()
        assert all(torch.equal(back[k], state[k]) for k in state)
    tiny = tiny_files.transformer_state(tiny_dir, DEV)  # and at the tiny width, where only ours applies
    back = layouts.bfl_to_diffusers(layouts.diffusers_to_bfl(tiny))
    assert back.keys() == tiny.keys() and all(torch.equal(back[k], tiny[k]) for k in tiny)


def test_scanner_identifies_every_file_of_a_comfyui_install(comfyui):
    found = by_name(files.scan([comfyui]))
    expected = {  # name -> (kind, variant, format)
        "flux1-dev.safetensors": ("transformer", "dev", "fp32"),
        "flux1-schnell.safetensors": ("transformer", "schnell", "bf16"),
        "flux1-kontext-dev.safetensors": ("transformer", "kontext-dev", "fp16"),
        "flux1-fill-dev.safetensors": ("transformer", "fill-dev", "fp32"),
        "flux1-krea-dev-all-in-one.safetensors": ("checkpoint", "krea-dev", "fp32"),
        "ae.safetensors": ("vae", None, "fp32"),
        "clip_l.safetensors": ("clip_l", None, "fp32"),
        "t5xxl_fp32.safetensors": ("t5xxl", None, "fp32"),
    }
    for name, (kind, variant, fmt) in expected.items():
        assert (found[name].kind, found[name].variant, found[name].format) == (kind, variant, fmt), name
        assert found[name].size == found[name].path.stat().st_size
    assert found["flux1-schnell.safetensors"].parts == {"transformer": "model.diffusion_model."}
    assert set(found["flux1-krea-dev-all-in-one.safetensors"].parts) == {"transformer", "vae", "clip_l", "t5xxl"}
    assert "file name" in found["flux1-kontext-dev.safetensors"].note  # Kontext is told by its name only
    skipped = {  # name -> words of the reason
        "style-lora.safetensors": "a LoRA",
        "broken.safetensors": "unreadable header",
        "not-flux.safetensors": "not a FLUX.1 file",
        "flux1-dev-Q8_0.gguf": "unreadable GGUF header",
    }
    for name, words in skipped.items():
        assert found[name].kind == "skipped" and words in found[name].reason, (name, found[name].reason)
        assert words in found[name].describe()
    assert set(found) == set(expected) | set(skipped)
    assert files.variant_files(found.values()) == {
        "dev": comfyui / "models/unet/flux1-dev.safetensors",
        "schnell": comfyui / "models/diffusion_models/flux1-schnell.safetensors",
        "kontext-dev": comfyui / "models/diffusion_models/flux1-kontext-dev.safetensors",
        "fill-dev": comfyui / "models/diffusion_models/flux1-fill-dev.safetensors",
        "krea-dev": comfyui / "models/checkpoints/flux1-krea-dev-all-in-one.safetensors",
    }
    assert files.shared_files(found.values()) == {
        "vae": comfyui / "models/vae/ae.safetensors",
        "clip": comfyui / "models/clip/clip_l.safetensors",
        "t5": comfyui / "models/text_encoders/t5xxl_fp32.safetensors",
    }


def test_scanner_identifies_a_forge_install_and_a_bare_models_folder(forge):
    for folder in (forge, forge / "models"):
        found = by_name(files.scan([folder]))
        assert found["flux1-dev-all-in-one.safetensors"].parts["vae"] == "vae."
        assert found["flux1-canny-dev-diffusers.safetensors"].variant == "canny-dev"
        assert found["flux1-canny-dev-diffusers.safetensors"].layout == "diffusers"
        assert found["forge-lora.safetensors"].kind == "skipped"
        aio = forge / "models/Stable-diffusion/flux1-dev-all-in-one.safetensors"
        assert files.shared_files(found.values()) == {"vae": aio, "clip": aio, "t5": aio}


def test_each_part_reads_back_exactly(settings, comfyui, forge, tiny_dir):
    """Through diffusers' single-file loaders, the files give exactly the weights they were written from."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5EncoderModel

    shared = tiny_dir / SCHNELL
    aio = str(forge / "models/Stable-diffusion/flux1-dev-all-in-one.safetensors")
    cases = [
        (single_file.transformer(settings, VARIANTS["dev"], str(comfyui / "models/unet/flux1-dev.safetensors")),
         FluxTransformer2DModel.from_pretrained(tiny_dir / DEV, subfolder="transformer")),
        (single_file.transformer(settings, VARIANTS["dev"], aio),
         FluxTransformer2DModel.from_pretrained(tiny_dir / DEV, subfolder="transformer")),
        (single_file.vae(settings, str(comfyui / "models/vae/ae.safetensors")),
         AutoencoderKL.from_pretrained(shared, subfolder="vae")),
        (single_file.vae(settings, aio), AutoencoderKL.from_pretrained(shared, subfolder="vae")),
        (single_file.clip(settings, str(comfyui / "models/clip/clip_l.safetensors")),
         CLIPTextModel.from_pretrained(shared, subfolder="text_encoder")),
        (single_file.t5(settings, str(comfyui / "models/text_encoders/t5xxl_fp32.safetensors")),
         T5EncoderModel.from_pretrained(shared, subfolder="text_encoder_2")),
        (single_file.t5(settings, aio), T5EncoderModel.from_pretrained(shared, subfolder="text_encoder_2")),
    ]  # fmt: skip
    for got, want in cases:
        got, want = got.state_dict(), want.state_dict()
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want), type(want).__name__


def image(registry, variant="dev"):
    params = TextToImageParams(prompt="a red fox", variant=variant, width=64, height=64, steps=2, seed=3)
    return np.asarray(text_to_image(registry, validate_text_to_image(params, registry.settings)).images[0].image)


@pytest.mark.parametrize("tree", ["comfyui", "forge"])
def test_image_from_single_files_equals_the_diffusers_layout_image(settings, tree, request):
    """The app, pointed at a models folder, generates the same image as from the same weights as repos."""
    folder = request.getfixturevalue(tree)
    from_files = Registry(replace(settings, models_dirs=(folder,)))
    for part in ("vae", "clip", "t5"):
        assert sources.is_file(sources.shared_part_source(from_files.settings, part))
    assert sources.is_file(sources.resolve_source(from_files.settings, "dev", DEV))
    np.testing.assert_array_equal(image(from_files), image(Registry(settings)))


def test_explicit_model_wins_over_the_scan(settings, comfyui, tiny_dir):
    s = replace(settings, models_dirs=(comfyui,), model_paths={"dev": str(tiny_dir / DEV), "vae": "/x/ae.safetensors"})
    assert sources.resolve_source(s, "dev", DEV) == str(tiny_dir / DEV)
    assert sources.shared_part_source(s, "vae") == "/x/ae.safetensors"
    assert sources.shared_part_source(s, "t5") == str(comfyui / "models/text_encoders/t5xxl_fp32.safetensors")
    assert sources.resolve_source(replace(settings, models_dirs=(comfyui,)), "depth-dev", "r/x") == "r/x"


@pytest.mark.parametrize(
    ("name", "file", "words"),
    [
        ("dev", "models/unet/broken.safetensors", "unreadable header"),
        ("dev", "models/diffusion_models/flux1-schnell.safetensors", "FLUX.1 [schnell] transformer, not one"),
        ("dev", "models/clip/clip_l.safetensors", "holds clip_l, not a transformer"),
        ("vae", "models/unet/flux1-dev.safetensors", "holds transformer, not a vae"),
        ("dev", "models/unet/missing.safetensors", "the file does not exist"),
    ],
)
def test_a_wrong_file_is_named_with_the_reason(settings, comfyui, name, file, words):
    registry = Registry(replace(settings, model_paths={name: str(comfyui / file)}))
    with pytest.raises(ModelUnavailableError) as exc:
        registry.transformer("dev") if name == "dev" else registry.shared()
    assert str(comfyui / file) in str(exc.value) and words in str(exc.value), str(exc.value)


def test_a_file_that_lacks_tensors_says_which(settings, tiny_dir, tmp_path):
    from safetensors.torch import save_file

    state = tiny_files.bfl_transformer(tiny_dir, DEV)
    save_file(
        {k: v for k, v in state.items() if not k.startswith("single_blocks.0.linear2")}, tmp_path / "cut.safetensors"
    )
    state = tiny_files.transformer_state(tiny_dir, DEV)
    save_file({k: v for k, v in state.items() if k != "proj_out.bias"}, tmp_path / "cut-diffusers.safetensors")
    for file, words in (("cut.safetensors", "single_blocks.0.linear2"), ("cut-diffusers.safetensors", "proj_out.bias")):
        with pytest.raises(ModelUnavailableError, match=words) as exc:
            single_file.transformer(settings, VARIANTS["dev"], str(tmp_path / file))
        assert file in str(exc.value)


def test_tokenizers_missing_say_what_to_do(comfyui, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    s = settings_from_args(["--device", "cpu", "--models-dir", str(comfyui), "--shared-repo", "nobody/no-repo"])
    with pytest.raises(ModelUnavailableError, match="carry no tokenizer") as exc:
        Registry(s).shared()
    assert "tokenizer" in str(exc.value) and "--shared-repo" in str(exc.value)


def test_models_dir_on_the_command_line_and_in_the_environment(monkeypatch, tmp_path):
    import os

    s = settings_from_args(["--models-dir", "/a/ComfyUI", "--models-dir", "~/forge", "--model", "dev=/m/f.safetensors"])
    assert s.models_dirs == (Path("/a/ComfyUI"), Path("~/forge").expanduser())
    assert s.model_paths == {"dev": "/m/f.safetensors"}
    monkeypatch.setenv("FLUX_UI_MODELS_DIR", os.pathsep.join(["/x", "/y"]))
    assert settings_from_args([]).models_dirs == (Path("/x"), Path("/y"))
    assert settings_from_args(["--device", "cpu"]).model_paths == {}


def test_shipped_configs_describe_the_full_size_models():
    """Parameter counts of the published models: the transformer 11.9 B, T5-XXL's encoder 4.76 B, CLIP-L's
    text model 123 M, the VAE 83.8 M; Fill and Canny differ from [dev] only in the input layer."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    root = single_file.CONFIGS / "black-forest-labs"

    def count(model):
        return sum(p.numel() for p in model.parameters())

    with torch.device("meta"):
        families = (("FLUX.1-dev", 64, True), ("FLUX.1-schnell", 64, False), ("FLUX.1-Fill-dev", 384, True))
        for repo, in_channels, guidance in (*families, ("FLUX.1-Canny-dev", 128, True)):
            t = FluxTransformer2DModel.from_config(FluxTransformer2DModel.load_config(root / repo / "transformer"))
            assert (t.config.in_channels, t.config.guidance_embeds) == (in_channels, guidance)
            assert 11.8e9 < count(t) < 12.0e9 and t.proj_out.out_features == 64
        shared = root / "FLUX.1-schnell"
        assert 4.7e9 < count(T5EncoderModel(T5Config.from_pretrained(shared / "text_encoder_2"))) < 4.8e9
        assert 122e6 < count(CLIPTextModel(CLIPTextConfig.from_pretrained(shared / "text_encoder"))) < 124e6
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(shared / "vae"))
        assert 83e6 < count(vae) < 85e6 and vae.config.latent_channels == 16


# -- float8 files -----------------------------------------------------------------------------------------

FP8_RELATIVE = 2**-3  # float8_e4m3fn keeps 3 mantissa bits: rounding is within 2^-4 of a value, 2^-3 safe


@pytest.fixture(scope="module")
def fp8_tree(tiny_dir, tmp_path_factory) -> Path:
    return tiny_files.write_fp8_tree(tmp_path_factory.mktemp("fp8"), tiny_dir)


def test_fp8_files_are_found_with_their_format(fp8_tree):
    found = {f.path.name: f for f in files.scan([fp8_tree])}
    dev = found["flux1-dev-fp8-scaled.safetensors"]
    assert (dev.kind, dev.format, dev.family) == ("transformer", "fp8-scaled", "dev")
    assert (found["flux1-schnell-fp8.safetensors"].format, found["flux1-schnell-fp8.safetensors"].family) == (
        "fp8",
        "schnell",
    )
    assert found["t5xxl_fp8_e4m3fn_scaled.safetensors"].kind == "t5xxl"


@pytest.mark.parametrize(
    ("variant", "repo", "file"),
    [("dev", DEV, "flux1-dev-fp8-scaled.safetensors"), ("schnell", SCHNELL, "flux1-schnell-fp8.safetensors")],
)
def test_fp8_weights_load_within_float8_rounding(settings, fp8_tree, tiny_dir, variant, repo, file):
    """Each weight read from a float8 file equals the original within float8's rounding: the scales of a
    scaled file are applied (diffusers alone would ignore them and load every weight off by its scale)."""
    registry = Registry(replace(settings, models_dirs=(fp8_tree,)))
    assert sources.resolve_source(registry.settings, variant, repo).endswith(file)
    loaded = registry.transformer(variant).state_dict()
    original = tiny_files.transformer_state(tiny_dir, repo)
    assert loaded.keys() == original.keys()
    for name, want in original.items():
        got = loaded[name].float()
        # Plus float8's subnormal step (2^-9) where no scale lifted small weights out of the subnormals.
        bound = FP8_RELATIVE * want.float().abs() + 2**-9 * max(1.0, float(want.float().abs().max()))
        assert ((got - want.float()).abs() <= bound).all(), name


def test_ignoring_the_scales_would_be_wrong(tiny_dir):
    """What the scales change: the raw float8 values of a scaled file are far from the weights."""
    state = tiny_files.fp8_scaled(tiny_files.bfl_transformer(tiny_dir, DEV))
    name = next(k for k, v in state.items() if v.dtype == torch.float8_e4m3fn and v.numel() > 1)
    raw, weight = state[name].float(), tiny_files.bfl_transformer(tiny_dir, DEV)[name].float()
    assert raw.abs().max() > 100 * weight.abs().max()  # scaled up to 448
    fixed = quantized.dequantize_fp8(state)[name].float()
    assert torch.allclose(fixed, weight, rtol=FP8_RELATIVE, atol=float(weight.abs().max()) * 2**-9)


def test_image_from_fp8_files_is_close_to_the_bf16_image(settings, fp8_tree):
    """The whole app on fp8 files: the image differs from the full-precision one only by float8 rounding
    (measured on the tiny models: mean absolute difference 0.6 of 255, max 7)."""
    from_fp8 = image(Registry(replace(settings, models_dirs=(fp8_tree,))))
    full = image(Registry(settings))
    diff = np.abs(from_fp8.astype(np.int16) - full.astype(np.int16))
    print(f"fp8 vs full precision: mean {diff.mean():.2f}, max {diff.max()} of 255")
    assert diff.mean() < 2


def test_the_app_serves_a_comfyui_folder_and_lists_its_files(tiny_dir, comfyui, tmp_path):
    """`app.py --tiny --models-dir ComfyUI`: the Models tab's API lists every file with what it is used for or
    why it was skipped, and a REST request generates from the single files."""
    import httpx
    from conftest import running_app
    from gradio_client import Client

    with running_app(tiny_dir, tmp_path, "--models-dir", str(comfyui)) as (url, log):
        rows = {Path(r["file"]).name: r for r in Client(url, verbose=False).predict(api_name="/model_files")}
        assert rows["flux1-dev.safetensors"]["used for"] == "dev"
        assert rows["ae.safetensors"]["used for"] == "vae"
        assert "t5" in rows["t5xxl_fp32.safetensors"]["used for"]
        lora = rows["style-lora.safetensors"]
        assert lora["recognised as"] == "skipped" and "LoRA" in lora["note"], lora
        assert rows["flux1-dev.safetensors"]["on the GPU"] == "in RAM (no GPU)" and lora["on the GPU"] == ""
        job = {"task": "text_to_image", "prompt": "a fox", "resolution": "64x64", "steps": 1, "seed": 5}
        r = httpx.post(url + "generate", json=job, timeout=120)
        assert r.status_code == 200, r.text[:300]
        assert "from the file" in log.read_text()  # read from the single files, not the tiny repos


def test_a_scan_is_reused_until_a_rescan(tmp_path, tiny_dir):
    """Source lookups reuse a walk of the folders for a minute; the Models tab's Rescan walks again."""
    folder = tmp_path / "models" / "vae"
    tiny_files._save(folder / "ae.safetensors", tiny_files.ae_vae(tiny_dir))
    first = files.scan([tmp_path])
    tiny_files._save(tmp_path / "models" / "clip" / "clip_l.safetensors", tiny_files.clip_l(tiny_dir))
    assert [f.path.name for f in files.scan([tmp_path])] == [f.path.name for f in first] == ["ae.safetensors"]
    assert {f.path.name for f in files.scan([tmp_path], fresh=True)} == {"ae.safetensors", "clip_l.safetensors"}
