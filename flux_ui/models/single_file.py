"""Reading the parts of FLUX.1 from single files, through diffusers' own single-file loaders.

Transformer files (BFL / ComfyUI / Forge keys, alone or in an all-in-one checkpoint) and `ae.safetensors`
go through `FluxTransformer2DModel.from_single_file` and `AutoencoderKL.from_single_file`; CLIP-L and T5-XXL
files through the helpers diffusers' pipelines use for the text encoders of all-in-one checkpoints. Only
the tensors of the part asked for are read from the file.

Those loaders need the model's configuration; offline it comes from `config_folder`: the configs shipped
in assets/configs (the full-size FLUX.1 models, in hub layout), or with --tiny the tiny models' own.
"""

from __future__ import annotations

from pathlib import Path

import torch

from flux_ui.core.errors import ModelUnavailableError
from flux_ui.core.flags import DEFAULT_SHARED_REPO
from flux_ui.core.settings import Settings
from flux_ui.core.variants import Variant
from flux_ui.models import files, float8_file, hashes, layouts, nf4_file, quantized, sources

CONFIGS = Path(__file__).resolve().parents[2] / "assets" / "configs"  # the shipped configs, in hub layout
# The repo whose configuration describes each transformer family (see files.FAMILIES), and the shared
# parts' (their configs are the same in every FLUX.1 repo).
FAMILY_REPOS = {
    "dev": "black-forest-labs/FLUX.1-dev",
    "schnell": "black-forest-labs/FLUX.1-schnell",
    "fill": "black-forest-labs/FLUX.1-Fill-dev",
    "control": "black-forest-labs/FLUX.1-Canny-dev",
}
SHARED_REPO = DEFAULT_SHARED_REPO


def config_folder(settings: Settings, family: str | None = None) -> Path:
    """The folder (hub layout) whose configs describe a file of `family`, or the shared parts if None."""
    root = settings.tiny_dir if settings.tiny else CONFIGS
    return root / (FAMILY_REPOS[family] if family else SHARED_REPO)


def variant_family(variant: Variant) -> str:
    """The transformer family a variant runs: what its file's tensors must show."""
    if variant.task in ("fill", "control"):
        return variant.task
    return "dev" if variant.uses_guidance else "schnell"


def identify_part(what: str, path: Path, setting: str, part: str) -> files.FoundFile:
    """The file's record; a ModelUnavailableError when it cannot serve `part`."""
    found = files.identify(path)
    if not found.usable:
        raise ModelUnavailableError(
            what, str(path), f"the file is not usable: {found.reason}", f"Point {setting} at another file."
        )
    if part not in found.parts:
        held = ", ".join(found.parts) or "nothing usable"
        raise ModelUnavailableError(
            what, str(path), f"the file holds {held}, not a {part}", f"Point {setting} at a file that holds a {part}."
        )
    return found


def check_family(found: files.FoundFile, family: str, variant: Variant, what: str, setting: str) -> None:
    """Refuse a transformer file of another family than `family`, the one `variant` runs."""
    if found.family != family:
        raise ModelUnavailableError(
            what,
            str(found.path),
            f"the file is a {files.FAMILIES[found.family]} transformer, not one {variant.label} can run",
            f"Point {setting} at a {variant.label} file.",
        )


def complete(model: torch.nn.Module, what: str, path: Path, setting: str) -> torch.nn.Module:
    """`model`, unless the file lacked some of its tensors: diffusers leaves those unloaded (on the meta
    device) and warns, which would fail only at the first Generate, far from the cause."""
    missing = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if missing:
        raise ModelUnavailableError(
            what,
            str(path),
            f"the file lacks {len(missing)} of the model's tensors (the first: {missing[0]})",
            f"It may be another model's file or cut short: point {setting} at a complete file.",
        )
    return model.eval().requires_grad_(False)


def transformer(settings: Settings, variant: Variant, source: str) -> torch.nn.Module:
    """`variant`'s transformer from a single file: BFL keys (diffusers converts them) or diffusers keys;
    safetensors (float8 dequantised) or GGUF (kept quantised)."""
    from diffusers import FluxTransformer2DModel

    path, what, setting = Path(source).expanduser(), f"{variant.label} transformer", f"--model {variant.name}=FILE"
    found = identify_part(what, path, setting, "transformer")
    hashes.start(path, fresh=settings.verify_weights)  # the images' `Model hash`, read beside the load (see `hashes`)
    check_family(found, variant_family(variant), variant, what, setting)
    config = config_folder(settings, found.family)

    gguf = found.format.startswith("gguf")

    def load():
        if float8_file.wanted(settings, found):  # float8 weights straight from the file (see float8_file)
            return float8_file.transformer(path, found, config, settings.dtype)
        if nf4_file.wanted(settings, found):  # 4-bit weights kept in 4 bits on CUDA (see nf4_file)
            return nf4_file.transformer(path, found, config, settings.dtype)
        if gguf:  # kept quantised: diffusers' GGUF layers dequantise each weight as it is used
            state = quantized.gguf_tensors(path, found.parts["transformer"], settings.dtype)
            extra = {"quantization_config": quantized.gguf_config(settings.dtype)}
        else:
            # Where the policy keeps models whole on the GPU, the file is read, converted and placed there, as
            # folders are (`sources.direct_to`): read to RAM, diffusers' key conversion and the copy to the GPU
            # made a bf16 file 2.3 s slower than the same weights as a folder (run 21).
            extra = {"device": settings.device} if sources.direct_to(settings) else {}
            state = files.read_tensors(path, found.parts["transformer"], device=extra.get("device", "cpu"))
        if found.layout == "bfl" and (gguf or state["img_in.weight"].shape[0] != layouts.FLUX1_WIDTH):
            # diffusers' converter handles FLUX.1's width only, and copies every projection it splits out of a
            # fused one (`torch.cat([q])`), the last blocks' originals held until it returns; ours splits them
            # as views: a GGUF file's tensors are in RAM already, and its load then holds them once.
            state = layouts.bfl_to_diffusers(state)
        if found.layout == "diffusers":
            # Keys already diffusers': with one missing, diffusers would run its BFL converter on them and
            # fail with an IndexError, so name the missing tensor here.
            with torch.device("meta"):
                empty = FluxTransformer2DModel.from_config(FluxTransformer2DModel.load_config(config / "transformer"))
            if missing := sorted(empty.state_dict().keys() - state.keys()):
                raise KeyError(missing[0])
        return FluxTransformer2DModel.from_single_file(
            state,
            config=str(config),
            subfolder="transformer",
            torch_dtype=settings.dtype,
            local_files_only=True,
            **extra,
        )

    return complete(sources.load_file(what, path, setting, load, settings), what, path, setting)


def vae(settings: Settings, source: str) -> torch.nn.Module:
    """The VAE from `ae.safetensors` (BFL's layout), a diffusers-layout file, or an all-in-one checkpoint."""
    from diffusers import AutoencoderKL

    path, what, setting = Path(source).expanduser(), "vae (shared)", "--model vae=FILE"
    found = identify_part(what, path, setting, "vae")

    def load():
        state = files.read_tensors(path, found.parts["vae"])
        return AutoencoderKL.from_single_file(
            state,
            config=str(config_folder(settings)),
            subfolder="vae",
            torch_dtype=settings.dtype,
            local_files_only=True,
        )

    return complete(sources.load_file(what, path, setting, load, settings), what, path, setting)


def clip(settings: Settings, source: str) -> torch.nn.Module:
    """CLIP-L from a single file: transformers' key layout, with or without `text_model.` (ComfyUI's
    clip_l.safetensors), alone or in an all-in-one checkpoint."""
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel

    path, what, setting = Path(source).expanduser(), "text_encoder (shared)", "--model clip=FILE"
    found = identify_part(what, path, setting, "clip_l")

    def load():
        state = files.read_tensors(path, found.parts["clip_l"])
        # diffusers reads CLIP-L from the all-in-one layout: give it that, with the text model's tensors only
        # (ComfyUI's files also carry text_projection and logit_scale, which the text model has no use for).
        inner = {k.removeprefix("text_model."): v for k, v in state.items()}
        keep = ("embeddings.", "encoder.", "final_layer_norm.")
        state = {f"text_encoders.clip_l.transformer.text_model.{k}": v for k, v in inner.items() if k.startswith(keep)}
        return create_diffusers_clip_model_from_ldm(
            CLIPTextModel,
            state,
            subfolder="text_encoder",
            config=str(config_folder(settings)),
            torch_dtype=settings.dtype,
            local_files_only=True,
        )

    return complete(sources.load_file(what, path, setting, load, settings), what, path, setting)


def t5(settings: Settings, source: str) -> torch.nn.Module:
    """T5-XXL's encoder from a single file (ComfyUI's t5xxl_*.safetensors: transformers' keys, with or
    without `encoder.`), alone or in an all-in-one checkpoint, or a GGUF file (`quantized.t5_from_gguf`)."""
    from diffusers.loaders.single_file_utils import create_diffusers_t5_model_from_checkpoint
    from transformers import T5EncoderModel

    path, what, setting = Path(source).expanduser(), "text_encoder_2 (shared)", "--model t5=FILE"
    found = identify_part(what, path, setting, "t5xxl")

    def load():
        if found.format.startswith("gguf"):
            return quantized.t5_from_gguf(path, config_folder(settings) / "text_encoder_2", settings.dtype)
        state = files.read_tensors(path, found.parts["t5xxl"])
        state = {
            k if k.startswith(("encoder.", "shared.", "decoder.", "lm_head.")) else f"encoder.{k}": v
            for k, v in state.items()
        }
        state = {k: v for k, v in state.items() if k.startswith(("encoder.", "shared."))}
        if "shared.weight" not in state and "encoder.embed_tokens.weight" in state:
            state["shared.weight"] = state.pop("encoder.embed_tokens.weight")
        model = create_diffusers_t5_model_from_checkpoint(
            T5EncoderModel,
            {f"text_encoders.t5xxl.transformer.{k}": v for k, v in state.items()},
            subfolder="text_encoder_2",
            config=str(config_folder(settings)),
            torch_dtype=settings.dtype,
            local_files_only=True,
        )
        # The files hold the token embedding once (shared.weight); the encoder's copy is the same tensor
        # tied, which loading into an empty model leaves unset until the ties are made again.
        model.tie_weights()
        return model

    return complete(sources.load_file(what, path, setting, load, settings), what, path, setting)
