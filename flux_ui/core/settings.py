"""Start-up settings: one typed object, built once from the command line and the environment.

Every setting has a command-line flag and an environment variable `FLUX_UI_<NAME>`; the flag wins.
Hub conventions (HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE, HF_HOME) are read by huggingface_hub itself.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from flux_ui.core.flags import (
    DEFAULT_LORA_DIR,
    DEFAULT_SAFETY_MODEL,
    DEFAULT_SHARED_REPO,
    DEFAULT_VQA_MODEL,
    TINY_LORA_SUBDIR,
    build_parser,
)
from flux_ui.core.policies import GIB, MemoryPolicy, get_policy, resolve_policy

DTYPES = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
}


@dataclass(frozen=True)
class Settings:
    """Everything decided at start-up; passed down, never read from globals."""

    device: str = "cpu"  # torch device for inference: "cuda", "mps" or "cpu"
    dtype: torch.dtype = torch.float32  # weight and compute dtype of every model
    speed: str = "off"  # speed profile applied to loaded models: off, compile or fp8 (see flux_ui.models.speed)
    compile_cache: Path | None = None  # torch's compile caches; None: <outputs_dir>/.compile-cache
    preload: bool = False  # load and warm the default variant in the background at start-up
    keep_float8: bool = False  # keep float8 transformers on disk in the compile-cache folder (models.float8_store)
    tiny: bool = False  # serve tiny random-weight models instead of real weights
    tiny_dir: Path = Path("models/tiny")  # where tiny models are written once, in hub layout
    model_root: Path | None = None  # folder of local models as <org>/<repo>, tried before the hub
    model_paths: dict[str, str] = field(default_factory=dict)  # variant name (or "shared") -> repo id, folder or file
    models_dirs: tuple[Path, ...] = ()  # ComfyUI / Forge / A1111 roots or models folders, scanned for single files
    verify_weights: bool = False  # check each single model file's sha256 before use (flux_ui.models.verify)
    weights_manifest: Path | None = None  # sha256sum-style list of the expected hashes, consulted first
    shared_repo: str = DEFAULT_SHARED_REPO  # source of the T5/CLIP encoders and the VAE
    outputs_dir: Path = Path("outputs")  # generated PNGs land in dated subfolders here
    history: bool = True  # index saved images in <outputs_dir>/history.sqlite and show the History tab
    history_shared: bool = False  # with a login, every user sees every image in History (else only their own)
    max_megapixels: float = 2.0  # largest width*height accepted, in millions of pixels
    max_steps: int = 100  # most denoising steps accepted per image
    max_images: int = 4  # most images per request
    max_prompt_chars: int = 4000  # longest prompt accepted, in characters
    max_upload_mb: float = 30.0  # largest uploaded file (UI upload or one REST image), in MB (10**6 bytes)
    max_body_mb: float = 64.0  # largest request body (REST JSON, Gradio API calls), in MB; uploads excepted
    max_history_chars: int = 24_000  # longest VQA chat history sent with a question, in characters
    max_sessions: int = 400  # sessions whose UI state (Kontext chain, selection) is kept; the oldest dropped
    transformer_cache: int = 2  # transformers kept loaded (LRU); the rest are dropped
    memory_policy: str = "resident"  # how models sit in GPU memory: a name of flux_ui.core.policies.POLICIES
    vae_tiling: str = "auto"  # VAE in tiles: on, off, or auto (above the memory policy's size)
    policy_reason: str = "default"  # why that policy, for the log and the Models tab ("23.6 GiB GPU")
    ram_budget_bytes: int | None = None  # most bytes of warm (RAM-held) transformers; None: no limit
    gpu_transformers: int = 1  # transformers kept on the GPU at once (the active one included)
    vqa_model: str = DEFAULT_VQA_MODEL  # repo id or local folder of the VQA tab's vision-language model
    max_answer_tokens: int = 1024  # longest VQA answer accepted, in generated tokens
    preview_every: int = 4  # decode a live preview every N steps; 0 turns previews off
    queue_size: int = 16  # requests waiting in the queue before new ones are refused
    lora_dirs: tuple[Path, ...] = ()  # folders searched (recursively) for .safetensors LoRAs, first wins
    hub_loras: tuple[str, ...] = ()  # LoRAs on the hub: "owner/repo" or "owner/repo/file.safetensors"
    lora_cache: int = 8  # LoRA adapters kept loaded per model (LRU); more are dropped and re-read when needed
    train_dirs: tuple[Path, ...] = ()  # folders whose image folders training may read (none: uploads only)
    host: str = "127.0.0.1"  # address the server binds to
    port: int = 7860  # port the server listens on
    share: bool = False  # open a public share link
    # Serving (flux_ui/serving/server.py, flux_ui/serving/rest.py): who may reach the GPU, and through what.
    auth: tuple[str, str] | None = None  # (user, password) for the UI; None: see serve.resolve_auth
    no_auth: bool = False  # serve a share link or a non-loopback host without a password (explicit opt-out)
    api_key: str | None = None  # required in the X-API-Key header of REST calls when set
    mcp: bool = False  # expose the tasks as MCP tools through Gradio's MCP server
    safety_checker: bool = False  # blur generated images that the safety classifier flags
    safety_model: str = DEFAULT_SAFETY_MODEL  # repo id or folder of that image classifier
    safety_threshold: float = 0.85  # flag at or above this probability of the "nsfw" label
    on_space: bool = False  # running on a Hugging Face Space (SPACE_ID is set): the Space decides access
    zero_gpu: bool = False  # on a ZeroGPU Space (SPACES_ZERO_GPU, as the `spaces` package reads it): no training
    # Several GPUs (README, "Several GPUs"): replicas on Ray Serve, or one image over GPUs (torchrun).
    replicas: int = 0  # 0: the tasks run in this process; N: on N Ray Serve replicas, each a registry (one GPU)
    ray_address: str | None = None  # Ray cluster to deploy the replicas on; None: start a local Ray instance
    context_parallel: int = 1  # processes (GPUs) one image's transformer is split over; >1 needs torchrun

    @property
    def max_pixels(self) -> int:
        return int(self.max_megapixels * 1_000_000)

    @property
    def compile_cache_dir(self) -> Path:
        """Where torch's compile caches are kept (flux_ui.models.compile_cache)."""
        return self.compile_cache if self.compile_cache is not None else self.outputs_dir / ".compile-cache"

    @property
    def policy(self) -> MemoryPolicy:
        return get_policy(self.memory_policy)


def resolve_device(name: str) -> str:
    """Turn "auto" into the best available device; pass explicit names through."""
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """bf16 on accelerators, fp32 on the CPU (bf16 matmuls are slow there) unless asked otherwise."""
    if name == "auto":
        return torch.float32 if device == "cpu" else torch.bfloat16
    if name not in DTYPES:
        raise ValueError(f"dtype: unknown dtype {name!r}; choose one of: auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def verify_manifest(value: str) -> Path | None:
    """The manifest named by --verify-weights MANIFEST, or None for the plain flag; a manifest that does not
    exist is refused here, not at the first load."""
    if value.lower() in ("", "0", "1", "on", "off", "true", "false", "yes", "no"):
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise ValueError(f"--verify-weights: the manifest {value!r} does not exist; give a file of sha256sum lines")
    return path


def parse_model_paths(items: list[str]) -> dict[str, str]:
    """["dev=/models/flux-dev", "dev=~/ComfyUI/models/unet/flux1-dev.safetensors", ...] -> {"dev": ...}: a
    repo id, a folder in diffusers layout, or a single file."""
    out = {}
    for item in items:
        name, sep, source = item.partition("=")
        if not sep or not name or not source:
            raise ValueError(f"--model: expected NAME=SOURCE, got {item!r}")
        out[name.strip()] = source.strip()
    return out


def default_history(a: argparse.Namespace) -> bool:
    """History is on by default only where its images are the user's own to see: a server on the loopback
    address without a share link, outside a Space, or one with an --auth login its owner hands out. On a
    share link (one generated login for everyone who has the link), a public host without a login, or a
    Space, every visitor would see every other visitor's images: off unless --history asks for it."""
    private = a.host in ("127.0.0.1", "localhost", "::1") and not a.share and not os.environ.get("SPACE_ID")
    return private or bool(a.auth)


def parse_auth(value: str) -> tuple[str, str] | None:
    """ "user:password" -> ("user", "password"); "" -> None. The password may contain colons."""
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ValueError("--auth: expected USER:PASSWORD with both parts non-empty")
    return user, password


def lora_dirs(given: list[str], tiny: bool, tiny_dir: Path) -> tuple[Path, ...]:
    """The LoRA folders: those given (or the default one), then in tiny mode the tiny LoRAs' folder."""
    dirs = [Path(d).expanduser() for d in given] or [Path(DEFAULT_LORA_DIR)]
    if tiny:
        dirs.append(tiny_dir / TINY_LORA_SUBDIR)
    return tuple(dict.fromkeys(dirs))


# Share of the RAM available at start-up that warm transformers may take by default: pinned memory cannot
# be swapped out, so the rest stays for the OS, the page cache and this process's other allocations.
RAM_BUDGET_SHARE = 0.7
# A bf16 FLUX.1 transformer (23.8 GB), and what a run needs beside it: T5-XXL, CLIP, VAE and activations.
TRANSFORMER_GIB, BESIDE_GIB = 22.2, 14.0


def default_ram_budget(available_bytes: int) -> int:
    """The warm tier's default RAM budget, from the RAM available at start-up."""
    return int(available_bytes * RAM_BUDGET_SHARE)


def default_gpu_transformers(policy: str, free_bytes: int | None) -> int:
    """Transformers kept on the GPU at once by default: under `resident`, as many bf16 transformers as the
    free memory holds beside the shared parts and a run's workspace (2 on an 80 GB card); else 1."""
    if policy != "resident" or free_bytes is None:
        return 1
    return max(1, int((free_bytes / GIB - BESIDE_GIB) // TRANSFORMER_GIB))


def _budget(a: argparse.Namespace) -> int | None:
    from flux_ui.core.memory import ram_free_bytes

    if a.ram_budget_gb == "auto":
        return default_ram_budget(ram_free_bytes())
    try:
        gib = float(a.ram_budget_gb)
    except ValueError:
        gib = -1.0
    if gib < 0:
        raise ValueError(f"--ram-budget-gb: expected auto or a number of GiB >= 0, got {a.ram_budget_gb!r}")
    return int(gib * GIB)


def _gpu_transformers(a: argparse.Namespace, policy: str, device: str) -> int:
    if a.gpu_transformers == "auto":
        from flux_ui.core.memory import device_free_bytes

        return default_gpu_transformers(policy, device_free_bytes(device) if device.startswith("cuda") else None)
    if not a.gpu_transformers.isdigit() or int(a.gpu_transformers) < 1:
        raise ValueError(f"--gpu-transformers: expected auto or a whole number >= 1, got {a.gpu_transformers!r}")
    return int(a.gpu_transformers)


def _positive(flag: str, value: float) -> float:
    if not value > 0:
        raise ValueError(f"{flag}: expected a number above 0, got {value}")
    return value


def check_parallel(replicas: int, context_parallel: int, ray_address: str | None) -> None:
    """The several-GPU flags: each in range, and not both (a replica is one process on one GPU; context
    parallelism needs its processes started together by torchrun)."""
    if replicas < 0:
        raise ValueError(f"--replicas: expected 0 (in this process) or a number of replicas >= 1, got {replicas}")
    if context_parallel < 1:
        raise ValueError(f"--context-parallel: expected a number of GPUs >= 1, got {context_parallel}")
    if replicas and context_parallel > 1:
        raise ValueError("--replicas and --context-parallel do not combine yet; choose one (README, 'Several GPUs')")
    if ray_address and not replicas:
        raise ValueError("--ray-address: it says where to deploy --replicas; add --replicas N")


def settings_from_args(argv: list[str] | None = None) -> Settings:
    """Parse the command line (and environment) into Settings, resolving device, dtype, speed profile and
    memory policy once."""
    a = build_parser().parse_args(argv)
    from flux_ui.core.policies import resolve_profile

    device = resolve_device(a.device)
    if a.lora_cache < 1:
        raise ValueError(f"--lora-cache: expected at least 1, got {a.lora_cache}")
    policy, reason = resolve_policy(a.memory_policy, device)
    # Regional compilation through offloading hooks is untested, and with weights streamed per block the
    # copies, not the matmuls, set the pace: offloading runs eager unless a profile is asked for.
    speed = "off" if policy.group_offload and a.speed == "auto" else resolve_profile(a.speed, device)
    if policy.group_offload and speed != "off":
        # The profiles replace and compile layers that the offloading hooks have already registered.
        raise ValueError(
            f"--speed: profile {speed!r} does not combine with --memory-policy {policy.name}; use --speed off (or auto)"
        )
    check_parallel(a.replicas, a.context_parallel, a.ray_address)
    return Settings(
        device=device,
        dtype=resolve_dtype(a.dtype, device),
        speed=speed,
        memory_policy=policy.name,
        vae_tiling=a.vae_tiling,
        policy_reason=reason,
        ram_budget_bytes=_budget(a),
        gpu_transformers=_gpu_transformers(a, policy.name, device),
        tiny=a.tiny,
        tiny_dir=Path(a.tiny_dir),
        # Tiny models live in their own folder in hub layout and are loaded like any local model.
        model_root=Path(a.tiny_dir) if a.tiny else (Path(a.model_root) if a.model_root else None),
        model_paths=parse_model_paths(a.model),
        models_dirs=tuple(dict.fromkeys(Path(d).expanduser() for d in a.models_dir)),
        verify_weights=a.verify_weights.lower() not in ("", "0", "off", "false", "no"),
        weights_manifest=verify_manifest(a.verify_weights),
        shared_repo=a.shared_repo,
        outputs_dir=Path(a.outputs_dir),
        history=default_history(a) if a.history is None else a.history,
        history_shared=a.history_shared,
        max_megapixels=a.max_megapixels,
        max_steps=a.max_steps,
        max_images=a.max_images,
        max_upload_mb=_positive("--max-upload-mb", a.max_upload_mb),
        max_body_mb=_positive("--max-body-mb", a.max_body_mb),
        max_history_chars=int(_positive("--max-history-chars", a.max_history_chars)),
        max_sessions=int(_positive("--max-sessions", a.max_sessions)),
        transformer_cache=a.transformer_cache,
        vqa_model=a.vqa_model,
        max_answer_tokens=a.max_answer_tokens,
        preview_every=a.preview_every,
        queue_size=a.queue_size,
        lora_dirs=lora_dirs(a.lora_dir, a.tiny, Path(a.tiny_dir)),
        hub_loras=tuple(a.lora),
        lora_cache=a.lora_cache,
        train_dirs=tuple(dict.fromkeys(Path(d).expanduser() for d in a.train_dir)),
        compile_cache=None if a.compile_cache is None else Path(a.compile_cache).expanduser(),
        preload=a.preload,
        keep_float8=a.keep_float8,
        host=a.host,
        port=a.port,
        share=a.share,
        auth=parse_auth(a.auth),
        no_auth=a.no_auth,
        api_key=a.api_key or None,
        mcp=a.mcp,
        safety_checker=a.safety_checker,
        safety_model=a.safety_model,
        safety_threshold=a.safety_threshold,
        on_space=bool(os.environ.get("SPACE_ID")),
        zero_gpu=os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true"),
        replicas=a.replicas,
        ray_address=a.ray_address,
        context_parallel=a.context_parallel,
    )
