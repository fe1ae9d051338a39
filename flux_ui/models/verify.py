"""--verify-weights: each single model file's sha256 checked before the file is used, and refused on a
mismatch; the Models tab shows each file's result.

What a file is checked against, first found first:

1. a manifest given as `--verify-weights MANIFEST`: lines as `sha256sum` writes them (`<sha256>  <name>`),
   matched by the file's path or its name;
2. the sha256 the Hugging Face hub recorded for it: the blob a hub-cache link points to is named by its
   sha256, and `hf download --local-dir` leaves the file's ETag (its sha256, for weight files) in
   `<dir>/.cache/huggingface/download/<name>.metadata`. That record is read here, not with huggingface_hub's
   `read_download_metadata`, which drops it once the file is newer than the record: the very case to catch;
3. otherwise the hash the file had when this app first used it (recorded in VERIFY_RECORD beside the hash
   cache): this detects later corruption and tampering, not a file that was wrong from the start.

No table of published hashes ships with the app: the hub shows each file's sha256 on its page, but none
was at hand to copy with a source to cite, so hub-cache and --local-dir files are checked against the hub's
own record and the rest against their first use. Verification hashes the whole file once per process
(about 20 s for a 24 GB transformer at 1.2 GB/s); the images' `Model hash` reuses that hash.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from flux_ui.models import hashes

log = logging.getLogger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_lock = threading.Lock()
_verdicts: dict[Path, Verdict] = {}  # resolved path -> the last check this process made


@dataclass(frozen=True)
class Verdict:
    """One file's check."""

    status: str  # "ok", "recorded" (first use: nothing to compare with yet) or "mismatch"
    actual: str  # the file's sha256 now
    expected: str  # what it should be ("" when recorded at first use)
    source: str  # where `expected` comes from, for the message and the Models tab

    def describe(self) -> str:
        if self.status == "ok":
            return f"sha256 matches {self.source}"
        if self.status == "recorded":
            return "sha256 recorded at first use (later loads are checked against it)"
        return f"MISMATCH: sha256 {self.actual[:12]}…, {self.source} says {self.expected[:12]}…"

    def fix(self) -> str:
        """What to do about a mismatch."""
        fix = "The file is corrupt or was changed: download it again."
        if self.source.startswith("its first use"):
            fix += f" If you replaced it on purpose, remove its entry from {record_file()}."
        return fix


def record_file() -> Path:
    return Path(os.environ.get("FLUX_UI_VERIFY_RECORD") or hashes.cache_file().with_name("verified.json"))


def _manifest(manifest: Path, path: Path) -> str | None:
    """The manifest's sha256 for `path` (by full path, else by file name), or None."""
    by_name = None
    for line in manifest.read_text().splitlines():
        digest, _, name = line.strip().partition(" ")
        name = name.strip().lstrip("*")  # sha256sum marks binary mode with "*"
        if not _SHA256.match(digest.lower()):
            continue
        if Path(name).expanduser() == path:
            return digest.lower()
        if Path(name).name == path.name and by_name is None:
            by_name = digest.lower()
    return by_name


def hub_record(path: Path) -> tuple[str, str] | None:
    """(sha256, where) as the hub recorded it for `path`, if it came from the hub (see the module docstring)."""
    target = path.resolve()
    if target.parent.name == "blobs" and _SHA256.match(target.name):
        return target.name, f"the hub's record (cache blob {target.parent.parent.name})"
    for folder in path.absolute().parents:  # --local-dir: the record sits below the download folder
        meta = folder / ".cache" / "huggingface" / "download" / f"{path.absolute().relative_to(folder)}.metadata"
        if meta.is_file():
            lines = meta.read_text().splitlines()
            etag = lines[1].strip().strip('"').lower() if len(lines) > 1 else ""
            if _SHA256.match(etag):
                return etag, f"the hub's record (download of commit {lines[0][:8]})"
            return None
    return None


def _remembered(path: Path) -> dict | None:
    try:
        return json.loads(record_file().read_text()).get(str(path))
    except (OSError, ValueError):
        return None


def _remember(path: Path, digest: str) -> None:
    """Record `path`'s first-use hash: written aside and renamed over the record."""
    target = record_file()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            entries = json.loads(target.read_text())
        except (OSError, ValueError):
            entries = {}
        entries[str(path)] = {"sha256": digest, "first_use": time.strftime("%Y-%m-%d %H:%M")}
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entries, indent=0))
        tmp.replace(target)
    except OSError as err:
        log.warning("could not record the hash of %s in %s: %s", path.name, target, err)


def check(path: Path | str, manifest: Path | None = None) -> Verdict:
    """Check one file (see the module docstring), once per file and process: later calls return the first
    verdict. The caller refuses a file whose verdict is a mismatch (see `Verdict.fix`)."""
    path = Path(path).expanduser().absolute()
    key = path.resolve()
    with _lock:
        if key not in _verdicts:
            _verdicts[key] = _check(path, manifest)
        return _verdicts[key]


def _check(path: Path, manifest: Path | None) -> Verdict:
    log.info("verifying %s (sha256 of the whole file)", path.name)
    actual = hashes.start(path, fresh=True).result()
    expected = None
    if manifest is not None and (digest := _manifest(manifest, path)):
        expected = (digest, f"the manifest {manifest.name}")
    expected = expected or hub_record(path)
    if expected is None and (known := _remembered(path)):
        expected = (known["sha256"], f"its first use ({known['first_use']})")
    if expected is None:
        _remember(path, actual)
        return Verdict("recorded", actual, "", "its first use")
    status = "ok" if expected[0] == actual else "mismatch"
    if status == "mismatch":
        log.error("%s: sha256 %s, %s says %s", path, actual, expected[1], expected[0])
    return Verdict(status, actual, expected[0], expected[1])


def verdicts() -> dict[str, dict]:
    """Every check this process made: path -> the verdict's fields and its description (the Models tab)."""
    with _lock:
        return {str(p): asdict(v) | {"describe": v.describe()} for p, v in _verdicts.items()}


def annotate(rows: list[dict], enabled: bool) -> list[dict]:
    """The Models tab's rows (`file_report.report`) with each file's check under "verified" when --verify-weights
    is on: its verdict, or when it has not been loaded yet, that it is checked then."""
    if not enabled:
        return rows
    done = verdicts()
    for row in rows:
        verdict = done.get(str(Path(row["file"]).resolve()))
        row["verified"] = verdict["describe"] if verdict else "checked when first loaded"
    return rows
