"""Loading the FLUX.2 family's parts: its VAE (one for every FLUX.2 variant), its text encoders (Qwen3-4B for
[klein] 4B, Qwen3-8B for [klein] 9B, Mistral Small 3.2 for [dev]; each shared by the variants that name it)
with their tokenizers, and its transformers. Hub repos and local folders in diffusers layout, through
`sources`, as for FLUX.1; everything comes back in RAM, in the settings' dtype; placing it is the registry's.

Each part is read from the repo (or folder) of the variant that first needs it: every FLUX.2 repo ships the
same VAE, and the repos of one [klein] size the same text encoder, so whichever is on disk serves. Each can
also be a single file, as ComfyUI users have them (`flux2_files`): the transformer by --model NAME=FILE or
--models-dir, the VAE and the text encoders by --model flux2-vae=FILE, --model qwen3-4b=FILE (qwen3-8b,
mistral-small-3.2) or --models-dir. The tokenizers, which no single file carries, then come from the
variant's repo or folder on disk only, as FLUX.1's do.
"""

from __future__ import annotations

from collections import Counter

import torch

from flux_ui.core.errors import ModelUnavailableError
from flux_ui.core.settings import Settings
from flux_ui.core.variants import FLUX2, Variant
from flux_ui.models import files, flux2_files, loading, sources

VAE = "flux2:vae"  # the registry's name for the FLUX.2 VAE


def encoder_key(variant: Variant) -> str:
    """The registry's name for `variant`'s text encoder, e.g. "flux2:text_encoder:qwen3-4b"."""
    return f"flux2:text_encoder:{variant.text_encoder}"


def part_names(variant: Variant) -> tuple[str, str]:
    """The shared parts a FLUX.2 variant runs with: its text encoder and the VAE."""
    return encoder_key(variant), VAE


def _check(variant: Variant) -> None:
    if variant.family != FLUX2:
        raise ValueError(f"variant: {variant.label} is not a FLUX.2 model")


def load_vae(settings: Settings, variant: Variant, counts: Counter[str]) -> torch.nn.Module:
    """The FLUX.2 VAE (AutoencoderKLFlux2), from `variant`'s repo or folder."""
    from diffusers import AutoencoderKLFlux2

    _check(variant)
    src = sources.flux2_part_source(settings, variant.name, variant.repo_id, files.FLUX2_VAE)
    counts[VAE] += 1
    if sources.is_file(src):
        return flux2_files.vae(settings, variant, src).eval().requires_grad_(False)
    vae = sources.load(
        "FLUX.2 VAE",
        src,
        f"--model {files.FLUX2_VAE}=FOLDER",
        lambda: AutoencoderKLFlux2.from_pretrained(src, subfolder="vae", torch_dtype=settings.dtype),
        "vae",
    )
    return vae.eval().requires_grad_(False)


def load_text_encoder(settings: Settings, variant: Variant, counts: Counter[str]) -> tuple[torch.nn.Module, object]:
    """`variant`'s text encoder and its tokenizer, from its repo or folder.

    [dev]'s tokenizer/ folder holds Mistral's Pixtral processor; only its text half (the tokenizer, with the
    chat template) is loaded: diffusers sends the processor text alone, and transformers' Pixtral image
    processor needs torchvision, which the app does not install.
    """
    from transformers import Mistral3ForConditionalGeneration, Qwen3ForCausalLM

    _check(variant)
    src = sources.flux2_part_source(settings, variant.name, variant.repo_id, variant.text_encoder)
    key = encoder_key(variant)
    counts[key] += 1
    mistral = variant.pipeline_class == "Flux2Pipeline"
    model_cls = Mistral3ForConditionalGeneration if mistral else Qwen3ForCausalLM
    if from_file := sources.is_file(src):
        model = flux2_files.text_encoder(settings, variant, src)
    else:
        model = sources.load(
            f"{variant.label} text encoder",
            src,
            f"--model {variant.text_encoder}=FOLDER",
            lambda: model_cls.from_pretrained(src, subfolder="text_encoder", dtype=settings.dtype),
            "text_encoder",
        )
    tokenizer = _tokenizer(settings, variant, from_file)
    return model.eval().requires_grad_(False), tokenizer


def _tokenizer(settings: Settings, variant: Variant, files_only: bool) -> object:
    """`variant`'s tokenizer, from its repo or folder; with `files_only` (the encoder is a single file, which
    carries none) from disk only: the folder or the hub cache, as for FLUX.1's encoder files."""
    from transformers import AutoTokenizer, Qwen2Tokenizer

    src = sources.repo_source(settings, variant.name, variant.repo_id)
    setting = f"--model {variant.name}=FOLDER"
    tok_cls = AutoTokenizer if variant.pipeline_class == "Flux2Pipeline" else Qwen2Tokenizer
    if files_only and not loading.tokenizer_on_disk(src, "tokenizer"):
        raise ModelUnavailableError(
            f"{variant.label} tokenizer",
            src,
            "the text encoder is a single file, which carries no tokenizer, and it is not on disk",
            f"Download it once (huggingface-cli download {variant.repo_id} --include 'tokenizer/*'), or point "
            f"{setting} at a folder that has tokenizer/.",
        )
    extra = {"local_files_only": True} if files_only else {}
    tokenizer = sources.load(
        f"{variant.label} tokenizer",
        src,
        setting,
        lambda: tok_cls.from_pretrained(src, subfolder="tokenizer", **extra),
        None if files_only else "tokenizer",
    )
    if getattr(tokenizer, "chat_template", None) is None:
        raise ModelUnavailableError(
            f"{variant.label} tokenizer",
            src,
            "it has no chat template, which the FLUX.2 pipelines format prompts with",
            f"Download the repo's tokenizer/ folder whole, or point {setting} at a folder that has it.",
        )
    return tokenizer


def load_transformer(settings: Settings, variant: Variant, counts: Counter[str]) -> torch.nn.Module:
    """`variant`'s Flux2Transformer2DModel, in RAM, for inference."""
    from diffusers import Flux2Transformer2DModel

    _check(variant)
    src = sources.resolve_source(settings, variant.name, variant.repo_id)
    counts[f"transformer:{variant.name}"] += 1
    if sources.is_file(src):
        return flux2_files.transformer(settings, variant, src).eval().requires_grad_(False)
    model = sources.load(
        f"{variant.label} transformer",
        src,
        f"--model {variant.name}=FOLDER",
        lambda: Flux2Transformer2DModel.from_pretrained(src, subfolder="transformer", torch_dtype=settings.dtype),
        "transformer",
    )
    return model.eval().requires_grad_(False)


def pipeline_kwargs(variant: Variant, pipeline_class: str) -> dict[str, object]:
    """Arguments a FLUX.2 pipeline class takes besides its components: the [klein] pipelines are told
    whether the model is step-distilled (then they skip classifier-free guidance)."""
    return {} if pipeline_class == "Flux2Pipeline" else {"is_distilled": variant.distilled}
