"""Loading: how each part of a FLUX.1 pipeline is read (hub repos and local folders in diffusers layout,
through `sources`, which resolves where from and turns failures into messages that say how to fix them;
single files through `single_file`). Everything comes back in RAM, in the settings' dtype, ready for
inference; placing it is the registry's.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from flux_ui.core.errors import ModelUnavailableError
from flux_ui.core.settings import Settings
from flux_ui.core.variants import FLUX2, Variant
from flux_ui.models import flux2_files, installs, single_file, sources


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
    """The shared encoders, tokenizers and VAE, in RAM, for inference; `counts` records each component read.

    Each of the VAE, CLIP-L and T5 comes from its own source (`sources.shared_part_source`): a folder or
    repo in diffusers layout (--shared-repo, --model shared=...) or a single file (--model vae=FILE,
    --models-dir). The tokenizers come from the shared repo or folder; when the encoders are files, only
    from disk (the hub cache, or the folder), never the network.
    """
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, T5EncoderModel

    dtype = settings.dtype
    setting = "--shared-repo (or --model shared=FOLDER)"
    src = {part: sources.shared_part_source(settings, part) for part in ("vae", "clip", "t5")}

    def get(what, part, subfolder, from_folder, from_file):
        counts[what] += 1
        if sources.is_file(src[part]):
            return from_file(settings, src[part])
        return sources.load(
            f"{what} (shared)",
            src[part],
            setting,
            lambda: from_folder(src[part], subfolder=subfolder, dtype=dtype, **sources.direct_to(settings)),
            subfolder,
        )

    def vae_from_folder(source, subfolder, dtype, **kwargs):
        return AutoencoderKL.from_pretrained(source, subfolder=subfolder, torch_dtype=dtype, **kwargs)

    tokenizer, tokenizer_2 = _tokenizers(settings, counts, files_only=any(map(sources.is_file, src.values())))
    parts = SharedParts(
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        text_encoder=get("text_encoder", "clip", "text_encoder", CLIPTextModel.from_pretrained, single_file.clip),
        text_encoder_2=get("text_encoder_2", "t5", "text_encoder_2", T5EncoderModel.from_pretrained, single_file.t5),
        vae=get("vae", "vae", "vae", vae_from_folder, single_file.vae),
    )
    for module in parts.modules().values():
        module.eval().requires_grad_(False)
    return parts


def _tokenizers(settings: Settings, counts: Counter[str], files_only: bool) -> tuple[object, object]:
    """The CLIP and T5 tokenizers, from the shared repo or folder. With `files_only` (the encoders are single
    files, which carry no tokenizer) they are read from disk only: the hub cache or a local folder, else the
    ComfyUI or Forge install the --models-dir folders belong to (see `installs`)."""
    from transformers import CLIPTokenizer, T5TokenizerFast

    src = sources.resolve_source(settings, "shared", settings.shared_repo)
    if sources.is_file(src):  # --model shared=FILE, an all-in-one checkpoint: the repo as if it were not given
        src = sources.resolve_source(replace(settings, model_paths={}), "shared", settings.shared_repo)
    setting = "--shared-repo (or --model shared=FOLDER)"
    out = []
    for what, cls, sub in (("tokenizer", CLIPTokenizer, "tokenizer"), ("tokenizer_2", T5TokenizerFast, "tokenizer_2")):
        counts[what] += 1
        if not files_only:
            load = lambda c=cls, s=sub: c.from_pretrained(src, subfolder=s)  # noqa: E731
            out.append(sources.load(f"{what} (shared)", src, setting, load, sub))
            continue
        if tokenizer_on_disk(src, sub):
            out.append(cls.from_pretrained(src, subfolder=sub, local_files_only=True))
        elif folder := installs.tokenizer_folder(settings.models_dirs, sub):  # a ComfyUI or Forge install's
            out.append(installs.load_tokenizer(cls, folder, sub))
        else:
            raise ModelUnavailableError(
                f"{what} (shared)",
                src,
                "the text encoders are single files, which carry no tokenizer, and it is neither on disk nor "
                "in a ComfyUI or Forge install at or above --models-dir",
                f"Download the tokenizers once (huggingface-cli download {settings.shared_repo} --include "
                f"'tokenizer/*' 'tokenizer_2/*'), point --models-dir at the ComfyUI or Forge install, or point "
                f"{setting} at a folder that has tokenizer/ and tokenizer_2/.",
            )
    return out[0], out[1]


def tokenizers(settings: Settings, counts: Counter[str]) -> tuple[object, object]:
    """The CLIP and T5 tokenizers alone (no encoder is read), as `load_shared` would read them."""
    src = {part: sources.shared_part_source(settings, part) for part in ("clip", "t5")}
    return _tokenizers(settings, counts, files_only=any(map(sources.is_file, src.values())))


def tokenizer_on_disk(source: str, subfolder: str) -> bool:
    """Whether a tokenizer is in the local folder or the hub cache. Asked first because transformers, given
    no files, builds an empty tokenizer (two tokens) instead of raising."""
    from huggingface_hub import try_to_load_from_cache

    if sources.is_local(source):
        return (Path(source).expanduser() / subfolder / "tokenizer_config.json").is_file()
    return isinstance(try_to_load_from_cache(source, f"{subfolder}/tokenizer_config.json"), str)


def load_transformer(settings: Settings, variant: Variant, counts: Counter[str]) -> torch.nn.Module:
    """`variant`'s transformer, in RAM, for inference; `counts` records the read."""
    from diffusers import FluxTransformer2DModel

    src = sources.resolve_source(settings, variant.name, variant.repo_id)
    counts[f"transformer:{variant.name}"] += 1
    if sources.is_file(src):
        return single_file.transformer(settings, variant, src)
    model = sources.load(
        f"{variant.label} transformer",
        src,
        f"--model {variant.name}=FOLDER",
        lambda: FluxTransformer2DModel.from_pretrained(
            src, subfolder="transformer", torch_dtype=settings.dtype, **sources.direct_to(settings)
        ),
        "transformer",
    )
    return model.eval().requires_grad_(False)


def scheduler_config(settings: Settings, variant: Variant) -> dict:
    """`variant`'s scheduler configuration (a fresh scheduler is built from it for every run)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    src = sources.resolve_source(settings, variant.name, variant.repo_id)
    if sources.is_file(src) and variant.family == FLUX2:  # a transformer file holds no scheduler: the shipped
        src = str(flux2_files.config_folder(settings, variant, "scheduler"))  # config of its repo serves
    elif sources.is_file(src):  # likewise, its family's
        src = str(single_file.config_folder(settings, "dev" if variant.uses_guidance else "schnell"))
    sched = sources.load(
        f"{variant.label} scheduler config",
        src,
        f"--model {variant.name}=FOLDER",
        lambda: FlowMatchEulerDiscreteScheduler.from_pretrained(src, subfolder="scheduler"),
        "scheduler",
    )
    return dict(sched.config)
