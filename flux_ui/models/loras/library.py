"""LoRAs: where they are found, how a prompt names them, and what their files say about themselves.

A prompt names LoRAs with the tag other Stable Diffusion UIs use, `<lora:NAME:WEIGHT>` (WEIGHT defaults to
1); the tags are taken out of the text the encoders see, so the API needs no extra parameter. NAME is
- for a file in a LoRA folder (`--lora-dir`), its path below that folder without `.safetensors`
  (`styles/ink` for `<folder>/styles/ink.safetensors`); when two folders hold the same name the first wins;
- for a LoRA on the Hugging Face hub (`--lora`), the id it was declared with: `owner/repo` (the repo's one
  .safetensors file) or `owner/repo/file.safetensors`. It is downloaded on first use, into the hub cache.

Only .safetensors files are read. Pickles (.ckpt, .pt, .pth, .bin) can run arbitrary code when they are
loaded, so they are refused with a message saying so. Loading LoRAs into models is `lora_adapters`' job.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from flux_ui.core.errors import InvalidInput
from flux_ui.media.metadata import LORA_TAG
from flux_ui.models import sources

log = logging.getLogger(__name__)

SAFE_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
MAX_WEIGHT = 8.0  # |weight| accepted; slider LoRAs go to about ±5, plain ones turn to noise past 2
MAX_PER_REQUEST = 8  # LoRAs one request may name
MAX_LISTED = 40  # names listed in an "unknown LoRA" message
TAG = LORA_TAG  # <lora:NAME> or <lora:NAME:WEIGHT>; NAME has no ':', '<' or '>'.
_HUB_PART = re.compile(r"^[\w.-]+$")
# Header fields that hold trigger words, in order of preference: the model-spec standard, then the
# keys trainers and downloaders write.
TRIGGER_KEYS = ("modelspec.trigger_phrase", "trigger_words", "trigger_word", "ss_trigger_words", "activation_text")
MAX_TRIGGER_WORDS = 5

LoraRequest = tuple[tuple[str, float], ...]  # (name, weight) in prompt order


def check_name(name: str) -> str:
    """A LoRA name as the prompt gives it, refused if it could reach outside the LoRA folders."""
    name = name.strip()
    if not name:
        raise InvalidInput("prompt", "a <lora:...> tag has no name; write <lora:NAME:WEIGHT>")
    parts = name.split("/")
    if "\\" in name or "\x00" in name or name.startswith(("/", "~")) or any(p in ("", ".", "..") for p in parts):
        raise InvalidInput(
            "prompt",
            f"LoRA name {name!r} is not allowed: a name is a path below a LoRA folder (or a hub id), "
            "with no '..', no leading '/' and no '\\'",
        )
    return name


def check_weight(name: str, weight: object) -> float:
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
        raise InvalidInput("prompt", f"LoRA {name!r}: weight {weight!r} is not a number")
    if abs(weight) > MAX_WEIGHT:
        limit = f"{MAX_WEIGHT:g}"
        raise InvalidInput("prompt", f"LoRA {name!r}: weight {weight:g} is out of range; use -{limit} to {limit}")
    return float(weight)


def parse_prompt(prompt: str) -> tuple[str, LoraRequest]:
    """Split a prompt into the text for the encoders and the LoRAs its `<lora:NAME:WEIGHT>` tags name.

    Raises InvalidInput (field `prompt`) for a malformed tag, a bad weight, an unsafe name, a LoRA named
    twice or more than MAX_PER_REQUEST LoRAs.
    """
    loras: list[tuple[str, float]] = []
    for m in TAG.finditer(prompt):
        name = check_name(m.group(1))
        raw = (m.group(2) or "1").strip()
        try:
            weight = float(raw)
        except ValueError:
            raise InvalidInput("prompt", f"LoRA {name!r}: weight {raw!r} is not a number") from None
        loras.append((name, check_weight(name, weight)))
    text = _tidy(TAG.sub(" ", prompt)) if loras else prompt
    if "<lora:" in text.lower():
        bad = text[text.lower().index("<lora:") :][:60]
        raise InvalidInput("prompt", f"malformed LoRA tag {bad!r}; write <lora:NAME:WEIGHT>, e.g. <lora:ink:0.8>")
    return text, check_request(loras)


def check_request(loras: list[tuple[str, float]] | LoraRequest) -> LoraRequest:
    twice = [n for n, c in Counter(n for n, _ in loras).items() if c > 1]
    if twice:
        raise InvalidInput("prompt", f"LoRA {twice[0]!r} is named more than once; keep one tag, with the weight wanted")
    if len(loras) > MAX_PER_REQUEST:
        raise InvalidInput("prompt", f"names {len(loras)} LoRAs; use at most {MAX_PER_REQUEST}")
    return tuple((check_name(n), check_weight(n, w)) for n, w in loras)


def format_tag(name: str, weight: float = 1.0) -> str:
    return f"<lora:{name}:{weight:g}>"


def _tidy(text: str) -> str:
    """Close the gaps removed tags leave, keeping the prompt's line breaks."""
    return re.sub(r" *\n *", "\n", re.sub(r"[ \t]+", " ", text)).strip()


def tagged_names(prompt: str) -> list[str]:
    """The names in a prompt's LoRA tags, in order, unvalidated (for the UI's picker)."""
    return list(dict.fromkeys(n for m in TAG.finditer(prompt or "") if (n := m.group(1).strip())))


def with_tags(prompt: str, names: list[str], weights: dict[str, float] | None = None) -> str:
    """`prompt` with LoRA tags for exactly `names`: other tags removed, tags kept with their weights, the
    missing ones appended with the weight in `weights` (default 1)."""
    keep = set(names)
    text = TAG.sub(lambda m: m.group(0) if m.group(1).strip() in keep else " ", prompt or "")
    present = set(tagged_names(text))
    missing = [format_tag(n, (weights or {}).get(n, 1.0)) for n in names if n not in present]
    return _tidy(" ".join([text, *missing]))


# -- what a file says about itself -----------------------------------------------------------------------


def header_metadata(path: Path) -> dict[str, str]:
    """The `__metadata__` strings of a .safetensors file, read from its header without loading tensors."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def trigger_words(meta: dict[str, str]) -> tuple[str, ...]:
    """Trigger words recorded in a LoRA's header: an explicit field if there is one, else the caption tags
    of its training set that occur most often (kohya's `ss_tag_frequency`): a trigger word is in every
    caption."""
    for key in TRIGGER_KEYS:
        if value := meta.get(key, "").strip():
            words = [w.strip() for w in re.split(r"[,\n]", value) if w.strip()]
            return tuple(dict.fromkeys(words))[:MAX_TRIGGER_WORDS]
    try:
        datasets = json.loads(meta.get("ss_tag_frequency") or "{}")
    except ValueError:
        return ()
    counts: Counter[str] = Counter()
    for tags in datasets.values() if isinstance(datasets, dict) else ():
        if isinstance(tags, dict):
            counts.update({str(t).strip(): int(c) for t, c in tags.items() if isinstance(c, int | float)})
    if not counts:
        return ()
    top = max(counts.values())
    return tuple(t for t, c in counts.most_common() if c == top and t)[:MAX_TRIGGER_WORDS]


# -- the library -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoraInfo:
    """One LoRA the prompt can name."""

    name: str  # what the prompt writes in <lora:NAME:...>
    path: Path | None  # the local file; None for a hub LoRA not downloaded yet
    repo_id: str | None = None  # hub repo of a hub LoRA
    filename: str | None = None  # file in that repo; None: the repo's one .safetensors file
    trigger_words: tuple[str, ...] = ()  # from the file's header, if it carries them

    @property
    def source(self) -> str:
        if self.repo_id is None:
            return str(self.path)
        return f"{self.repo_id}/{self.filename}" if self.filename else self.repo_id

    @property
    def label(self) -> str:
        return f"{self.name}  ·  {', '.join(self.trigger_words)}" if self.trigger_words else self.name


@dataclass(frozen=True)
class LoraFile:
    """A LoRA resolved to a file on disk, ready to load."""

    name: str
    path: Path
    signature: tuple[str, int, int]  # (resolved path, mtime in ns, size): a changed file is loaded afresh


def parse_hub_spec(spec: str) -> tuple[str, str | None]:
    """ "owner/repo" or "owner/repo/path/file.safetensors" -> (repo id, filename or None)."""
    parts = spec.strip().strip("/").split("/")
    if len(parts) < 2 or not all(_HUB_PART.match(p) for p in parts):
        raise ValueError(f"--lora: expected OWNER/REPO or OWNER/REPO/FILE.safetensors, got {spec!r}")
    return "/".join(parts[:2]), "/".join(parts[2:]) or None


def _refuse_pickle(name: str, filename: str) -> InvalidInput:
    return InvalidInput(
        "prompt",
        f"LoRA {name!r} is a pickle file ({filename}): pickles can run arbitrary code when loaded, so FLUX UI "
        "loads only .safetensors. Use a .safetensors version of this LoRA (most download pages offer one, and "
        "kohya's sd-scripts or safetensors' convert tools turn a trusted pickle into one)",
    )


class LoraLibrary:
    """The LoRAs in the LoRA folders and those declared on the hub; scanned on first use and on refresh.

    Scanning reads file names and headers only, never tensors. Thread-safe; it takes no registry lock, so
    a rescan never waits for a running generation.
    """

    def __init__(self, folders: tuple[Path, ...] | list[Path] = (), hub: tuple[str, ...] | list[str] = ()):
        self.folders = tuple(Path(f) for f in folders)
        self._hub = [parse_hub_spec(s) for s in hub]  # checked now, so a typo stops the app at start-up
        self._hub_names = [s.strip().strip("/") for s in hub]
        self._lock = threading.Lock()
        self._entries: dict[str, LoraInfo] | None = None
        self._pickles: dict[str, Path] = {}  # name (with and without suffix) -> pickle file found

    def refresh(self) -> list[LoraInfo]:
        """Rescan the folders (and re-read headers); return every LoRA, sorted by name."""
        entries: dict[str, LoraInfo] = {}
        pickles: dict[str, Path] = {}
        for folder in self.folders:
            if not folder.is_dir():
                log.info("LoRA folder %s does not exist; skipped", folder)
                continue
            for path in sorted(folder.rglob("*")):
                if not path.is_file():
                    continue
                rel = path.relative_to(folder).as_posix()
                suffix = path.suffix.lower()
                if suffix == SAFE_SUFFIX:
                    name = rel[: -len(SAFE_SUFFIX)]
                    if name in entries:
                        log.warning("LoRA %r in %s is shadowed by %s", name, path, entries[name].path)
                        continue
                    entries[name] = LoraInfo(name, path, trigger_words=self._triggers(path))
                elif suffix in PICKLE_SUFFIXES:
                    log.warning("ignoring %s: a pickle, which FLUX UI does not load (use .safetensors)", path)
                    pickles.setdefault(rel, path)
                    pickles.setdefault(rel[: -len(suffix)], path)
        for spec, (repo_id, filename) in zip(self._hub_names, self._hub, strict=True):
            path = self._cached_hub_file(repo_id, filename)
            triggers = self._triggers(path) if path is not None else ()
            entries.setdefault(spec, LoraInfo(spec, path, repo_id, filename, triggers))
        with self._lock:
            self._entries, self._pickles = entries, pickles
        log.info("LoRAs found: %d", len(entries))
        return sorted(entries.values(), key=lambda e: e.name.lower())

    def entries(self) -> list[LoraInfo]:
        with self._lock:
            entries = self._entries
        if entries is None:
            return self.refresh()
        return sorted(entries.values(), key=lambda e: e.name.lower())

    def get(self, name: str) -> LoraInfo:
        """The LoRA called `name`; InvalidInput (field `prompt`) listing the available ones otherwise."""
        name = check_name(name)
        available = self.entries()
        with self._lock:
            info = (self._entries or {}).get(name)
            pickle = self._pickles.get(name)
        if info is not None:
            return info
        if pickle is not None or name.lower().endswith(PICKLE_SUFFIXES):
            raise _refuse_pickle(name, pickle.name if pickle else name)
        names = [e.name for e in available]
        listed = ", ".join(names[:MAX_LISTED])
        if len(names) > MAX_LISTED:
            listed += f", … ({len(names) - MAX_LISTED} more)"
        where = ", ".join(str(f) for f in self.folders) or "no folder"
        raise InvalidInput(
            "prompt",
            f"no LoRA named {name!r}; available: {listed or 'none'} "
            f"(LoRA folders: {where}; add files there and press refresh, or declare hub LoRAs with --lora)",
        )

    def fetch(self, name: str) -> LoraFile:
        """Resolve `name` to a file on disk, downloading a hub LoRA into the hub cache on first use."""
        info = self.get(name)
        path = info.path if info.repo_id is None else self._download(info)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise InvalidInput("prompt", f"LoRA {name!r}: {path} is gone; rescan the LoRA folders") from None
        return LoraFile(name, path, (str(path.resolve()), st.st_mtime_ns, st.st_size))

    # -- helpers ---------------------------------------------------------------------------------------

    @staticmethod
    def _triggers(path: Path) -> tuple[str, ...]:
        from safetensors import SafetensorError

        try:
            return trigger_words(header_metadata(path))
        except (OSError, SafetensorError) as err:  # reported again, to the user, if the LoRA is used
            log.warning("could not read the header of %s: %s", path, err)
            return ()

    @staticmethod
    def _cached_hub_file(repo_id: str, filename: str | None) -> Path | None:
        if filename is None:
            return None
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, filename)
        return Path(found) if isinstance(found, str) else None

    def _download(self, info: LoraInfo) -> Path:
        from huggingface_hub import HfApi, hf_hub_download

        repo_id, filename = str(info.repo_id), info.filename
        what, setting = f"LoRA {info.name!r}", "--lora"
        if filename is None:
            files = sources.load(what, repo_id, setting, lambda: HfApi().list_repo_files(repo_id))
            filename = self._pick_hub_file(info.name, files)
        if filename.lower().endswith(PICKLE_SUFFIXES):
            raise _refuse_pickle(info.name, filename)
        if not filename.endswith(SAFE_SUFFIX):
            raise InvalidInput("prompt", f"LoRA {info.name!r}: {filename} is not a .safetensors file")
        # Downloaded by `sources.load` first (the progress shown), then found in the cache.
        path = Path(sources.load(what, repo_id, setting, lambda: hf_hub_download(repo_id, filename), filename=filename))
        with self._lock:  # the header is readable now: show its trigger words from here on
            if self._entries is not None and info.name in self._entries:
                self._entries[info.name] = replace(info, path=path, trigger_words=self._triggers(path))
        return path

    @staticmethod
    def _pick_hub_file(name: str, files: list[str]) -> str:
        safe = [f for f in files if f.endswith(SAFE_SUFFIX)]
        if len(safe) == 1:
            return safe[0]
        if "pytorch_lora_weights.safetensors" in safe:  # the name diffusers' trainers write
            return "pytorch_lora_weights.safetensors"
        if not safe:
            pickles = [f for f in files if f.lower().endswith(PICKLE_SUFFIXES)]
            if pickles:
                raise _refuse_pickle(name, pickles[0])
            raise InvalidInput("prompt", f"LoRA {name!r}: the repo holds no .safetensors file")
        raise InvalidInput(
            "prompt",
            f"LoRA {name!r}: the repo holds several .safetensors files ({', '.join(safe[:8])}); "
            f"declare one as --lora {name}/FILE.safetensors",
        )
