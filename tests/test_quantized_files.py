"""Quantised transformer files: GGUF (city96's ComfyUI-GGUF layout) and Forge's bitsandbytes NF4 files,
written from the tiny models with the formats' own libraries, found by the scan and run through the app's
real loading path, on the CPU."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from flux_ui.core.errors import ModelUnavailableError
from flux_ui.core.variants import VARIANTS
from flux_ui.models import files, single_file, sources
from flux_ui.models.registry import Registry
from flux_ui.tasks.text_to_image import TextToImageParams, text_to_image, validate_text_to_image
from flux_ui.tiny import files as tiny_files
from flux_ui.tiny.quantized_files import nf4_state, write_gguf

DEV, SCHNELL = "black-forest-labs/FLUX.1-dev", "black-forest-labs/FLUX.1-schnell"
FILL = "black-forest-labs/FLUX.1-Fill-dev"


def shared_files(models: Path, tiny_dir: Path) -> None:
    tiny_files._save(models / "vae" / "ae.safetensors", tiny_files.ae_vae(tiny_dir))
    tiny_files._save(models / "clip" / "clip_l.safetensors", tiny_files.clip_l(tiny_dir))
    tiny_files._save(models / "text_encoders" / "t5xxl_fp16.safetensors", tiny_files.t5xxl(tiny_dir))


@pytest.fixture(scope="module")
def gguf_tree(tiny_dir, tmp_path_factory) -> Path:
    """A ComfyUI models folder with GGUF transformers ([dev] Q8_0 in unet/, [schnell] Q4_0 in
    diffusion_models/), a GGUF file of another architecture, a cut-short GGUF, and the shared parts."""
    import gguf

    root = tmp_path_factory.mktemp("ComfyUI-gguf")
    models = root / "models"
    write_gguf(models / "unet" / "flux1-dev-Q8_0.gguf", tiny_files.bfl_transformer(tiny_dir, DEV), "Q8_0")
    schnell = tiny_files.bfl_transformer(tiny_dir, SCHNELL)
    write_gguf(models / "diffusion_models" / "flux1-schnell-Q4_0.gguf", schnell, "Q4_0")
    other = gguf.GGUFWriter(str(models / "unet" / "t5-v1_1-xxl-encoder-Q8_0.gguf"), arch="t5encoder")
    other.add_tensor("enc.blk.0.attn_q.weight", np.zeros((32, 32), np.float32))
    other.write_header_to_file(), other.write_kv_data_to_file(), other.write_tensors_to_file(), other.close()
    whole = (models / "unet" / "flux1-dev-Q8_0.gguf").read_bytes()
    (models / "unet" / "cut-Q8_0.gguf").write_bytes(whole[: len(whole) // 3])
    shared_files(models, tiny_dir)
    return root


def image(registry, variant="dev"):
    params = TextToImageParams(prompt="a red fox", variant=variant, width=64, height=64, steps=2, seed=3)
    return np.asarray(text_to_image(registry, validate_text_to_image(params, registry.settings)).images[0].image)


# -- GGUF ------------------------------------------------------------------------------------------------


def test_gguf_files_are_identified_by_their_header(gguf_tree):
    found = {f.path.name: f for f in files.scan([gguf_tree])}
    dev, schnell = found["flux1-dev-Q8_0.gguf"], found["flux1-schnell-Q4_0.gguf"]
    assert (dev.kind, dev.variant, dev.format, dev.layout) == ("transformer", "dev", "gguf-Q8_0", "bfl")
    assert (schnell.kind, schnell.variant, schnell.format) == ("transformer", "schnell", "gguf-Q4_0")
    t5 = found["t5-v1_1-xxl-encoder-Q8_0.gguf"]
    assert t5.kind == "skipped" and "T5 GGUF file without its token embedding" in t5.reason, t5.reason
    cut = found["cut-Q8_0.gguf"]
    assert cut.kind == "skipped" and "unreadable GGUF header" in cut.reason, cut.reason
    assert files.variant_files(found.values())["dev"] == gguf_tree / "models/unet/flux1-dev-Q8_0.gguf"


def test_gguf_file_keeps_city96_layout(gguf_tree):
    """What ComfyUI-GGUF reads: architecture "flux", BFL key names, embedders and final layer unquantised."""
    import gguf

    reader = gguf.GGUFReader(str(gguf_tree / "models/unet/flux1-dev-Q8_0.gguf"))
    assert reader.get_field("general.architecture").contents() == "flux"
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["double_blocks.0.img_attn.qkv.weight"] == "Q8_0"
    assert types["single_blocks.0.linear1.weight"] == "Q8_0"
    assert types["img_in.weight"] == "F16" and types["final_layer.linear.weight"] == "F16"
    assert types["double_blocks.0.img_attn.qkv.bias"] == "F32"


@pytest.mark.parametrize(("variant", "repo", "file", "bound"), [
    ("dev", DEV, "unet/flux1-dev-Q8_0.gguf", 2**-7),  # 8-bit blocks: within 1/127 of each block's largest
    ("schnell", SCHNELL, "diffusion_models/flux1-schnell-Q4_0.gguf", 2**-3),  # 4-bit: 1/8 of it, with slack
])  # fmt: skip
def test_gguf_weights_stay_quantised_within_their_step(settings, gguf_tree, tiny_dir, variant, repo, file, bound):
    """diffusers' GGUF layers keep the blocks and dequantise on the fly (here on the CPU); each weight comes
    back within its block's quantisation step of the original."""
    from diffusers.quantizers.gguf.utils import GGUFLinear, dequantize_gguf_tensor

    model = single_file.transformer(settings, VARIANTS[variant], str(gguf_tree / "models" / file))
    qkv = model.transformer_blocks[0].attn.to_q
    assert isinstance(qkv, GGUFLinear) and qkv.weight.dtype == torch.uint8  # still the file's blocks
    original = tiny_files.transformer_state(tiny_dir, repo)
    for name, module in model.named_modules():
        if not isinstance(module, GGUFLinear):
            continue
        want = original[f"{name}.weight"].float()
        got = dequantize_gguf_tensor(module.weight).float()
        step = want.abs().reshape(want.shape[0], -1, 32).amax(-1, keepdim=True).expand(-1, -1, 32).reshape(want.shape)
        assert ((got - want).abs() <= bound * step + 1e-3 * step).all(), name


def test_image_from_a_gguf_file_is_close_to_the_full_precision_image(settings, gguf_tree):
    """The app on a ComfyUI folder of GGUF + single files: Q8_0 stays within 8-bit rounding of the
    full-precision image, Q4_0 within 4-bit's (measured on the tiny models: mean difference 0.01 of 255 with
    Q8_0, 0.16 with Q4_0; max 1 and 2)."""
    registry = Registry(replace(settings, models_dirs=(gguf_tree,)))
    assert sources.resolve_source(registry.settings, "dev", DEV).endswith("flux1-dev-Q8_0.gguf")
    got, want = image(registry).astype(np.int16), image(Registry(settings)).astype(np.int16)
    diff = np.abs(got - want)
    print(f"GGUF Q8_0 vs full precision: mean {diff.mean():.2f}, max {diff.max()} of 255")
    assert diff.mean() < 0.5
    q4 = image(registry, "schnell").astype(np.int16)
    diff4 = np.abs(q4 - image(Registry(settings), "schnell").astype(np.int16))
    print(f"GGUF Q4_0 vs full precision: mean {diff4.mean():.2f}, max {diff4.max()} of 255")
    assert diff4.mean() < 2.0


def test_loras_apply_to_a_gguf_transformer_and_lycoris_ones_say_why_not(settings, gguf_tree, tmp_path):
    """A LoRA is a PEFT layer beside the GGUF layer (which dequantises its own weight): it changes the image,
    and without it the image is the base one, bit for bit. PEFT's LoKr/LoHa layers need the weight's shape
    in elements, which packed blocks lack: those are refused with the reason."""
    from flux_ui.core.errors import InvalidInput
    from flux_ui.tiny.loras import kohya_state, lokr_state, save

    save(tmp_path / "ink.safetensors", kohya_state(3, guidance=True))
    save(tmp_path / "lokr.safetensors", lokr_state(3))
    registry = Registry(replace(settings, models_dirs=(gguf_tree,), lora_dirs=(tmp_path,)))

    def run(prompt):
        params = TextToImageParams(prompt=prompt, variant="dev", width=64, height=64, steps=1, seed=3)
        job = validate_text_to_image(params, registry.settings, registry.loras)
        return np.asarray(text_to_image(registry, job).images[0].image).astype(np.int16)

    base = run("a red fox")
    assert np.abs(run("a red fox <lora:ink:1>") - base).mean() > 1
    with pytest.raises(InvalidInput, match="cannot be applied to a GGUF transformer"):
        run("a red fox <lora:lokr:1>")
    np.testing.assert_array_equal(run("a red fox"), base)


def test_a_cut_short_gguf_file_is_named_with_the_reason(settings, gguf_tree):
    path = gguf_tree / "models/unet/cut-Q8_0.gguf"
    registry = Registry(replace(settings, model_paths={"dev": str(path)}))
    with pytest.raises(ModelUnavailableError) as exc:
        registry.transformer("dev")
    assert str(path) in str(exc.value) and "unreadable GGUF header" in str(exc.value), str(exc.value)


# Where each K-quant block keeps its float16 scales (byte offsets in the block), as ggml lays them out.
K_QUANT_F16 = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


@pytest.mark.parametrize("qtype", sorted(K_QUANT_F16))
def test_k_quants_dequantise_as_ggml_does(qtype):
    """K-quant files (Q4_K_S, Q5_K, Q6_K...) cannot be written from the tiny models: their blocks hold 256
    weights a row and the tiny rows are 32 to 160 wide, and the `gguf` package has no K-quant quantizer.
    What the app relies on for them is diffusers' dequantiser, checked here against the `gguf` package's
    reference on random blocks (random bits, with finite float16 scales)."""
    import gguf
    from diffusers.quantizers.gguf.utils import GGUFParameter, dequantize_gguf_tensor

    kind = gguf.GGMLQuantizationType[qtype]
    block, size = gguf.GGML_QUANT_SIZES[kind]
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 256, size=(8, size), dtype=np.uint8)
    for offset in K_QUANT_F16[qtype]:
        raw[:, offset : offset + 2] = rng.uniform(-0.01, 0.01, size=(8, 1)).astype(np.float16).view(np.uint8)
    rows = raw.reshape(4, 2 * size)  # 4 rows of 2 blocks: 512 weights a row
    want = gguf.quants.dequantize(rows, kind)
    got = dequantize_gguf_tensor(GGUFParameter(torch.from_numpy(rows.copy()), quant_type=kind)).float().numpy()
    assert got.shape == want.shape == (4, 2 * block)
    # diffusers multiplies the scales in float16: equal within float16's rounding of the block's range.
    np.testing.assert_allclose(got, want, rtol=0, atol=2**-10 * float(np.abs(want).max()))


# -- NF4 -------------------------------------------------------------------------------------------------

# NF4's widest gap between codes is 0.304 of a block's largest value (-1 to -0.696): rounding within half.
NF4_STEP = 0.16


@pytest.fixture(scope="module")
def nf4_tree(tiny_dir, tmp_path_factory) -> Path:
    """A Forge install with NF4 files: [dev] as Forge's all-in-one `flux1-dev-bnb-nf4-v2` (the transformer in
    NF4, the VAE under "vae.", CLIP-L, T5 in plain fp8), [schnell] and Fill as transformer files with the
    first files' nested statistics."""
    from flux_ui.models.layouts import BFL_PREFIX

    models = tmp_path_factory.mktemp("forge-nf4") / "models"
    parts = {
        BFL_PREFIX: nf4_state(tiny_files.bfl_transformer(tiny_dir, DEV)),
        "vae.": tiny_files.ae_vae(tiny_dir),
        "text_encoders.clip_l.transformer.": tiny_files.clip_l(tiny_dir),
        "text_encoders.t5xxl.transformer.": tiny_files.fp8_scaled(tiny_files.t5xxl(tiny_dir), scaled=False),
    }
    aio = {prefix + k: v for prefix, state in parts.items() for k, v in state.items()}
    tiny_files._save(models / "Stable-diffusion" / "flux1-dev-bnb-nf4-v2.safetensors", aio)
    for repo, name in ((SCHNELL, "flux1-schnell-bnb-nf4.safetensors"), (FILL, "flux1-fill-dev-bnb-nf4.safetensors")):
        nf4 = nf4_state(tiny_files.bfl_transformer(tiny_dir, repo), nested=True)
        tiny_files._save(models / "Stable-diffusion" / name, nf4)
    return models.parent


def test_nf4_files_are_identified_by_their_tensors(nf4_tree):
    found = {f.path.name: f for f in files.scan([nf4_tree])}
    dev = found["flux1-dev-bnb-nf4-v2.safetensors"]
    assert (dev.kind, dev.variant, dev.format) == ("checkpoint", "dev", "nf4")
    assert set(dev.parts) == {"transformer", "vae", "clip_l", "t5xxl"}
    assert "bf16" in dev.note  # what it costs on the GPU once unpacked
    assert found["flux1-schnell-bnb-nf4.safetensors"].variant == "schnell"
    # Input width from the packed weight (two weights a byte) over its bias's length: 384 channels, Fill.
    assert found["flux1-fill-dev-bnb-nf4.safetensors"].variant == "fill-dev"


@pytest.mark.parametrize(
    ("variant", "repo", "file"),
    [("dev", DEV, "flux1-dev-bnb-nf4-v2.safetensors"), ("schnell", SCHNELL, "flux1-schnell-bnb-nf4.safetensors")],
)
def test_nf4_weights_unpack_within_their_step(settings, nf4_tree, tiny_dir, variant, repo, file):
    """bitsandbytes unpacks each weight (plain and nested statistics) on the CPU: within half NF4's widest
    step of its block's largest value (blocks of 64 weights in row order), plus bfloat16's rounding and the
    8-bit rounding of nested statistics."""
    model = single_file.transformer(settings, VARIANTS[variant], str(nf4_tree / "models/Stable-diffusion" / file))
    loaded, original = model.state_dict(), tiny_files.transformer_state(tiny_dir, repo)
    assert loaded.keys() == original.keys()
    for name, want in original.items():
        got, want = loaded[name].float(), want.float()
        if want.ndim == 2:
            blocks = want.reshape(-1, 64).abs().amax(1, keepdim=True).expand(-1, 64).reshape(want.shape)
            assert ((got - want).abs() <= NF4_STEP * blocks * 1.02).all(), name
        else:
            assert torch.allclose(got, want, rtol=2**-8, atol=0), name  # bf16 in the file


def test_image_from_nf4_files_is_close_to_the_full_precision_image(settings, nf4_tree):
    """The app on Forge's all-in-one NF4 checkpoint (transformer, VAE and encoders all from it, T5 in
    fp8): 4-bit weights change the image more than 8-bit ones (measured on the tiny models: mean difference
    2.3 of 255, max 25)."""
    registry = Registry(replace(settings, models_dirs=(nf4_tree,)))
    assert sources.resolve_source(registry.settings, "dev", DEV).endswith("flux1-dev-bnb-nf4-v2.safetensors")
    assert sources.shared_part_source(registry.settings, "t5").endswith("flux1-dev-bnb-nf4-v2.safetensors")
    got, want = image(registry).astype(np.int16), image(Registry(settings)).astype(np.int16)
    diff = np.abs(got - want)
    print(f"NF4 vs full precision: mean {diff.mean():.2f}, max {diff.max()} of 255")
    assert diff.mean() < 4.0


# -- float8 files kept in float8 -------------------------------------------------------------------------


@pytest.fixture
def fp8_policy(settings, tmp_path, tiny_dir, monkeypatch):
    """Settings under the fp8-24gb policy (float8 at load, which runs on the CPU too), with the tiny
    models' layers counting as large enough for float8, and a ComfyUI folder with a scaled fp8 [dev]."""
    from flux_ui.models import speed

    monkeypatch.setattr(speed, "FP8_MIN_FEATURES", 16)
    models = tmp_path / "ComfyUI" / "models"
    scaled = tiny_files.fp8_scaled(tiny_files.bfl_transformer(tiny_dir, DEV))
    tiny_files._save(models / "diffusion_models" / "flux1-dev-fp8-scaled.safetensors", scaled)
    shared_files(models, tiny_dir)
    return replace(settings, memory_policy="fp8-24gb", models_dirs=(models.parent,)), scaled


def test_a_float8_file_goes_to_the_float8_layers_as_it_is(fp8_policy, monkeypatch):
    """Under a float8 policy the file's float8 values and scales become the float8 layers unchanged: no
    dequantised copy, no second rounding (the fused qkv's rows land on q, k and v)."""
    from flux_ui.models import float8_file, speed

    settings, scaled = fp8_policy
    requantised = []
    monkeypatch.setattr(speed.Float8RowwiseLinear, "__init__", lambda *a: requantised.append(a))
    path = settings.models_dirs[0] / "models/diffusion_models/flux1-dev-fp8-scaled.safetensors"
    assert float8_file.wanted(settings, files.identify(path))
    model = single_file.transformer(settings, VARIANTS["dev"], str(path))
    layers = {n: m for n, m in model.named_modules() if isinstance(m, speed.Float8RowwiseLinear)}
    plain = single_file.transformer(replace(settings, memory_policy="cpu"), VARIANTS["dev"], str(path))
    targets = {n for n, m in plain.named_modules() if speed._fp8_filter(m, n)}
    assert set(layers) == targets and not requantised  # the layers the policy would quantise, none twice
    to_k = layers["transformer_blocks.0.attn.to_k"]
    file_rows = scaled["double_blocks.0.img_attn.qkv.weight"][32:64]
    assert torch.equal(to_k.weight_fp8.view(torch.uint8), file_rows.view(torch.uint8))
    assert torch.equal(to_k.weight_scale, scaled["double_blocks.0.img_attn.qkv.scale_weight"].expand(1, 32))
    assert model.transformer_blocks[0].attn.norm_q.weight.dtype == settings.dtype  # the rest in its dtype


def test_image_from_a_float8_file_kept_in_float8(fp8_policy, settings, monkeypatch):
    """The app under the fp8 policy on the scaled file: the image is close to the one made through the
    dequantise-then-requantise path, and to full precision (measured on the tiny models: mean difference
    0.39 of 255 from the requantised image, 0.80 from full precision; max 4 and 11)."""
    from flux_ui.models import float8_file

    fp8_settings, _ = fp8_policy
    kept = image(Registry(fp8_settings)).astype(np.int16)
    monkeypatch.setattr(float8_file, "wanted", lambda *a: False)
    requantised = image(Registry(fp8_settings)).astype(np.int16)
    full = image(Registry(settings)).astype(np.int16)
    for name, other, bound in (("requantised", requantised, 1.0), ("full precision", full, 3.0)):
        diff = np.abs(kept - other)
        print(f"float8 kept vs {name}: mean {diff.mean():.2f}, max {diff.max()} of 255")
        assert diff.mean() < bound, name
