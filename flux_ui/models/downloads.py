"""Downloads from the hub, made visible: a model part that is not fully in the hub cache (a FLUX part, an
auxiliary model such as the VQA model, Redux's image encoder, the depth estimator or the safety classifier,
or a hub LoRA's file) is fetched here, file by file, before its loader runs, and the progress (file, bytes
of bytes, rate) is recorded for the UI's start-up line, `/status` and the log.

Left to diffusers' and transformers' `from_pretrained`, a download shows only the hub client's tqdm bars on
the console. `snapshot_download(tqdm_class=...)` is no cure on its own: it reports one sum of bytes over
all files, never which file is coming (the class is not passed to each file's download), so the files are
planned with `snapshot_download(dry_run=True)` and fetched one at a time with `hf_hub_download`, whose
bar is one file's. A last `snapshot_download` writes the cache's refs and file listing, so the next
start sees the part complete without asking the hub.
"""

from __future__ import annotations

import glob
import logging
import threading
import time
from pathlib import Path

from tqdm.std import tqdm

log = logging.getLogger(__name__)

LOG_EVERY_S = 10.0  # how often a running download is logged on the console
WHOLE_REPO = ""  # `fetch`'s subfolder for a repo its loader reads whole
# Weight formats the loaders never read when safetensors are there: not fetched (unless named as the file).
IGNORED = ["*.bin", "*.pt", "*.pth", "*.ckpt", "*.msgpack", "*.h5", "*.onnx", "*.onnx_data", "*.gguf"]


class Downloads:
    """The download under way (one at a time: loads run under the registry's lock) and the files fetched."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._part: dict | None = None  # what, repo, files [(name, size)], index, file_done, done, started
        self.fetched: list[dict] = []  # {"repo", "file", "done", "total"} of every file fetched, in order
        self._logged = 0.0

    def begin(self, what: str, repo: str, files: list[tuple[str, int]]) -> None:
        with self._lock:
            self._part = {"what": what, "repo": repo, "files": files, "index": -1, "file_done": 0, "done": 0}
            self._part["started"] = time.monotonic()
        total = sum(size for _, size in files)
        log.info("downloading %s from %s: %d files, %s", what, repo, len(files), gb(total))

    def start_file(self, name: str) -> None:
        with self._lock:
            if self._part is not None:
                self._part["index"] = next(i for i, (n, _) in enumerate(self._part["files"]) if n == name)
                self._part["file_done"] = 0

    def advance(self, n: float) -> None:
        """`n` more bytes of the current file (negative when the hub client restarts a file)."""
        with self._lock:
            if self._part is None or self._part["index"] < 0:
                return
            self._part["file_done"] += int(n)
            self._part["done"] += int(n)
        if time.monotonic() - self._logged >= LOG_EVERY_S:
            self._logged = time.monotonic()
            log.info("%s", self.line().replace("**", ""))

    def end_file(self) -> None:
        with self._lock:
            if (p := self._part) is not None and p["index"] >= 0:
                name, size = p["files"][p["index"]]
                self.fetched.append({"repo": p["repo"], "file": name, "done": p["file_done"], "total": size})

    def end(self) -> None:
        with self._lock:
            p, self._part = self._part, None
        if p is not None:
            seconds = time.monotonic() - p["started"]
            log.info("downloaded %s from %s: %s in %.0f s", p["what"], p["repo"], gb(p["done"]), seconds)

    @property
    def active(self) -> bool:
        return self._part is not None

    def snapshot(self) -> dict:
        """The record as JSON: the download under way (None when there is none) and the files fetched."""
        with self._lock:
            p = self._part
            now = None
            if p is not None and p["index"] >= 0:
                name, size = p["files"][p["index"]]
                seconds = max(time.monotonic() - p["started"], 1e-6)
                now = {
                    "what": p["what"],
                    "repo": p["repo"],
                    "file": name,
                    "file_index": p["index"],
                    "files": len(p["files"]),
                    "file_done": p["file_done"],
                    "file_total": size,
                    "done": p["done"],
                    "total": sum(s for _, s in p["files"]),
                    "rate_bps": round(p["done"] / seconds),
                }
            return {"now": now, "fetched": [dict(f) for f in self.fetched]}

    def line(self) -> str:
        """One line for a person while a download runs; "" otherwise."""
        return describe(self.snapshot())


def describe(s: dict) -> str:
    """`Downloads.line` from a snapshot (the UI reads the snapshot inside `/status`)."""
    if not (now := s.get("now")):
        return ""
    text = (
        f"**Downloading** {now['what']} from {now['repo']}: {now['file'].rsplit('/', 1)[-1]} "
        f"{gb(now['file_done'], now['file_total'])}, {rate(now['rate_bps'])}"
    )
    if now["files"] > 1:
        text += f" (file {now['file_index'] + 1} of {now['files']}, {gb(now['done'], now['total'])} in all)"
    return text


def gb(done: int, total: int | None = None) -> str:
    """Bytes as a person reads them: "1.2 of 9.9 GB", "3.4 MB"."""
    scale, unit = (1e9, "GB") if (total or done) >= 1e9 else (1e6, "MB") if (total or done) >= 1e6 else (1e3, "kB")
    if total is None:
        return f"{done / scale:.1f} {unit}"
    return f"{done / scale:.1f} of {total / scale:.1f} {unit}"


def rate(bps: float) -> str:
    """A download rate: "85 MB/s", "640 kB/s"."""
    return f"{bps / 1e6:.0f} MB/s" if bps >= 1e6 else f"{bps / 1e3:.0f} kB/s"


progress = Downloads()  # the process's one record: there is one hub cache, and loads run one at a time


class _Bar(tqdm):
    """The hub client's progress bar for one file, turned into reports to `progress` (the console gets
    `Downloads`' periodic log lines instead of a bar)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.pop("name", None)
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)
        if initial := kwargs.get("initial"):  # a download resumed from a partial file
            progress.advance(initial)

    def update(self, n: float | None = 1) -> None:
        progress.advance(n or 0)


def fetch(what: str, repo: str, subfolder: str = WHOLE_REPO, filename: str | None = None) -> None:
    """Download what a loader reads of `repo` into the hub cache, recording the progress, unless it is all
    there already: its `subfolder` (a diffusers part; WHOLE_REPO for a model read whole, as transformers'
    models are), or only its file `filename` (a LoRA). Errors are the hub client's (the caller explains them)."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    allow = [glob.escape(filename)] if filename else [f"{subfolder}/*"] if subfolder else None
    patterns = {"allow_patterns": allow, "ignore_patterns": None if filename else IGNORED}
    try:
        snapshot_download(repo, local_files_only=True, **patterns)
        return  # complete in the cache (checked against the file listing cached with it)
    except LocalEntryNotFoundError:
        pass
    todo = [f for f in snapshot_download(repo, dry_run=True, tqdm_class=_Bar, **patterns) if f.will_download]
    if todo:
        progress.begin(what, repo, [(f.filename, f.file_size or 0) for f in todo])
        try:
            for f in todo:
                progress.start_file(f.filename)
                hf_hub_download(repo, f.filename, revision=f.commit_hash, tqdm_class=_Bar)
                progress.end_file()
        finally:
            progress.end()
    snapshot_download(repo, tqdm_class=_Bar, **patterns)  # all cached now: writes refs/ and the file listing


def cached(repo: str, subfolder: str) -> bool:
    """Whether `repo`'s `subfolder` is complete in the hub cache: read from disk only (the cache's refs and
    the file listing cached with a snapshot; where no listing was cached, the folder has files)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = snapshot_download(
            repo, local_files_only=True, allow_patterns=[f"{subfolder}/*"], ignore_patterns=IGNORED
        )
    except LocalEntryNotFoundError:  # nothing cached, or the listing names files that are not there
        return False
    part = Path(folder) / subfolder
    return part.is_dir() and any(part.iterdir())
