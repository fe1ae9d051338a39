"""Short hashes of model and LoRA files, as A1111 and Forge write them into images (`Model hash: ...`,
`Lora hashes: "name: ..."`), so Civitai and other tools can link an image to the files that made it.

- Model hash (Civitai's "AutoV2"): the first 10 hex digits of the sha256 of the whole file.
- LoRA hash ("AutoV3", the hash Kohya's sd-scripts and A1111 use for .safetensors LoRAs): the first 12 of
  the sha256 of the tensor data, the file less its header (so editing the metadata keeps the hash).

Hashing a 24 GB transformer takes tens of seconds, so each file is hashed once: the full sha256 is kept
per (path, size, modification time), in memory and, for files of HASH_CACHE_MIN_BYTES or more, in a JSON
file that outlives the process (FLUX_UI_HASH_CACHE, default ~/.cache/flux-ui/hashes.json), as A1111 keeps
its cache.json. A transformer read from a single file starts its hash in a background thread as it starts
loading (`start`); the first image waits for what is left of it at most, later ones find it done.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

log = logging.getLogger(__name__)

MODEL_HASH_DIGITS = 10  # A1111's shorthash of a checkpoint
LORA_HASH_DIGITS = 12  # A1111's shorthash of a LoRA
HASH_CACHE_MIN_BYTES = 64 * 2**20  # smaller files hash in well under a second: not worth a line on disk
_CHUNK = 2**20

_lock = threading.Lock()
_futures: dict[tuple, Future] = {}  # (kind, resolved path, size, mtime_ns) -> its sha256, done or running
_fresh: set[tuple] = set()  # keys of _futures hashed from the file itself, not taken from the cache file
_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="file-hash")  # one disk reader at a time


def cache_file() -> Path:
    return Path(os.environ.get("FLUX_UI_HASH_CACHE") or Path.home() / ".cache" / "flux-ui" / "hashes.json")


def _sha256(path: Path, skip_header: bool) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if skip_header:  # safetensors: 8 bytes of header length, the JSON header, then the tensor data
            f.seek(8 + int.from_bytes(f.read(8), "little"))
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _read_cache() -> dict:
    try:
        return json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(key: str, value: str) -> None:
    """Add one entry to the cache file: written aside and renamed over it, so a crash leaves the old one."""
    path = cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        entries = _read_cache() | {key: value}
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entries, indent=0))
        tmp.replace(path)
    except OSError as err:  # a read-only home: the hash still serves this process
        log.warning("could not record a file hash in %s: %s", path, err)


def _compute(kind: str, path: Path, size: int, mtime_ns: int, fresh: bool = False) -> str:
    key = f"{kind}:{path}:{size}:{mtime_ns}"
    big = size >= HASH_CACHE_MIN_BYTES
    if big and not fresh and (known := _read_cache().get(key)):
        return known
    if big:
        log.info("hashing %s (%.1f GB) once, for the images' metadata", path.name, size / 1e9)
    value = _sha256(path, skip_header=kind == "lora")
    if big:
        _write_cache(key, value)
    return value


def start(path: Path | str, kind: str = "model", fresh: bool = False) -> Future:
    """The sha256 of a file ("model": the whole file; "lora": its tensor data), computed in the background
    once per path, size and modification time; returns its Future at once. With `fresh` (--verify-weights)
    the file is read even if the cache file knows its hash: corruption changes neither size nor time."""
    path = Path(path).resolve()
    st = path.stat()
    key = (kind, path, st.st_size, st.st_mtime_ns)
    with _lock:
        if key not in _futures or (fresh and key not in _fresh):
            _futures[key] = _pool.submit(_compute, kind, path, st.st_size, st.st_mtime_ns, fresh)
            if fresh:
                _fresh.add(key)
        return _futures[key]


def model_hash(path: Path | str) -> str:
    """A1111's `Model hash` of a model file (waits for `start`'s hash if it is still running)."""
    return start(path, "model").result()[:MODEL_HASH_DIGITS]


def lora_hash(path: Path | str) -> str:
    """A1111's hash of a .safetensors LoRA in `Lora hashes`."""
    return start(path, "lora").result()[:LORA_HASH_DIGITS]
