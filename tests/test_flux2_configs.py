"""What the FLUX.2 variants' defaults and shipped configs were checked against, pinned.

Sources (public, read 2026-12): BFL's reference code, github.com/black-forest-labs/flux2 (`scripts/cli.py`:
50 steps, guidance 4.0 for [dev]; `src/flux2/text_encoder.py`: MAX_LENGTH 512, hidden states 10, 20, 30,
Mistral-Small-3.2-24B-Instruct-2506's weights with 3.1's processor; `src/flux2/autoencoder.py`: the VAE);
diffusers' `scripts/convert_flux2_to_diffusers.py` (the transformer configs of [dev], [klein] 4B and 9B,
`AutoencoderKLFlux2()`'s defaults for the VAE, and FLUX.1 [dev]'s scheduler config for every FLUX.2
pipeline); the hub's `diffusers/FLUX.2-dev-bnb-4bit/scheduler/scheduler_config.json` (that scheduler,
`time_shift_type` "exponential"); the FLUX.2 [klein] repos' model_index.json (`is_distilled: true` for the
distilled models, absent, i.e. false, for the base ones); diffusers 0.42.1's Flux2KleinPipeline
(base models: `num_inference_steps=50, guidance_scale=4.0` in its example; Qwen3 hidden states 9, 18, 27;
max_sequence_length 512)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

from flux_ui.core.variants import FLUX2, family_variants, get_variant
from flux_ui.models import flux2_files
from flux_ui.tiny.common import SCHEDULER_DEV
from flux_ui.tiny.flux2 import MISTRAL_LAYERS, QWEN_LAYERS

CONFIGS = Path(__file__).resolve().parents[1] / "assets" / "configs" / "black-forest-labs"

# diffusers' scripts/convert_flux2_to_diffusers.py, get_flux2_transformer_config
TRANSFORMERS = {
    "FLUX.2-dev": {"num_layers": 8, "num_single_layers": 48, "num_attention_heads": 48, "joint_attention_dim": 15360},
    "FLUX.2-klein-4B": {
        "num_layers": 5,
        "num_single_layers": 20,
        "num_attention_heads": 24,
        "joint_attention_dim": 7680,
    },
    "FLUX.2-klein-9B": {
        "num_layers": 8,
        "num_single_layers": 24,
        "num_attention_heads": 32,
        "joint_attention_dim": 12288,
    },
}
COMMON = {"patch_size": 1, "in_channels": 128, "attention_head_dim": 128, "timestep_guidance_channels": 256,
          "mlp_ratio": 3.0, "axes_dims_rope": [32, 32, 32, 32], "rope_theta": 2000, "eps": 1e-6}  # fmt: skip


def _config(repo: str, part: str, name: str = "config.json") -> dict:
    return json.loads((CONFIGS / repo / part / name).read_text())


def test_the_variants_defaults_are_the_authors():
    dev = get_variant("flux2-dev")
    assert (dev.default_steps, dev.default_guidance, dev.max_sequence_length) == (
        50,
        4.0,
        512,
    )  # cli.py, text_encoder.py
    for v in family_variants(FLUX2):
        assert v.max_sequence_length == 512
        if v.name.startswith("flux2-klein-base"):
            assert (v.default_steps, v.default_guidance, v.distilled) == (50, 4.0, False)  # diffusers' example
        elif v.name.startswith("flux2-klein"):
            assert (v.default_steps, v.default_guidance, v.distilled) == (4, None, True)  # is_distilled: true
    assert dev.text_encoder == "mistral-small-3.2"  # BFL loads Mistral-Small-3.2-24B-Instruct-2506's weights


@pytest.mark.parametrize("repo", sorted(TRANSFORMERS))
def test_the_shipped_transformer_configs_are_diffusers_conversions(repo):
    config = _config(repo, "transformer")
    assert {k: config[k] for k in TRANSFORMERS[repo]} == TRANSFORMERS[repo]
    assert {k: config[k] for k in COMMON} == COMMON
    assert config["guidance_embeds"] is (repo == "FLUX.2-dev")


def test_the_shipped_vae_config_is_autoencoder_kl_flux2s_defaults():
    from diffusers import AutoencoderKLFlux2

    defaults = dict(AutoencoderKLFlux2().config)
    shipped = _config("FLUX.2-dev", "vae")
    assert {k: shipped[k] for k in defaults if not k.startswith("_")} == {
        k: (list(v) if isinstance(v, tuple) else v) for k, v in defaults.items() if not k.startswith("_")
    }


@pytest.mark.parametrize("repo", sorted(TRANSFORMERS))
def test_the_shipped_schedulers_shift_dynamically_as_flux1_devs(repo):
    config = _config(repo, "scheduler", "scheduler_config.json")
    pinned = {"shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
              "base_image_seq_len": 256, "max_image_seq_len": 4096, "time_shift_type": "exponential"}  # fmt: skip
    assert {k: config[k] for k in pinned} == pinned
    assert {k: config[k] for k in SCHEDULER_DEV} == SCHEDULER_DEV  # the tiny repos' schedule is the same


def test_every_variant_reads_its_single_files_with_a_shipped_config(settings):
    from dataclasses import replace

    real = replace(settings, tiny=False)
    for v in family_variants(FLUX2):
        for part in ("transformer", "text_encoder", "scheduler", "vae"):
            assert (flux2_files.config_folder(real, v, part) / part).is_dir(), (v.name, part)


def test_the_tiny_encoders_are_as_deep_as_the_layers_the_pipelines_read():
    from diffusers import Flux2KleinPipeline, Flux2Pipeline

    klein = inspect.signature(Flux2KleinPipeline.__call__).parameters
    dev = inspect.signature(Flux2Pipeline.__call__).parameters
    assert klein["text_encoder_out_layers"].default == (9, 18, 27) and max((9, 18, 27)) == QWEN_LAYERS
    assert dev["text_encoder_out_layers"].default == (10, 20, 30) and max((10, 20, 30)) == MISTRAL_LAYERS
    assert klein["max_sequence_length"].default == dev["max_sequence_length"].default == 512
