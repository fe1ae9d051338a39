"""Loading: how each part of a FLUX.1 pipeline is read (hub repos and local folders in diffusers layout,
through `sources`, which resolves where from and turns failures into messages that say how to fix them).
Everything comes back in RAM, in the settings' dtype, ready for inference; placing it is the registry's.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from flux_ui.core.settings import Settings
from flux_ui.core.variants import Variant
from flux_ui.models import sources


@dataclass
class SharedParts:
    """The components every FLUX.1 variant uses, loaded once."""

    text_encoder: torch.nn.Module  # CLIP-L text model (pooled prompt embedding)
    tokenizer: object  # CLIP tokenizer
    text_encoder_2: torch.nn.Module  # T5-XXL encoder (per-token prompt embedding)
    tokenizer_2: object  # T5 tokenizer
    vae: torch.nn.Module  # AutoencoderKL with 16 latent channels

    def modules(self) -> dict[str, torch.nn.Module]:
        return {
            "text_encoder": self.text_encoder,
            "text_encoder_2": self.text_encoder_2,
            "vae": self.vae,
        }


def load_shared(settings: Settings, counts: Counter[str]) -> SharedParts:
    """The shared encoders, tokenizers and VAE from --shared-repo (or --model shared=...), in RAM, for
    inference; `counts` records each component read."""
    from diffusers import AutoencoderKL
    from transformers import (
        CLIPTextModel,
        CLIPTokenizer,
        T5EncoderModel,
        T5TokenizerFast,
    )

    src = sources.resolve_source(settings, "shared", settings.shared_repo)
    dtype = settings.dtype
    setting = "--shared-repo (or --model shared=FOLDER)"

    def get(what, fn):
        counts[what] += 1
        return sources.load(f"{what} (shared)", src, setting, fn)

    parts = SharedParts(
        tokenizer=get(
            "tokenizer",
            lambda: CLIPTokenizer.from_pretrained(src, subfolder="tokenizer"),
        ),
        tokenizer_2=get(
            "tokenizer_2",
            lambda: T5TokenizerFast.from_pretrained(src, subfolder="tokenizer_2"),
        ),
        text_encoder=get(
            "text_encoder",
            lambda: CLIPTextModel.from_pretrained(src, subfolder="text_encoder", dtype=dtype),
        ),
        text_encoder_2=get(
            "text_encoder_2",
            lambda: T5EncoderModel.from_pretrained(src, subfolder="text_encoder_2", dtype=dtype),
        ),
        vae=get(
            "vae",
            lambda: AutoencoderKL.from_pretrained(src, subfolder="vae", torch_dtype=dtype),
        ),
    )
    for module in parts.modules().values():
        module.eval().requires_grad_(False)
    return parts


def load_transformer(settings: Settings, variant: Variant, counts: Counter[str]) -> torch.nn.Module:
    """`variant`'s transformer, in RAM, for inference; `counts` records the read."""
    from diffusers import FluxTransformer2DModel

    src = sources.resolve_source(settings, variant.name, variant.repo_id)
    counts[f"transformer:{variant.name}"] += 1
    model = sources.load(
        f"{variant.label} transformer",
        src,
        f"--model {variant.name}=FOLDER",
        lambda: FluxTransformer2DModel.from_pretrained(src, subfolder="transformer", torch_dtype=settings.dtype),
    )
    return model.eval().requires_grad_(False)


def scheduler_config(settings: Settings, variant: Variant) -> dict:
    """`variant`'s scheduler configuration (a fresh scheduler is built from it for every run)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    src = sources.resolve_source(settings, variant.name, variant.repo_id)
    sched = sources.load(
        f"{variant.label} scheduler config",
        src,
        f"--model {variant.name}=FOLDER",
        lambda: FlowMatchEulerDiscreteScheduler.from_pretrained(src, subfolder="scheduler"),
    )
    return dict(sched.config)
