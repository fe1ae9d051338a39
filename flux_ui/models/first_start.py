"""What the first Generate will have to do, said when the app starts, before anyone presses it: the default
variant's weights (its transformer and the shared T5-XXL, CLIP-L and VAE) are either on this machine, or
will be downloaded (how much, from where, whether a token is needed), or cannot be had (no local files and
the hub is off or does not answer); and, without a GPU, that images will be slow.

Cheap by design, so that it can run at every start: the sources are resolved as the loaders resolve them
(`sources`), the hub cache is read from disk (`downloads.cached`), and the hub is asked at most once
(`sources.hub_reachable`, 3 s at most), only when something must be downloaded; all of it in a background
thread. Recorded for the line above the tabs, the Models tab, `/status` and the log (once).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from flux_ui.core.settings import Settings
from flux_ui.core.variants import FLUX2, VARIANTS, Variant, get_variant
from flux_ui.models import downloads, files, sources

log = logging.getLogger(__name__)

IDLE, CHECKING, DONE = "idle", "checking", "done"  # idle: no check was started (tests, the Python API)
GB = 10**9

# What each part downloads from the hub, in bytes: the weights in the repos' folders as the hub lists them
# (FLUX.1: transformer/ 23.8 GB, the 11.9 B parameters in bf16, its variants differing by kilobytes;
# text_encoder_2/ 9.52 GB; text_encoder/ 246 MB; vae/ 168 MB). FLUX.2: the parameter counts of the published
# architectures (noted in core/variants.py) at 2 bytes each (bf16). Tokenizers, schedulers and configs
# (a few MB) are left out; a part not listed here counts as unknown.
HUB_BYTES: dict[str, int] = {
    "flux1:transformer": int(23.80 * GB),
    "flux1:t5": int(9.52 * GB),
    "flux1:clip": int(0.246 * GB),
    "flux1:vae": int(0.168 * GB),
    "flux2-dev:transformer": int(64.4 * GB),
    "flux2-klein-4b:transformer": int(7.8 * GB),
    "flux2-klein-9b:transformer": int(18.2 * GB),
    "mistral-small-3.2": int(48.0 * GB),
    "qwen3-4b": int(8.0 * GB),
    "qwen3-8b": int(16.4 * GB),
}
NO_GPU = "No GPU: images run on the CPU, very slowly (minutes per image at 1024x1024)."


@dataclass(frozen=True)
class Part:
    """One part of a variant's weights and where the loaders will read it from."""

    what: str  # "the FLUX.1 [dev] transformer", "T5-XXL"
    source: str  # repo id, folder or file (as `sources` resolves it)
    subfolder: str  # the repo's folder that holds it
    size: int | None  # bytes a download costs (HUB_BYTES), None where unknown
    setting: str  # the option that points it at local files: "--model dev=PATH"

    @property
    def gated(self) -> bool:
        """The repo asks for an accepted license (and a token) before it serves files: every FLUX repo
        whose license is not Apache 2.0."""
        return any(v.repo_id == self.source and not v.commercial_use for v in VARIANTS.values())

    def present(self) -> bool:
        """On this machine: a file or folder that exists, or a repo whose folder is complete in the hub cache."""
        if sources.is_local(self.source):
            return Path(self.source).expanduser().exists()
        return downloads.cached(self.source, self.subfolder)


def parts(settings: Settings, variant: Variant) -> list[Part]:
    """The parts the first image of `variant` loads (Redux: those of the variant it runs on)."""
    if not variant.has_transformer:
        variant = get_variant(variant.base)
    name, repo = variant.name, variant.repo_id
    src = sources.resolve_source(settings, name, repo)
    if variant.family == FLUX2:
        size = HUB_BYTES.get(f"{name.replace('base-', '')}:transformer")
        encoder = variant.text_encoder or ""
        return [
            Part(f"the {variant.label} transformer", src, "transformer", size, f"--model {name}=PATH"),
            Part(
                f"its text encoder ({encoder})",
                sources.flux2_part_source(settings, name, repo, encoder),
                "text_encoder",
                HUB_BYTES.get(encoder),
                f"--model {encoder}=PATH",
            ),
            Part(
                "the FLUX.2 VAE",
                sources.flux2_part_source(settings, name, repo, files.FLUX2_VAE),
                "vae",
                None,
                f"--model {files.FLUX2_VAE}=PATH",
            ),
        ]
    shared = [("t5", "T5-XXL", "text_encoder_2"), ("clip", "CLIP-L", "text_encoder"), ("vae", "the VAE", "vae")]
    transformer = Part(
        f"the {variant.label} transformer", src, "transformer", HUB_BYTES["flux1:transformer"], f"--model {name}=PATH"
    )
    return [
        transformer,
        *(
            Part(what, sources.shared_part_source(settings, key), sub, HUB_BYTES[f"flux1:{key}"], f"--model {key}=PATH")
            for key, what, sub in shared
        ),
    ]


def assess(settings: Settings, variant_name: str) -> dict:
    """What the first image of `variant_name` will need (see the module docstring), as JSON: `missing`
    (each part not on this machine: what, source, bytes, gated), `download_bytes` (their sum where known),
    `hub` ("reachable", "unreachable", "offline"; None when nothing needs it), `gpu`, and `notes`, the
    sentences a person reads (none where all is well)."""
    variant = get_variant(variant_name)
    needed = parts(settings, variant)
    absent = [p for p in needed if not p.present()]
    gone = [p for p in absent if sources.is_local(p.source)]  # paths given that do not exist
    fetch = [p for p in absent if p not in gone]
    hub = _hub(fetch[0].source) if fetch else None
    notes = [f"{_first_up(p.what)}: {p.source} does not exist; check {p.setting}." for p in gone]
    if fetch:
        notes.append(_weights_note(variant, fetch, len(absent) == len(needed), hub))
    gpu = settings.device != "cpu"
    if not gpu and not settings.tiny:  # tiny models take a second on any CPU
        notes.append(NO_GPU)
    return {
        "variant": variant.name,
        "missing": [{"what": p.what, "source": p.source, "bytes": p.size, "gated": p.gated} for p in absent],
        "download_bytes": sum(p.size or 0 for p in fetch),
        "hub": hub,
        "gpu": gpu,
        "notes": notes,
    }


def _hub(repo: str) -> str:
    """Whether downloads from `repo` can happen: "offline" (HF_HUB_OFFLINE), else what the one probe found."""
    if not sources.downloads_on(repo):
        return "offline"
    return "reachable" if sources.hub_reachable() else "unreachable"


def _weights_note(variant: Variant, fetch: list[Part], none_here: bool, hub: str) -> str:
    names = _and([p.what for p in fetch])
    if hub != "reachable":
        from huggingface_hub import constants

        why = (
            "offline: HF_HUB_OFFLINE=1"
            if hub == "offline"
            else f"{constants.ENDPOINT} did not answer within {sources.HUB_PROBE_TIMEOUT_S:g} s"
        )
        subject = f"No weights for {variant.label}" if none_here else f"No local weights for {names},"
        fixes = _and(list(dict.fromkeys(p.setting for p in fetch)))
        return (
            f"{subject} and the hub cannot be reached ({why}): point --models-dir at a ComfyUI or Forge folder, "
            f"or {fixes}."
        )
    subject = f"{variant.label} is" if none_here else f"{_first_up(names)} {'is' if len(fetch) == 1 else 'are'}"
    known = sum(p.size or 0 for p in fetch)
    amount = "about" if all(p.size for p in fetch) else "at least"
    size = f"{amount} {downloads.gb(known)}" if known else "its weights"
    return f"{subject} not on this machine: the first Generate downloads {size} from {_repos(fetch)}."


def _first_up(text: str) -> str:
    return text[:1].upper() + text[1:]


def _and(items: list[str]) -> str:
    """The items as prose: a; a and b; a, b and c."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _repos(fetch: list[Part]) -> str:
    """The repos named once each, a gated one with what it asks for."""
    from huggingface_hub import get_token

    named = []
    for repo in dict.fromkeys(p.source for p in fetch):
        if any(p.gated for p in fetch if p.source == repo):
            need = (
                f"gated: the token's account must have accepted the license at https://huggingface.co/{repo}"
                if get_token()
                else "gated: needs a Hugging Face token with access; set HF_TOKEN"
            )
            repo = f"{repo} ({need})"
        named.append(repo)
    return " and ".join(named)


class FirstStart:
    """The record of one check at start-up (`start`), read by the UI and `/status`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = IDLE
        self._found: dict = {}

    def start(self, settings: Settings, variant: str) -> threading.Thread:
        """`check` in a daemon thread: the server starts at once, and the hub is asked at most 3 s."""
        with self._lock:
            self._state = CHECKING
        thread = threading.Thread(target=self.check, args=(settings, variant), name="first-start", daemon=True)
        thread.start()
        return thread

    def check(self, settings: Settings, variant: str) -> None:
        """Assess `variant` (see `assess`), record it and log each note once."""
        with self._lock:
            self._state = CHECKING
        try:
            found = assess(settings, variant)
        except (OSError, ValueError) as err:  # an unreadable cache or folder: the first load will say more
            log.warning("first start: could not tell what the first image needs (%s)", err)
            found = {"notes": []}
        for note in found["notes"]:
            log.warning("first start: %s", note)
        with self._lock:
            self._state, self._found = DONE, found

    @property
    def checking(self) -> bool:
        return self._state == CHECKING

    def snapshot(self) -> dict:
        """The record as JSON: state, then `assess`'s fields and `message` (the notes as one text)."""
        with self._lock:
            notes = list(self._found.get("notes", []))
            return {"state": self._state, **self._found, "notes": notes, "message": " ".join(notes)}


def describe(status: dict) -> str:
    """The notes as Markdown, from a whole `Registry.status()`: once the models are in memory (shared parts
    and a transformer), only those that still hold (no GPU)."""
    loaded = bool(status.get("shared")) and bool(status.get("transformers"))
    notes = [n for n in status.get("first_start", {}).get("notes", []) if not loaded or n == NO_GPU]
    return "\n\n".join(f"⚠️ {n}" for n in notes)
