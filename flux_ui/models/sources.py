"""Where each model's weights come from, and what to tell the user when they cannot be had.

A source is a Hugging Face repo id (downloaded into the shared hub cache, honouring HF_TOKEN,
HF_ENDPOINT and HF_HUB_OFFLINE), a local folder in diffusers layout, or a single file (BFL / ComfyUI /
Forge layouts, found by `--models-dir` or named by `--model NAME=FILE`; see `flux_ui.models.files`).
Loading failures of every kind become one `ModelUnavailableError` whose message names the model and the fix.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)

from flux_ui.core.errors import ModelUnavailableError
from flux_ui.core.settings import Settings
from flux_ui.models import downloads, files, verify

log = logging.getLogger(__name__)
T = TypeVar("T")


def resolve_source(settings: Settings, name: str, repo_id: str) -> str:
    """The repo id or local folder to load `name` (a variant name, or "shared") from.

    Order: an explicit --model NAME=SOURCE, then the first file of the --models-dir folders that serves
    `name`, then <model_root>/<repo_id> if that folder exists, then the repo id on the hub.
    """
    if name in settings.model_paths:
        return settings.model_paths[name]
    if settings.models_dirs and (found := files.variant_files(files.scan(settings.models_dirs)).get(name)):
        return str(found)
    if settings.model_root is not None:
        local = settings.model_root / repo_id
        if local.is_dir():
            return str(local)
    return repo_id


HUB_PROBE_TIMEOUT_S = 3.0  # how long the hub may take to answer before it counts as unreachable
HUB_PROBE_TTL_S = 300.0  # how long an answer is trusted before the hub is asked again
_hub_answers: dict[str, tuple[float, bool]] = {}  # endpoint -> (when asked, reachable)


def hub_reachable() -> bool:
    """Whether the hub (HF_ENDPOINT) answers within HUB_PROBE_TIMEOUT_S; remembered for HUB_PROBE_TTL_S.

    Without it, a server with no network waits through the hub client's retries on every file of every
    model (about 8 minutes for the first Generate) before it says anything."""
    import httpx
    from huggingface_hub import constants

    endpoint, now = constants.ENDPOINT, time.monotonic()
    if (known := _hub_answers.get(endpoint)) and now - known[0] < HUB_PROBE_TTL_S:
        return known[1]
    try:
        httpx.head(endpoint, timeout=HUB_PROBE_TIMEOUT_S)  # any HTTP answer: the hub is there
        reachable = True
    except httpx.HTTPError as err:
        log.warning("the hub at %s did not answer (%s): models come from the local cache only", endpoint, err)
        reachable = False
    _hub_answers[endpoint] = (now, reachable)
    return reachable


_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")  # "org/name": what the hub serves


def hub_down(source: str) -> bool:
    """Whether `source` is a hub repo id while the hub does not answer (and downloads are not off anyway)."""
    return downloads_on(source) and not hub_reachable()


def downloads_on(source: str) -> bool:
    """Whether `source` is a hub repo id and the hub client may download (HF_HUB_OFFLINE is not set)."""
    from huggingface_hub import constants

    if is_local(source) or not _REPO_ID.match(source):
        return False
    return not (constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE") == "1")


@contextmanager
def offline() -> Iterator[None]:
    """The hub client in offline mode for one load: cached files are used, anything else fails at once
    instead of being retried for minutes. (Loads run one at a time, under the registry's lock.)"""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def shared_part_source(settings: Settings, part: str) -> str:
    """Where one shared part ("vae", "clip" or "t5") comes from.

    Order: --model PART=SOURCE, then --model shared=SOURCE, then the first file of the --models-dir
    folders that holds the part (a file of its own before an all-in-one checkpoint), then the shared repo
    as `resolve_source` finds it (a folder below --model-root, or the hub).
    """
    for name in (part, "shared"):
        if name in settings.model_paths:
            return settings.model_paths[name]
    if settings.models_dirs and (found := files.shared_files(files.scan(settings.models_dirs)).get(part)):
        return str(found)
    return resolve_source(settings, "shared", settings.shared_repo)


def repo_source(settings: Settings, name: str, repo_id: str) -> str:
    """Where variant `name`'s repo (or folder in diffusers layout) is, ignoring a single file that serves
    its transformer: the repo a file's model takes what the file lacks from (its tokenizer, say)."""
    src = resolve_source(settings, name, repo_id)
    if not is_file(src):
        return src
    others = {k: v for k, v in settings.model_paths.items() if k != name}
    return resolve_source(replace(settings, model_paths=others, models_dirs=()), name, repo_id)


def flux2_part_source(settings: Settings, name: str, repo_id: str, part: str) -> str:
    """Where a FLUX.2 part comes from for variant `name`: `part` is "flux2-vae" or a text encoder key
    ("qwen3-4b", "qwen3-8b", "mistral-small-3.2"). Order: --model PART=SOURCE, then the first file of the
    --models-dir folders holding it, then the variant's repo or folder (`repo_source`)."""
    if part in settings.model_paths:
        return settings.model_paths[part]
    if settings.models_dirs and (found := files.flux2_part_files(files.scan(settings.models_dirs)).get(part)):
        return str(found)
    return repo_source(settings, name, repo_id)


def direct_to(settings: Settings) -> dict:
    """Loader arguments that read a folder's weights straight to the GPU: where the policy keeps models
    whole on a CUDA device. Read to RAM first, each model's first trip to the GPU also made its pinned
    warm-tier copy (`Placement._move`): on an H200 with the page cache warm the text encoders and VAE
    (9.8 GB) took 23 s that way, a 12 GB transformer read straight to the GPU 3.3 s. Read straight to the
    GPU, the pinned copy is made only if the model is ever moved out. Policies that quantise or offload
    while placing still read to RAM."""
    policy = settings.policy
    if settings.device.startswith("cuda") and not (policy.fp8_at_load or policy.group_offload):
        return {"device_map": settings.device}
    return {}


def is_file(source: str) -> bool:
    """A single model file rather than a folder or a repo id."""
    return Path(source).expanduser().is_file()


def is_local(source: str) -> bool:
    """A path rather than a repo id: it exists on disk or is written as a path (repo ids are org/name)."""
    return source.startswith((".", "/", "~")) or Path(source).expanduser().exists()


def _explain(err: BaseException, what: str, source: str, setting: str, down: bool = False) -> ModelUnavailableError:
    """Turn a loading exception (and the chain behind it) into a message a user can act on."""
    chain = [err]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        nxt = chain[-1].__cause__ or chain[-1].__context__
        if nxt in chain:
            break
        chain.append(nxt)
    local_fix = f"or point {setting} at a local folder laid out like the hub repo"
    if is_local(source) and not Path(source).expanduser().exists():
        thing = "file" if Path(source).suffix in files.SUFFIXES else "folder"
        return ModelUnavailableError(what, source, f"the {thing} does not exist", f"Check the path in {setting}.")
    if missing := next((e for e in chain if isinstance(e, ImportError)), None):
        # transformers names the package in prose ("... requires the Torchvision library ...").
        named = re.search(r"requires the (\S+) librar", str(missing))
        package = (named.group(1).lower() if named else None) or getattr(missing, "name", None)
        return ModelUnavailableError(
            what,
            source,
            f"a Python package it needs is not installed ({str(missing).strip().splitlines()[0]})",
            f"Install it (pip install {package}) and restart, or choose another model in {setting}."
            if package
            else f"Install the package named above and restart, or choose another model in {setting}.",
        )
    if any(isinstance(e, GatedRepoError) for e in chain) or "gated" in str(err).lower():
        return ModelUnavailableError(
            what,
            source,
            "the repository is gated",
            f"Accept the license at https://huggingface.co/{source}, create a read token, set HF_TOKEN "
            f"and restart, {local_fix}.",
        )
    if down:
        from huggingface_hub import constants

        return ModelUnavailableError(
            what,
            source,
            f"the hub ({constants.ENDPOINT}) did not answer within {HUB_PROBE_TIMEOUT_S:g} s and the model is not "
            "in the local hub cache",
            f"Check the network and HF_ENDPOINT, or point {setting} (or --models-dir) at local files.",
        )
    if any(isinstance(e, LocalEntryNotFoundError) for e in chain) or os.environ.get("HF_HUB_OFFLINE") == "1":
        return ModelUnavailableError(
            what,
            source,
            "it is not in the local hub cache and downloads are off or the hub is unreachable",
            f"Download it once with network access (or unset HF_HUB_OFFLINE / check HF_ENDPOINT), {local_fix}.",
        )
    if any(isinstance(e, RepositoryNotFoundError) for e in chain):
        return ModelUnavailableError(
            what,
            source,
            "no such repository (or it is private)",
            f"Check the repo id, set HF_TOKEN if it is private, {local_fix}.",
        )
    if any(isinstance(e, HfHubHTTPError | ConnectionError | TimeoutError) for e in chain):
        return ModelUnavailableError(
            what,
            source,
            f"the hub could not be reached ({err})",
            f"Check the network and HF_ENDPOINT, {local_fix}.",
        )
    if is_local(source):
        return ModelUnavailableError(
            what,
            source,
            f"the folder is not a valid model ({err})",
            f"Check the folder's layout, {local_fix}.",
        )
    return ModelUnavailableError(what, source, str(err), f"Check the repo id and HF_TOKEN, {local_fix}.")


def load(
    what: str,
    source: str,
    setting: str,
    loader: Callable[[], T],
    subfolder: str | None = None,
    filename: str | None = None,
) -> T:
    """Run `loader()` and translate any loading failure into a ModelUnavailableError.

    `what` names the model for the message ("FLUX.1 [dev] transformer"), `setting` names the option the
    user can change to fix it ("--model dev=..."). With `subfolder` (downloads.WHOLE_REPO: the whole repo)
    or `filename`, what the loader reads of a hub repo is downloaded first unless it is all in the hub
    cache, its progress shown (`downloads`); the loader then reads it from the cache.
    """
    log.info("loading %s from %s", what, source)
    down = hub_down(source)
    try:
        if (subfolder is not None or filename is not None) and downloads_on(source) and not down:
            downloads.fetch(what, source, subfolder or downloads.WHOLE_REPO, filename)
        with offline() if down else nullcontext():
            return loader()
    except (OSError, ValueError, ImportError, HfHubHTTPError, ConnectionError, TimeoutError) as err:
        raise _explain(err, what, source, setting, down) from err


# What reading a single file raises when it is cut short or holds something else: safetensors' own error,
# diffusers' converters popping keys the file lacks (KeyError), torch on shapes that do not fit.
FILE_ERRORS = (OSError, ValueError, KeyError, RuntimeError, IndexError)


def load_file(what: str, path: Path, setting: str, loader: Callable[[], T], settings: Settings | None = None) -> T:
    """Run `loader()` on a single file and turn any failure into a ModelUnavailableError that names the file
    and the reason; `what` and `setting` as for `load`. Under --verify-weights (`settings`), the file's
    sha256 is checked first and a file that does not match is refused (see `verify`)."""
    from safetensors import SafetensorError

    if settings is not None and settings.verify_weights:
        verdict = verify.check(path, settings.weights_manifest)
        if verdict.status == "mismatch":
            raise ModelUnavailableError(what, str(path), verdict.describe(), verdict.fix())
    log.info("loading %s from the file %s", what, path)
    try:
        return loader()
    except ModelUnavailableError:
        raise
    except (*FILE_ERRORS, SafetensorError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if isinstance(err, KeyError):
            reason = f"the tensor {err.args[0]!r} is missing"
        raise ModelUnavailableError(
            what,
            str(path),
            f"the file could not be read as {what} ({reason[:300]})",
            f"Check that the file is complete (download it again if its size differs from the original's), "
            f"or point {setting} at another file.",
        ) from err
