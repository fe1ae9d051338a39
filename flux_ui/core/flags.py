"""The command line: every flag, its help, and its default from the environment (`FLUX_UI_<NAME>`).

`core.settings` turns what this parser reads into the typed Settings; the defaults that other modules
name (the shared repo, the LoRA folder, the VQA and safety models) live here beside the flags that set them.
"""

from __future__ import annotations

import argparse
import os

# Where shared text encoders and the VAE come from: [schnell]'s repo is Apache-2.0 and not gated, and
# its T5, CLIP and VAE weights are the ones every FLUX.1 variant uses.
DEFAULT_SHARED_REPO = "black-forest-labs/FLUX.1-schnell"
DEFAULT_LORA_DIR = "models/loras"  # searched when no --lora-dir is given
TINY_LORA_SUBDIR = "loras"  # tiny mode's LoRA folder, below --tiny-dir, where the tiny LoRA writer puts them
# The vision-language model of the VQA tab: Apache-2.0, trained on documents (Docmatix) and charts, 5 GB of
# GPU memory, and its processor needs no torchvision (README, "Visual question answering", says more).
DEFAULT_VQA_MODEL = "HuggingFaceTB/SmolVLM-Instruct"
# The NSFW classifier of --safety-checker: the one the FLUX authors' reference code uses (flux_ui/output/safety.py).
DEFAULT_SAFETY_MODEL = "Falconsai/nsfw_image_detection"


def env(name: str, default: str) -> str:
    return os.environ.get(f"FLUX_UI_{name.upper()}", default)


def env_flag(name: str) -> bool:
    return env(name, "0").lower() in {"1", "true", "yes", "on"}


def build_parser() -> argparse.ArgumentParser:
    """The command line; each default comes from FLUX_UI_<NAME> when that is set."""
    p = argparse.ArgumentParser(description="FLUX UI: a web UI for the FLUX.1 image models.")
    p.add_argument(
        "--tiny",
        action="store_true",
        default=env_flag("tiny"),
        help="tiny random-weight models",
    )
    p.add_argument(
        "--tiny-dir",
        default=env("tiny_dir", "models/tiny"),
        help="where tiny models are written",
    )
    # A Space sets GRADIO_SERVER_NAME=0.0.0.0 and expects the app there.
    host = env("host", os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    p.add_argument("--host", default=host, help="address to bind")
    p.add_argument("--port", type=int, default=int(env("port", "7860")), help="port to listen on")
    p.add_argument(
        "--share",
        action="store_true",
        default=env_flag("share"),
        help="open a share link",
    )
    p.add_argument(
        "--auth",
        default=env("auth", ""),
        metavar="USER:PASSWORD",
        help="require this login for the UI (and REST, as HTTP Basic)",
    )
    p.add_argument(
        "--no-auth",
        action="store_true",
        default=env_flag("no_auth"),
        help="no generated password for --share or a non-loopback --host",
    )
    p.add_argument("--api-key", default=env("api_key", ""), help="key the REST API requires in X-API-Key")
    p.add_argument(
        "--mcp",
        action="store_true",
        default=env_flag("mcp"),
        help="serve the tasks as MCP tools (needs gradio[mcp])",
    )
    p.add_argument(
        "--safety-checker",
        action="store_true",
        default=env_flag("safety_checker"),
        help="blur generated images an NSFW classifier flags",
    )
    p.add_argument("--safety-model", default=env("safety_model", DEFAULT_SAFETY_MODEL))
    p.add_argument("--safety-threshold", type=float, default=float(env("safety_threshold", "0.85")))
    p.add_argument("--device", default=env("device", "auto"), help="auto, cuda, mps or cpu")
    p.add_argument(
        "--dtype",
        default=env("dtype", "auto"),
        help="auto, bfloat16, float16 or float32",
    )
    p.add_argument("--speed", default=env("speed", "auto"), help="auto, off, compile or fp8 (see README)")
    p.add_argument(
        "--model-root",
        default=env("model_root", ""),
        help="folder of local models as <org>/<repo>",
    )
    p.add_argument(
        "--model",
        action="append",
        default=[s for s in env("models", "").split(",") if s],
        metavar="NAME=SOURCE",
        help="repo id, local folder or single file for a variant (or 'shared' for the encoders and VAE; "
        "'vae', 'clip', 't5' for one of them); repeatable",
    )
    p.add_argument(
        "--models-dir",
        action="append",
        default=[s for s in env("models_dir", "").split(os.pathsep) if s],
        metavar="PATH",
        help="a ComfyUI or Forge/A1111 install (or its models folder) whose single files to use; repeatable",
    )
    p.add_argument(
        "--verify-weights",
        nargs="?",
        const="on",
        default=env("verify_weights", ""),
        metavar="MANIFEST",
        help="check each single model file's sha256 before use and refuse a mismatch: against MANIFEST "
        "(sha256sum lines) if given, the hub's record, or the file's first use",
    )
    p.add_argument(
        "--shared-repo",
        default=env("shared_repo", DEFAULT_SHARED_REPO),
        help="encoders+VAE repo",
    )
    p.add_argument(
        "--outputs-dir",
        default=env("outputs_dir", "outputs"),
        help="where images are saved",
    )
    p.add_argument(
        "--history",
        action=argparse.BooleanOptionalAction,
        default=None if env("history", "") == "" else env_flag("history"),
        help="record saved images in <outputs-dir>/history.sqlite and show the History tab (default: on for a "
        "private server: loopback host, no share link, not a Space, or any server with --auth)",
    )
    p.add_argument(
        "--history-shared",
        action="store_true",
        default=env_flag("history_shared"),
        help="with a login, every user sees every image in History",
    )
    p.add_argument("--max-megapixels", type=float, default=float(env("max_megapixels", "2.0")))
    p.add_argument("--max-steps", type=int, default=int(env("max_steps", "100")))
    p.add_argument("--max-images", type=int, default=int(env("max_images", "4")))
    p.add_argument("--max-upload-mb", type=float, default=float(env("max_upload_mb", "30")))
    p.add_argument("--max-body-mb", type=float, default=float(env("max_body_mb", "64")))
    p.add_argument("--max-history-chars", type=int, default=int(env("max_history_chars", "24000")))
    p.add_argument("--max-sessions", type=int, default=int(env("max_sessions", "400")))
    p.add_argument("--transformer-cache", type=int, default=int(env("transformer_cache", "2")))
    p.add_argument(
        "--memory-policy",
        default=env("memory_policy", "auto"),
        help="auto, resident, fp8-24gb, offload-12gb or cpu; auto picks from the GPU's memory (see README)",
    )
    p.add_argument(
        "--vae-tiling",
        choices=("auto", "on", "off"),
        default=env("vae_tiling", "auto"),
        help="VAE encode/decode in overlapping tiles: auto (above a size the memory policy sets), on or off",
    )
    p.add_argument(
        "--ram-budget-gb",
        default=env("ram_budget_gb", "auto"),
        help="GiB of CPU RAM for warm transformers; auto: 70%% of the RAM available at start-up",
    )
    p.add_argument(
        "--gpu-transformers",
        default=env("gpu_transformers", "auto"),
        help="transformers kept on the GPU at once; auto: as many as the GPU's free memory holds",
    )
    p.add_argument(
        "--vqa-model",
        default=env("vqa_model", DEFAULT_VQA_MODEL),
        help="repo id or local folder of the vision-language model for the VQA tab",
    )
    p.add_argument("--max-answer-tokens", type=int, default=int(env("max_answer_tokens", "1024")))
    p.add_argument("--preview-every", type=int, default=int(env("preview_every", "4")))
    p.add_argument("--queue-size", type=int, default=int(env("queue_size", "16")))
    p.add_argument(
        "--lora-dir",
        action="append",
        default=[s for s in env("lora_dirs", "").split(os.pathsep) if s],
        metavar="FOLDER",
        help=f"folder of .safetensors LoRAs, searched recursively; repeatable (default: {DEFAULT_LORA_DIR})",
    )
    p.add_argument(
        "--lora",
        action="append",
        default=[s for s in env("loras", "").split(",") if s],
        metavar="REPO[/FILE]",
        help="a LoRA on the Hugging Face hub, downloaded on first use; repeatable",
    )
    p.add_argument("--lora-cache", type=int, default=int(env("lora_cache", "8")))
    p.add_argument(
        "--train-dir",
        action="append",
        default=[s for s in env("train_dirs", "").split(os.pathsep) if s],
        metavar="FOLDER",
        help="a folder on this server whose image folders the Train tab may read; repeatable (default: none)",
    )
    p.add_argument(
        "--compile-cache",
        default=env("compile_cache", "") or None,
        metavar="FOLDER",
        help="torch's compile caches, kept across restarts (default: <outputs-dir>/.compile-cache)",
    )
    p.add_argument(
        "--preload",
        action="store_true",
        default=env_flag("preload"),
        help="load and warm (compile) the default variant in the background at start-up",
    )
    p.add_argument(
        "--keep-float8",
        action="store_true",
        default=env_flag("keep_float8"),
        help="under the fp8 profile, keep each transformer's float8 conversion on disk (in the compile-cache "
        "folder) so a restart reads half the bytes and skips the conversion",
    )
    p.add_argument(
        "--replicas",
        type=int,
        default=int(env("replicas", "0")),
        help="serve the tasks from N Ray Serve replicas, one GPU each (0: in this process); needs ray[serve]",
    )
    p.add_argument(
        "--ray-address",
        default=env("ray_address", "") or None,
        metavar="ADDR",
        help="with --replicas: the Ray cluster to deploy on (e.g. ray://head:10001 or auto); default: a local one",
    )
    p.add_argument(
        "--context-parallel",
        type=int,
        default=int(env("context_parallel", "1")),
        metavar="N",
        help="split each image's transformer over N GPUs (diffusers' context parallelism); launch with "
        "torchrun --nproc-per-node N",
    )
    return p
