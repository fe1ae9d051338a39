"""T5-XXL as a GGUF file (city96's `t5-v1_1-xxl-encoder-Q8_0.gguf`, the text encoder of low-memory FLUX.1 set-ups
in ComfyUI): found in a ComfyUI folder by its header, read through transformers' GGUF loader with FLUX's T5
settings, and the image made with it is within Q8_0's rounding of the full-precision one. The tiny T5 is written
by llama.cpp's tensor names and the `gguf` package's quantizer (`flux_ui.tiny.gguf_encoders`)."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from test_quantized_files import DEV, image
from transformers import T5EncoderModel

from flux_ui.core.errors import ModelUnavailableError
from flux_ui.models import files, single_file, sources
from flux_ui.models.registry import Registry
from flux_ui.tiny import files as tiny_files
from flux_ui.tiny.gguf_encoders import write_t5_gguf

IDS = torch.tensor([[5, 17, 33, 64, 1, 0, 0, 0]])


def tiny_t5(tiny_dir):
    return T5EncoderModel.from_pretrained(tiny_dir / DEV / "text_encoder_2")


def write(tiny_dir, path, qtype="Q8_0", model=None):
    model = model or tiny_t5(tiny_dir)
    return write_t5_gguf(path, model, tiny_dir / DEV / "tokenizer_2" / "tokenizer.json", qtype)


@pytest.fixture
def comfyui(tiny_dir, tmp_path):
    """A ComfyUI folder whose only T5 is the GGUF file (in `clip/`, where ComfyUI-GGUF's loader looks)."""
    models = tmp_path / "ComfyUI" / "models"
    tiny_files._save(models / "unet" / "flux1-dev.safetensors", tiny_files.bfl_transformer(tiny_dir, DEV))
    tiny_files._save(models / "vae" / "ae.safetensors", tiny_files.ae_vae(tiny_dir))
    tiny_files._save(models / "clip" / "clip_l.safetensors", tiny_files.clip_l(tiny_dir))
    write(tiny_dir, models / "clip" / "t5-v1_1-xxl-encoder-Q8_0.gguf")
    return models


def test_a_t5_gguf_is_found_and_used_for_t5(settings, comfyui):
    found = {f.path.name: f for f in files.scan([comfyui])}
    t5 = found["t5-v1_1-xxl-encoder-Q8_0.gguf"]
    assert (t5.kind, t5.format) == ("t5xxl", "gguf-Q8_0"), t5
    s = replace(settings, models_dirs=(comfyui,))
    assert sources.shared_part_source(s, "t5").endswith("t5-v1_1-xxl-encoder-Q8_0.gguf")


@pytest.mark.parametrize(("qtype", "bound"), [("F16", 0.002), ("Q8_0", 0.03)])
def test_its_encodings_are_the_t5s_within_the_formats_rounding(settings, tiny_dir, tmp_path, qtype, bound):
    """F16 is the T5 within float16's rounding, Q8_0 within 8-bit blocks' (relative to the encoding's size;
    measured 0.05 % and 1.1 %). With the header's settings alone transformers would run a ReLU feed-forward:
    10 % off."""
    path = write(tiny_dir, tmp_path / f"t5-{qtype}.gguf", qtype)
    model = single_file.t5(settings, str(path))
    with torch.no_grad():
        want, got = tiny_t5(tiny_dir)(IDS).last_hidden_state, model(IDS).last_hidden_state.float()
    error = ((got - want).norm() / want.norm()).item()
    print(f"T5 {qtype} from GGUF: relative error {error:.4f}")
    assert error < bound


def test_the_image_is_close_to_full_precision(settings, comfyui, tiny_dir, tmp_path):
    full = tmp_path / "full"
    tiny_files._save(full / "unet" / "flux1-dev.safetensors", tiny_files.bfl_transformer(tiny_dir, DEV))
    tiny_files._save(full / "vae" / "ae.safetensors", tiny_files.ae_vae(tiny_dir))
    tiny_files._save(full / "clip" / "clip_l.safetensors", tiny_files.clip_l(tiny_dir))
    tiny_files._save(full / "text_encoders" / "t5xxl_fp16.safetensors", tiny_files.t5xxl(tiny_dir))
    got = image(Registry(replace(settings, models_dirs=(comfyui,)))).astype(np.int16)
    want = image(Registry(replace(settings, models_dirs=(full,)))).astype(np.int16)
    diff = np.abs(got - want)
    print(f"T5 Q8_0 GGUF vs fp16 T5 file: mean {diff.mean():.2f}, max {diff.max()} of 255")
    assert diff.mean() < 2


def test_a_full_precision_t5_file_is_preferred_to_a_gguf_one(settings, comfyui, tiny_dir):
    tiny_files._save(comfyui / "text_encoders" / "t5xxl_fp16.safetensors", tiny_files.t5xxl(tiny_dir))
    s = replace(settings, models_dirs=(comfyui,))
    assert sources.shared_part_source(s, "t5").endswith("t5xxl_fp16.safetensors")


def test_a_t5_of_another_size_is_refused_naming_the_file(settings, tiny_dir, tmp_path):
    small = tiny_t5(tiny_dir)
    small.encoder.block = small.encoder.block[:1]  # one layer where FLUX's T5 has two (the tiny's depth)
    small.config.num_layers = 1
    path = write(tiny_dir, tmp_path / "t5-small-encoder-Q8_0.gguf", model=small)
    with pytest.raises(ModelUnavailableError) as err:
        single_file.t5(settings, str(path))
    assert "t5-small-encoder-Q8_0.gguf is a T5 of width (32,) with 1 layers" in str(err.value)
