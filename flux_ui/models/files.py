"""Single model files as ComfyUI, Forge and A1111 keep them: what each file is, told by its tensors.

`identify(path)` reads only a file's header (tensor names, shapes and dtypes, through `safe_open`; a GGUF
file's names, shapes and quantisation types through the gguf reader), never its weights, and says what it
holds: a FLUX.1 transformer (BFL keys, as BFL and ComfyUI ship them, or diffusers keys; in any dtype, fp8,
GGUF or NF4), the FLUX VAE (`ae.safetensors`), a CLIP-L or T5-XXL text encoder, or an all-in-one
checkpoint holding several of those; or a FLUX.2 transformer (safetensors or GGUF), the FLUX.2 VAE or a
FLUX.2 text encoder (Qwen3, Mistral Small 3.2), see `flux2_layouts`.
`scan(folders)` walks the usual sub-folders of a ComfyUI root, a
Forge/A1111 root or a bare `models/` folder and identifies every model file there; files that cannot be
used come back as "skipped" with the reason, so the Models tab can say why.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import torch

from flux_ui.models import flux2_layouts, layouts, quantized, tool_files
from flux_ui.models.layouts import BFL_PREFIX

log = logging.getLogger(__name__)

# Sub-folders where the tools keep models, searched in this order below a root (`<root>/models/<sub>`) or
# below a bare models folder (`<folder>/<sub>`): transformer folders first, all-in-one checkpoints after.
SUBFOLDERS = (
    "diffusion_models",  # ComfyUI (the current name)
    "unet",  # ComfyUI (the older name)
    "checkpoints",  # ComfyUI all-in-one checkpoints
    "Stable-diffusion",  # Forge / A1111 checkpoints and transformers
    "vae",  # ComfyUI
    "VAE",  # Forge / A1111
    "text_encoders",  # ComfyUI (the current name)
    "clip",  # ComfyUI (the older name)
    "text_encoder",  # Forge
    "loras",  # ComfyUI
    "Lora",  # Forge / A1111
    "style_models",  # ComfyUI: FLUX.1 Redux
    "clip_vision",  # ComfyUI (and Forge's ControlNet extension): SigLIP for Redux
)
SUFFIXES = (".safetensors", ".sft", ".gguf", ".ckpt", ".pt", ".pth")  # what counts as a model file

PARTS = ("transformer", "vae", "clip_l", "t5xxl")  # what a file can hold

# The transformer families the tensors tell apart, as labels for messages.
FAMILIES = {
    "dev": "FLUX.1 [dev]-type (guidance-distilled)",
    "schnell": "FLUX.1 [schnell]",
    "fill": "FLUX.1 Fill",
    "control": "FLUX.1 Canny/Depth",
    "flux2-dev": "FLUX.2 [dev]",
    "flux2-klein": "FLUX.2 [klein]",
}
T5_GGUF_NOTE = "read through transformers' GGUF loader, which dequantises it to bf16 (a minute or two)"
NF4_NOTE = "kept in 4 bits on a CUDA GPU (about a quarter of bf16); unpacked to bf16 on the CPU"
DTYPE_FORMATS = {"BF16": "bf16", "F16": "fp16", "F32": "fp32", "F8_E4M3": "fp8", "F8_E5M2": "fp8"}


@dataclass(frozen=True)
class FoundFile:
    """One model file and what it was recognised as."""

    path: Path
    kind: str  # "transformer", "checkpoint" (all-in-one), "vae", "clip_l", "t5xxl", a tool_files.KINDS,
    # FLUX.2's "flux2_vae", "qwen3", "mistral" (text encoders), or "skipped"
    size: int  # bytes on disk
    format: str = ""  # weight format: bf16, fp16, fp32, fp8, fp8-scaled, gguf-Q8_0 (-Q4_K...), nf4 ("" unknown)
    family: str | None = None  # transformer family, a key of FAMILIES
    variant: str | None = None  # the variant it serves (a name of VARIANTS), or a FLUX.2 text encoder's key
    layout: str = ""  # transformer keys: "bfl" or "diffusers"
    parts: dict[str, str] = field(default_factory=dict)  # part -> key prefix of its tensors in the file
    reason: str = ""  # why it was skipped
    note: str = ""  # what the tensors could not tell (a variant taken from the file name, say)

    @property
    def usable(self) -> bool:
        return self.kind != "skipped"

    def describe(self) -> str:
        """One line for the Models tab and the log."""
        size = f"{self.size / 1e9:.1f} GB" if self.size >= 1e8 else f"{self.size / 1e6:.1f} MB"
        what = self.reason if not self.usable else f"{self.kind} {self.variant or self.family or ''}".strip()
        extra = f"; {self.note}" if self.note else ""
        return f"{self.path.name}: {what} ({self.format or 'unknown format'}, {size}){extra}"


def read_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape) of every tensor in a .safetensors file, from its header only."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        out = {}
        for name in f.keys():  # noqa: SIM118 (a safe_open handle is not iterable)
            s = f.get_slice(name)
            out[name] = (s.get_dtype(), tuple(s.get_shape()))
        return out


def read_tensors(path: Path, prefix: str, dequantize: bool = True, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file whose names start with `prefix`, without it; only those are read,
    onto `device`. Float8 and bitsandbytes 4-bit weights come back dequantised (see `quantized`), unless not
    `dequantize`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device=device) as f:
        state = {k.removeprefix(prefix): f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}  # noqa: SIM118
    if not dequantize:
        return state
    if quantized.is_nf4(state):
        return quantized.dequantize_nf4(state)
    return quantized.dequantize_fp8(state)


def _weight_format(header: dict[str, tuple[str, tuple[int, ...]]]) -> str:
    """The weights' format: quantisations first, else the dtype holding most elements."""
    names = header.keys()
    if quantized.is_nf4(names):
        return "nf4"
    if any(n.endswith(("scale_weight", "scaled_fp8", "weight_scale")) for n in names):
        return "fp8-scaled"
    counts: dict[str, int] = {}
    for dtype, shape in header.values():
        n = 1
        for d in shape:
            n *= d
        counts[dtype] = counts.get(dtype, 0) + n
    if not counts:
        return ""
    top = max(counts, key=counts.__getitem__)
    return DTYPE_FORMATS.get(top, top.lower())


# (key prefix, layout, (input projection, guidance embedder, first double block's query)) of a FLUX.1
# transformer, in the layouts files come in.
_BFL_PROBES = ("img_in.weight", "guidance_in.in_layer.weight", "double_blocks.0.img_attn.qkv.weight")
TRANSFORMER_PROBES = (
    (BFL_PREFIX, "bfl", _BFL_PROBES),  # ComfyUI / Forge, and all-in-one checkpoints
    ("", "bfl", _BFL_PROBES),  # BFL's own files
    (
        "",
        "diffusers",
        (
            "x_embedder.weight",
            "time_text_embed.guidance_embedder.linear_1.weight",
            "transformer_blocks.0.attn.to_q.weight",
        ),
    ),
)


def _in_features(header, weight: str) -> int:
    """A linear layer's input width; a bitsandbytes 4-bit weight is stored flat (two weights a byte), so
    there it is the weight count over the output width (its bias's length)."""
    shape = header[weight][1]
    if weight + quantized.NF4_STATE not in header:
        return shape[1]
    return 2 * int(torch.Size(shape).numel()) // header[weight.removesuffix("weight") + "bias"][1][0]


def _transformer(header, name: str) -> dict | None:
    """What a transformer in this file is, or None if it holds none."""
    found = next(
        ((p, lay, pr) for p, lay, pr in TRANSFORMER_PROBES if p + pr[2] in header and p + pr[0] in header), None
    )
    if found is None:
        return None
    prefix, layout, probes = found
    x_in, guidance = prefix + probes[0], prefix + probes[1]
    if layout == "bfl" and prefix + "vector_in.in_layer.weight" not in header:
        return {"skip": "a FLUX-like transformer that is neither FLUX.1 nor FLUX.2 (no pooled-text input: Chroma?)"}
    in_channels = _in_features(header, x_in)
    lower = name.lower()
    variant, note = None, ""
    if in_channels == 384:
        family, variant = "fill", "fill-dev"
    elif in_channels == 128:
        family = "control"
        variant = "depth-dev" if "depth" in lower else "canny-dev" if "canny" in lower else None
        note = "Canny or Depth from the file name: the tensors are the same shape"
        if variant is None:
            note = "Canny or Depth cannot be told from the tensors and the file name says neither: rename it"
    elif guidance not in header:
        family, variant = "schnell", "schnell"
    else:
        family, variant = "dev", "dev"
        for hint, named in (("kontext", "kontext-dev"), ("krea", "krea-dev")):
            if hint in lower:
                variant = named
                note = f"{named} by the file name: its tensors are the same as [dev]'s"
    return {"prefix": prefix, "layout": layout, "family": family, "variant": variant, "note": note}


def _flux2(path: Path, size: int, fmt: str, header) -> FoundFile | None:
    """A FLUX.2 transformer, VAE or text encoder file (see `flux2_layouts`), or None."""
    if (tf := flux2_layouts.transformer(header, path.name)) is not None:
        if "skip" in tf or fmt == "nf4":
            return FoundFile(path, "skipped", size, fmt, reason=tf.get("skip", "an NF4 FLUX.2 file: not read yet"))
        parts = {"transformer": tf["prefix"]}
        return FoundFile(
            path, "transformer", size, fmt, tf["family"], tf["variant"], tf["layout"], parts, note=tf["note"]
        )
    if (vae := flux2_layouts.vae(header)) is not None:
        return FoundFile(path, "flux2_vae", size, fmt, parts={"flux2_vae": vae["prefix"]})
    if (te := flux2_layouts.text_encoder(header)) is not None:
        unknown = f"a {te['part']} model of a size no FLUX.2 text encoder has: name it with --model KEY=FILE"
        return FoundFile(
            path,
            te["part"],
            size,
            fmt,
            variant=te["key"],
            parts={te["part"]: te["prefix"]},
            note="" if te["key"] else unknown,
        )
    return None


def classify(path: Path, size: int, header: dict[str, tuple[str, tuple[int, ...]]]) -> FoundFile:
    """What a file with this header holds; see the module docstring."""
    fmt = _weight_format(header)
    if why := quantized.comfy_quant_problem(header):
        return FoundFile(path, "skipped", size, fmt, reason=why)
    if (flux2 := _flux2(path, size, fmt, header)) is not None:
        return flux2
    if tool := tool_files.identify(header, path.name):  # Redux, SigLIP, control LoRAs
        if "skip" in tool:
            return FoundFile(path, "skipped", size, fmt, reason=tool["skip"])
        parts = {tool["kind"]: tool["prefix"]}
        return FoundFile(path, tool["kind"], size, fmt, variant=tool["variant"], parts=parts, note=tool["note"])
    found = {"transformer": _transformer(header, path.name), "vae": layouts.vae_probe(header)}
    found["clip_l"], found["t5xxl"] = layouts.clip_probe(header), layouts.t5_probe(header)
    parts = {k: v["prefix"] for k, v in found.items() if v and "skip" not in v}
    skips = [v["skip"] for v in found.values() if v and "skip" in v]
    if not parts:
        return FoundFile(path, "skipped", size, fmt, reason=skips[0] if skips else layouts.what_else(header))
    tf = found["transformer"] if "transformer" in parts else {}
    kind = "checkpoint" if "transformer" in parts and len(parts) > 1 else next(iter(parts))
    if kind not in ("transformer", "checkpoint") and len(parts) > 1:
        kind = "skipped"  # encoders and a VAE without a transformer: no tool writes such a file
    record = FoundFile(
        path,
        kind,
        size,
        fmt,
        family=tf.get("family"),
        variant=tf.get("variant"),
        layout=tf.get("layout", ""),
        parts=parts,
        note="; ".join(n for n in (tf.get("note", ""), NF4_NOTE if fmt == "nf4" else "") if n),
        reason="parts of a checkpoint without its transformer" if kind == "skipped" else "",
    )
    return record


@lru_cache(maxsize=4096)
def _identify(path: Path, size: int, mtime_ns: int) -> FoundFile:
    """Memoised by size and modification time, so a second scan reads no header again."""
    if path.suffix == ".gguf":
        return _identify_gguf(path, size)
    if path.suffix in (".ckpt", ".pt", ".pth"):
        return FoundFile(path, "skipped", size, "pickle", reason="a pickle file: not read (loading one can run code)")
    from safetensors import SafetensorError

    try:
        header = read_header(path)
    except (SafetensorError, OSError) as err:
        return FoundFile(path, "skipped", size, reason=f"unreadable header: {err}")
    return classify(path, size, header)


def _identify_gguf(path: Path, size: int) -> FoundFile:
    """A GGUF file, by its header: FLUX.1 and FLUX.2 transformers (architecture "flux", as city96's
    ComfyUI-GGUF converter writes both; "flux2" accepted too) and T5-XXL encoders (architecture "t5encoder",
    as llama.cpp's converter writes city96's `t5-v1_1-xxl-encoder-*.gguf`) are read; other models are
    skipped with what they are."""
    try:
        arch, header = quantized.gguf_header(path)
    except ValueError as err:
        return FoundFile(path, "skipped", size, "gguf", reason=f"unreadable GGUF header: {err}")
    fmt = quantized.gguf_format(header)
    if arch in ("t5encoder", "t5"):  # city96's T5-XXL encoder files
        if "token_embd.weight" in header and "enc.blk.0.attn_q.weight" in header:
            return FoundFile(path, "t5xxl", size, fmt, parts={"t5xxl": ""}, note=T5_GGUF_NOTE)
        return FoundFile(path, "skipped", size, fmt, reason="a T5 GGUF file without its token embedding or "
                         "encoder blocks (cut short, or a decoder alone)")  # fmt: skip
    if arch not in ("flux", "flux2"):
        return FoundFile(path, "skipped", size, fmt, reason=f"a GGUF file of architecture {arch or 'unknown'!r}, "
                         "not a FLUX transformer or T5 encoder (the models read from GGUF)")  # fmt: skip
    found = classify(path, size, header)
    if found.usable and found.kind != "transformer":
        return replace(found, kind="skipped", format=fmt, reason="a GGUF file holding more than a transformer")
    return replace(found, format=fmt)


def identify(path: Path) -> FoundFile:
    """What the model file at `path` is (see the module docstring); raises OSError if it cannot be stat'ed."""
    st = path.stat()
    return _identify(path, st.st_size, st.st_mtime_ns)


def model_folders(folder: Path) -> list[Path]:
    """The sub-folders of a ComfyUI root, a Forge/A1111 root or a bare models folder that hold models; the
    folder itself when it has none of them (a folder of files given directly)."""
    found = []
    for sub in SUBFOLDERS:
        for candidate in (folder / "models" / sub, folder / sub):
            if candidate.is_dir() and candidate.resolve() not in {f.resolve() for f in found}:
                found.append(candidate)
    return found or [folder]


SCAN_TTL_S = 60.0  # how long a scan's result serves source lookups before the folders are walked again
_scans: dict[tuple[Path, ...], tuple[float, list[FoundFile]]] = {}


def scan(folders: Iterable[Path], fresh: bool = False) -> list[FoundFile]:
    """Every model file below `folders` (see `model_folders`), identified, in search order; each file once.

    Source lookups run on requests (an auxiliary model's source, each control or VQA run), and a models
    folder can hold thousands of files: a walk is reused for SCAN_TTL_S, unless `fresh` (the Models tab's
    Rescan). Headers are read once per file anyway (`identify` is memoised by size and time)."""
    key = tuple(Path(f).expanduser() for f in folders)
    now = time.monotonic()
    if not fresh and (known := _scans.get(key)) and now - known[0] < SCAN_TTL_S:
        return list(known[1])
    found = _walk(key)
    _scans[key] = (now, found)
    return list(found)


def _walk(folders: tuple[Path, ...]) -> list[FoundFile]:
    seen: set[Path] = set()
    out = []
    for folder in folders:
        if not folder.is_dir():
            log.warning("--models-dir %s: no such folder; skipped", folder)
            continue
        for sub in model_folders(folder):
            for path in sorted(p for p in sub.rglob("*") if p.suffix in SUFFIXES and p.is_file()):
                if (real := path.resolve()) in seen:
                    continue
                seen.add(real)
                out.append(identify(path))
    return out


def variant_files(found: Iterable[FoundFile]) -> dict[str, Path]:
    """variant name (or control LoRA name, see `tool_files`) -> the first usable file that serves it."""
    out: dict[str, Path] = {}
    for f in found:
        if f.usable and f.variant and ("transformer" in f.parts or f.kind in tool_files.KINDS):
            out.setdefault(f.variant, f.path)
    return out


def flux2_part_files(found: Iterable[FoundFile]) -> dict[str, Path]:
    """FLUX.2 part ("flux2-vae", or a text encoder key such as "qwen3-4b") -> the first file holding it."""
    out: dict[str, Path] = {}
    for f in found:
        if f.kind == "flux2_vae":
            out.setdefault(FLUX2_VAE, f.path)
        elif f.kind in ("qwen3", "mistral") and f.variant:
            out.setdefault(f.variant, f.path)
    return out


FLUX2_VAE = "flux2-vae"  # the --model name of the FLUX.2 VAE
# --model name of a shared part -> file part (SigLIP: Redux's image encoder, found beside the FLUX.1 parts)
SHARED_PARTS = {"vae": "vae", "clip": "clip_l", "t5": "t5xxl", "siglip": "siglip"}


def shared_files(found: Iterable[FoundFile]) -> dict[str, Path]:
    """Shared part ("vae", "clip", "t5") -> the first file holding it: files of their own first, then
    all-in-one checkpoints."""
    found = [f for f in found if f.usable]
    out: dict[str, Path] = {}
    for name, part in SHARED_PARTS.items():
        # A GGUF T5 (dequantised as read) only where no full-precision file of the part is there.
        own = [f.path for f in sorted(found, key=lambda f: f.format.startswith("gguf")) if f.kind == part]
        whole = [f.path for f in found if f.kind == "checkpoint" and part in f.parts]
        if own or whole:
            out[name] = (own + whole)[0]
    return out
