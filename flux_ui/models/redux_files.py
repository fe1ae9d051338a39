"""FLUX.1 Redux's parts, from its hub layout or from the single files ComfyUI users keep: BFL's
`flux1-redux-dev.safetensors` (the image embedder) and Comfy-Org's `sigclip_vision_patch14_384.safetensors`
(the SigLIP vision tower), found by --models-dir or named by --model redux-dev=FILE / --model siglip=FILE
(their key layouts: `tool_files`).

Neither library reads these as single files: diffusers' single-file loaders cover transformers, VAEs and
ControlNets, not `ReduxImageEncoder`, and transformers' `SiglipVisionModel` loads only from a folder with
its config. So each is built empty from its configuration (shipped in
assets/configs/black-forest-labs/FLUX.1-Redux-dev, or with --tiny the tiny repo's own) and given the file's
tensors, which are checked against it first so that a wrong file is named with the tensor that does not fit.
The image processor, which no file carries, comes from the same configurations.

Each part comes from its own source, so a Redux file works with the hub's image encoder and the reverse.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from flux_ui.core.errors import ModelUnavailableError
from flux_ui.core.settings import Settings
from flux_ui.core.variants import Variant
from flux_ui.models import files, single_file, sources

REDUX_REPO = "black-forest-labs/FLUX.1-Redux-dev"  # whose configurations describe the files
SIGLIP = "siglip"  # the --model name of the SigLIP file (and its files.SHARED_PARTS name)


@dataclass(frozen=True)
class Part:
    """Where one of Redux's parts comes from and how it is read."""

    what: str  # for messages: "image encoder (SigLIP)"
    source: str  # a repo id, a folder in hub layout, or a single file
    setting: str  # the option that changes the source
    load: Callable[[], object]
    subfolder: str | None = None  # what `load` reads of a hub repo, downloaded first (None: a file or folder)


def config_folder(settings: Settings) -> Path:
    """Redux's configurations in hub layout: the shipped ones, or with --tiny the tiny repo."""
    return (settings.tiny_dir if settings.tiny else single_file.CONFIGS) / REDUX_REPO


def encoder_source(settings: Settings, variant: Variant, redux_source: str) -> str:
    """Where the SigLIP image encoder comes from: --model siglip=FILE, a folder or repo given as
    --model redux-dev=..., a SigLIP file of the --models-dir folders, the Redux folder or repo, and when Redux
    itself is a file, its repo (a folder below --model-root, or the hub)."""
    if SIGLIP in settings.model_paths:
        return settings.model_paths[SIGLIP]
    explicit = settings.model_paths.get(variant.name)
    if explicit and not sources.is_file(explicit):
        return explicit
    if settings.models_dirs and (found := files.shared_files(files.scan(settings.models_dirs)).get(SIGLIP)):
        return str(found)
    if not sources.is_file(redux_source):
        return redux_source
    local = settings.model_root / variant.repo_id if settings.model_root is not None else None
    return str(local) if local is not None and local.is_dir() else variant.repo_id


def prior_parts(settings: Settings, variant: Variant, redux_source: str) -> dict[str, Part]:
    """The image encoder, its image processor and the image embedder of Redux `variant`, whose own source
    (a folder, repo or Redux file) is `redux_source`: each part's source and loader."""
    from diffusers import ReduxImageEncoder
    from transformers import SiglipImageProcessorPil, SiglipVisionModel

    dtype = settings.dtype
    enc = encoder_source(settings, variant, redux_source)
    enc_setting = f"--model {SIGLIP}=FILE (or --model {variant.name}=FOLDER)"
    setting = f"--model {variant.name}=FOLDER or FILE"

    def encoder_from_folder():
        model = SiglipVisionModel.from_pretrained(enc, subfolder="image_encoder", dtype=dtype)
        return model.eval().requires_grad_(False)

    def embedder_from_folder():
        model = ReduxImageEncoder.from_pretrained(redux_source, subfolder="image_embedder", torch_dtype=dtype)
        return model.eval().requires_grad_(False)

    enc_file, redux_file = sources.is_file(enc), sources.is_file(redux_source)
    processor_from = str(config_folder(settings)) if enc_file else enc
    return {
        "image_encoder": Part(
            "image encoder (SigLIP)",
            enc,
            enc_setting,
            (lambda: image_encoder(settings, enc)) if enc_file else encoder_from_folder,
            "image_encoder",
        ),
        # The PIL backend: it needs no torchvision and matches the processor the model was trained with.
        "feature_extractor": Part(
            "image processor",
            processor_from,
            enc_setting,
            lambda: SiglipImageProcessorPil.from_pretrained(processor_from, subfolder="feature_extractor"),
            "feature_extractor",
        ),
        "image_embedder": Part(
            "image embedder",
            redux_source,
            setting,
            (lambda: image_embedder(settings, redux_source)) if redux_file else embedder_from_folder,
            "image_embedder",
        ),
    }


def _identify(what: str, path: Path, setting: str, kind: str) -> files.FoundFile:
    found = files.identify(path)
    if found.kind != kind:
        held = f"not usable: {found.reason}" if not found.usable else f"a {found.kind} file"
        reason = f"the file is {held}, not a {kind} file"
        raise ModelUnavailableError(what, str(path), reason, f"Point {setting} at a {kind} file.")
    return found


def _fill(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """`model` (parameters on the meta device) given `state`'s tensors, each checked first: KeyError names a
    tensor the file lacks, ValueError one whose shape does not fit the configuration."""
    want = model.state_dict()
    for name, tensor in want.items():
        if name not in state:
            raise KeyError(name)
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise ValueError(
                f"{name} is {tuple(state[name].shape)}, the configuration wants {tuple(tensor.shape)}: "
                "a model of another size"
            )
    model.load_state_dict({k: state[k] for k in want}, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def image_encoder(settings: Settings, source: str) -> torch.nn.Module:
    """SigLIP's vision tower from a single file (transformers' keys, with or without `vision_model.`); its
    attention-pooling head is built only if the file holds it (Redux reads the last hidden state)."""
    from accelerate import init_empty_weights
    from transformers import SiglipVisionConfig, SiglipVisionModel

    path, what, setting = Path(source).expanduser(), "FLUX.1 Redux image encoder (SigLIP)", f"--model {SIGLIP}=FILE"
    found = _identify(what, path, setting, SIGLIP)

    def load():
        state = files.read_tensors(path, found.parts[SIGLIP])
        config = SiglipVisionConfig.from_pretrained(config_folder(settings) / "image_encoder")
        config.vision_use_head = any(k.startswith("head.") for k in state)
        with init_empty_weights():  # parameters on the meta device; buffers (position ids) made as usual
            model = SiglipVisionModel(config)
        return _fill(model, state).to(settings.dtype)

    return sources.load_file(what, path, setting, load, settings)


def image_embedder(settings: Settings, source: str) -> torch.nn.Module:
    """The Redux image embedder from BFL's file (the names diffusers' `ReduxImageEncoder` uses)."""
    from accelerate import init_empty_weights
    from diffusers import ReduxImageEncoder

    path, what, setting = Path(source).expanduser(), "FLUX.1 Redux image embedder", "--model redux-dev=FILE"
    found = _identify(what, path, setting, "redux")

    def load():
        state = files.read_tensors(path, found.parts["redux"])
        with init_empty_weights():
            model = ReduxImageEncoder.from_config(
                ReduxImageEncoder.load_config(config_folder(settings) / "image_embedder")
            )
        return _fill(model, state).to(settings.dtype)

    return sources.load_file(what, path, setting, load, settings)
