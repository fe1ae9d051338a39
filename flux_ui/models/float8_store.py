"""The float8 transformer kept on disk (`--keep-float8`), so that a restart reads half the bytes and
skips the conversion.

Under the fp8 speed profile (or the fp8-24gb policy) every start reads the bf16 transformer (23.8 GB for
[dev]) and converts its large linear layers to float8 on the GPU. With `--keep-float8` the converted model
is written once, after its first load, as one safetensors file in the app's compile-cache folder; later
starts build the model's skeleton without memory, read the file straight to the GPU (safetensors reads
each tensor to the device it is asked for) and hand the speed profile a model with nothing left to
quantise. The stored values are exactly the ones the conversion made, so images do not change.

An entry is named after what it was made from: the variant, the source folder's transformer files (name,
size, modification time), the model class and the torch version; any change there makes a new entry, and
the stale one is removed when its replacement is written. Only folders and hub repos (bf16 weights) are
kept: a float8 file is already read as it is, and a GGUF file stays in its own quantisation.

Neither diffusers nor torch keeps a converted model across processes (diffusers' `save_pretrained` writes
float8 layers it did not make as plain tensors it cannot read back into `Float8RowwiseLinear`), hence this.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path

import torch

from flux_ui.core.settings import Settings
from flux_ui.core.variants import Variant
from flux_ui.models import sources, speed

log = logging.getLogger(__name__)

FORMAT = 1  # bump when what is stored changes (the float8 layers' buffers, the filter of which layers)
FOLDER = "flux-ui-float8"  # inside the compile-cache folder


def wanted(settings: Settings) -> bool:
    """Whether transformers are kept in float8 on disk: asked for, and float8 is what the settings run."""
    return settings.keep_float8 and (settings.speed == "fp8" or settings.policy.fp8_at_load)


def entry(settings: Settings, variant: Variant) -> Path | None:
    """The file that holds (or will hold) `variant`'s float8 transformer; None where none is kept (not
    asked for, or a source that is a file or is not on this disk yet)."""
    if not wanted(settings):
        return None
    src = sources.resolve_source(settings, variant.name, variant.repo_id)
    if sources.is_file(src):
        return None
    folder = _transformer_folder(src)
    if folder is None:
        return None
    stamp = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir()) if p.is_file()]
    ident = json.dumps([FORMAT, variant.name, str(folder.resolve()), stamp, torch.__version__])
    digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return settings.compile_cache_dir / FOLDER / f"{variant.name}.{digest}.safetensors"


def _transformer_folder(src: str) -> Path | None:
    """The folder of the source's transformer weights on this disk: `<src>/transformer`, or the hub
    cache's snapshot of it; None when the repo is not downloaded (the first load downloads it)."""
    if sources.is_local(src):
        folder = Path(src).expanduser() / "transformer"
        return folder if folder.is_dir() else None
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(src, "transformer/config.json")
    return Path(config).parent if isinstance(config, str) else None


def load(path: Path, device: str) -> torch.nn.Module:
    """The stored transformer: its skeleton built on the meta device (no memory), its float8 layers put in
    place, then every tensor read from the file straight to `device`."""
    import diffusers
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    cls = getattr(diffusers, meta["class"])
    float8_layers = json.loads(meta["float8_layers"])
    with torch.device("meta"):
        model = cls.from_config(json.loads(meta["config"]))
    for name in float8_layers:
        parent, _, child = name.rpartition(".")
        linear = model.get_submodule(name)
        layer = speed.Float8RowwiseLinear.__new__(speed.Float8RowwiseLinear)
        weight = torch.empty(linear.out_features, linear.in_features, dtype=torch.float8_e4m3fn, device="meta")
        bias = None if linear.bias is None else torch.empty(linear.out_features, device="meta")
        layer._hold(weight, torch.empty(linear.out_features, 1, device="meta"), bias)
        setattr(model.get_submodule(parent) if parent else model, child, layer)
    state = load_file(str(path), device=str(torch.device(device)))
    model.load_state_dict(state, strict=True, assign=True)
    log.info("float8 transformer read from %s (%d float8 layers)", path.name, len(float8_layers))
    return model.eval().requires_grad_(False)


def save_in_background(model: torch.nn.Module, path: Path) -> threading.Thread | None:
    """Write `model` (its float8 layers made) to `path`: the tensors are copied to RAM now, so later
    changes to the model (LoRAs merged into its weights for one request) cannot reach the file, and the
    file is written in a thread. Returns the thread, or None when the model has no float8 layers."""
    float8_layers = [n for n, m in model.named_modules() if isinstance(m, speed.Float8RowwiseLinear)]
    if not float8_layers:
        return None
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "class": type(model).__name__,
        "config": json.dumps(dict(model.config)),
        "float8_layers": json.dumps(float8_layers),
        "format": str(FORMAT),
    }
    thread = threading.Thread(target=_write, args=(state, metadata, path), name="keep-float8", daemon=True)
    thread.start()
    return thread


def _write(state: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
    from safetensors.torch import save_file

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        save_file(state, str(partial), metadata=metadata)
        partial.replace(path)  # whole or not at all: a crash mid-write leaves only the .partial
        variant = path.name.split(".")[0]
        for stale in path.parent.glob(f"{variant}.*.safetensors"):
            if stale != path:
                stale.unlink(missing_ok=True)
        log.info("float8 transformer kept in %s for the next start", path)
    except OSError:
        log.exception("could not keep the float8 transformer in %s; the next start converts it again", path)
