"""Upscaler models (ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT... files), found where ComfyUI, Forge and A1111
keep them and loaded through spandrel, the library ComfyUI reads them with.

`find(settings)` lists the files below `models/upscale_models/` (ComfyUI) and `models/ESRGAN/`,
`models/RealESRGAN/`, `models/SwinIR/`... (Forge / A1111) of every --models-dir root, and below the
--model-root folder (where --tiny writes its tiny ESRGAN). spandrel tells the architecture and its
settings (scale, channels) from the tensors; `upscale` runs a loaded model over an image in overlapping
tiles, so a large input never needs the memory of one whole-image pass.
"""

from __future__ import annotations

import logging
import pickle  # noqa: S403 - only for its error type: spandrel reads pickles with a restricted unpickler
import sys
import types
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from flux_ui.core.settings import Settings
from flux_ui.media.tiles import Blender, layout

log = logging.getLogger(__name__)

# Sub-folders of a tool's models folder that hold upscaler files: ComfyUI's one, then Forge's and A1111's
# (one per family there).
SUBFOLDERS = ("upscale_models", "ESRGAN", "RealESRGAN", "SwinIR", "DAT", "HAT")
# What spandrel reads: safetensors, and pickles through its restricted unpickler (plain tensors and
# containers only, so loading one cannot run code). `.pt` is left out: spandrel tries it as TorchScript first.
SUFFIXES = (".pth", ".safetensors", ".ckpt")
TILE = 512  # pixels of input per upscaler tile: the whole-image activations of a 1 MP input at 4x are GBs
TILE_OVERLAP = 32  # pixels of input shared by neighbouring tiles, cross-faded (see flux_ui.media.tiles)


def folders(settings: Settings) -> list[Path]:
    """The upscaler sub-folders that exist below the --models-dir roots and --model-root, in search order."""
    roots = [*settings.models_dirs, *([settings.model_root] if settings.model_root is not None else [])]
    found: list[Path] = []
    for root in roots:
        for sub in SUBFOLDERS:
            for candidate in (root / "models" / sub, root / sub):
                if candidate.is_dir() and candidate.resolve() not in {f.resolve() for f in found}:
                    found.append(candidate)
    return found


def find(settings: Settings) -> dict[str, Path]:
    """Upscaler name (the file name without its suffix, as ComfyUI lists them) -> file; the first of a
    name wins."""
    out: dict[str, Path] = {}
    for path in _files(settings):
        out.setdefault(path.stem, path)
    return out


def _files(settings: Settings) -> list[Path]:
    """Every upscaler file of `folders`, in search order."""
    return [
        path
        for folder in folders(settings)
        for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
    ]


def report(settings: Settings) -> list[dict]:
    """Every upscaler file `find` lists, as the Models tab shows it: name (what the Upscale tab's menu and
    the APIs call it), file, architecture and scale (spandrel's reading of its tensors), size in MB, and a
    note: why it cannot be used, or which file of the same name it is shadowed by."""
    chosen = find(settings)
    rows = []
    for path in _files(settings):
        st = path.stat()
        architecture, scale, problem = _read(path, st.st_size, st.st_mtime_ns)
        shadowed = chosen.get(path.stem) != path
        rows.append(
            {
                "name": path.stem,
                "file": str(path),
                "architecture": architecture,
                "scale": scale,
                "size_mb": round(st.st_size / 1e6, 1),
                "note": problem or (f"not used: {chosen[path.stem]} has the same name" if shadowed else ""),
            }
        )
    return rows


@lru_cache(maxsize=256)
def _read(path: Path, size: int, mtime_ns: int) -> tuple[str, int | None, str]:
    """(architecture, scale, "") of the upscaler at `path`, or ("", None, why it cannot be used). Memoised
    by size and modification time: spandrel has no header-only reading, so each file is loaded once (on
    the CPU; an upscaler is tens of MB) and a rescan reads only new or changed files."""
    try:
        model = load(path)
    except ValueError as err:
        return "", None, str(err)
    except Exception as err:  # noqa: BLE001 - a broken file is listed with its error, not a failed listing
        return "", None, f"unreadable: {err}"
    return model.architecture, model.scale, ""


def spandrel():
    """The spandrel module.

    spandrel imports every architecture it knows when it is imported, and two of them (LaMa, an
    inpainting model, and RestoreFormer, a face restorer) import torchvision at module level. torchvision's
    build must match torch's, and the app does not require it (README, "Install"): where it is missing or
    does not load, those two imports are served by a stand-in whose functions raise, for the time of the
    import only. Neither architecture is an upscaler; every other one loads as usual."""
    if "spandrel" in sys.modules:
        return sys.modules["spandrel"]
    try:
        import torchvision  # noqa: F401
    except (ImportError, RuntimeError) as err:  # RuntimeError: a CUDA build beside a CPU torch
        log.info("torchvision unavailable (%s): spandrel's LaMa and RestoreFormer will not load", err)
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        stand_in = _torchvision_stand_in()
        sys.modules.update(stand_in)
        try:
            import spandrel as module
        finally:
            for name in stand_in:
                sys.modules.pop(name, None)
        return module
    import spandrel as module

    return module


def _torchvision_stand_in() -> dict[str, types.ModuleType]:
    """Modules named like torchvision's with the three names spandrel imports from it."""

    def unavailable(*args, **kwargs):
        raise ImportError("this model needs torchvision (pip install the build that matches your torch)")

    root, transforms = types.ModuleType("torchvision"), types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.InterpolationMode = types.SimpleNamespace(NEAREST="nearest", BILINEAR="bilinear", BICUBIC="bicubic")
    functional.rotate = functional.normalize = unavailable
    root.transforms, transforms.functional = transforms, functional
    return {"torchvision": root, "torchvision.transforms": transforms, "torchvision.transforms.functional": functional}


class Upscaler(torch.nn.Module):
    """A spandrel model descriptor as a torch module, so the registry can place it like any auxiliary model.

    `scale` is the model's own factor (4 for most ESRGAN files); `name` the file's stem."""

    def __init__(self, descriptor, name: str):
        super().__init__()
        self.descriptor = descriptor
        self.net = descriptor.model  # registered, so .to() moves the weights the descriptor runs
        self.scale: int = descriptor.scale
        self.name = name
        self.architecture: str = descriptor.architecture.name

    @property
    def dtype(self) -> torch.dtype:
        return next(self.net.parameters()).dtype


def load(path: Path, device: str = "cpu") -> Upscaler:
    """The upscaler in the file at `path`, through spandrel's ModelLoader, in eval mode, on the CPU, in half
    precision on CUDA where the architecture supports it (float32 otherwise).

    Raises ValueError when the file holds no image-to-image model spandrel knows, is not an upscaler
    (a 1x denoiser, an inpainting model), or is a pickle holding more than tensors."""
    module = spandrel()
    try:
        descriptor = module.ModelLoader("cpu").load_from_file(path)
    except module.UnsupportedModelError as err:
        raise ValueError(f"not an upscaler model spandrel knows ({err})") from err
    except pickle.UnpicklingError as err:  # spandrel's restricted unpickler met something beyond tensors
        raise ValueError(f"the pickle holds more than tensors, and is not run ({err})") from err
    if not isinstance(descriptor, module.ImageModelDescriptor):
        raise ValueError(f"a {descriptor.architecture.name} model, which is not an upscaler")
    if descriptor.scale < 2 or descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise ValueError(
            f"a {descriptor.scale}x {descriptor.architecture.name} model with {descriptor.input_channels} input "
            "channels: not an RGB upscaler"
        )
    descriptor.eval()
    if device.startswith("cuda") and descriptor.supports_half:
        descriptor.half()
    log.info("upscaler %s: %s, %dx", path.name, descriptor.architecture.name, descriptor.scale)
    return Upscaler(descriptor, path.stem)


def upscale(model: Upscaler, image: Image.Image, tile: int = TILE, overlap: int = TILE_OVERLAP) -> Image.Image:
    """`image` (RGB) enlarged by `model.scale`, run in tiles of `tile` input pixels overlapping by `overlap`
    and cross-faded where they meet.

    spandrel runs a model on one tensor and leaves tiling to the caller (ComfyUI tiles in its node), so
    this does the tiling; the blend is `flux_ui.media.tiles`."""
    scale = model.scale
    device = next(model.net.parameters()).device
    source = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    boxes = layout(image.size, tile, overlap)
    big = [type(b)(b.x * scale, b.y * scale, b.width * scale, b.height * scale) for b in boxes]
    blender = Blender((image.width * scale, image.height * scale), big)
    with torch.inference_mode():
        for box, out_box in zip(boxes, big, strict=True):
            crop = source[box.y : box.y + box.height, box.x : box.x + box.width]
            x = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].to(device, model.dtype)
            y = model.descriptor(x).clamp(0, 1)[0].permute(1, 2, 0).float().cpu().numpy()
            blender.add(out_box, y)
    return Image.fromarray((blender.result() * 255.0).round().clip(0, 255).astype(np.uint8))
