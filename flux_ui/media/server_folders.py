"""Folders on the server that a request names: read only inside the folders the app was started with.

A training run may take its images from a folder on the server (`--train-dir`) instead of uploads. The
folder is read only if, with every link resolved, it lies inside one of the allowed folders, and so does
every file taken from it: a link that leads out is refused, never followed. A path with `..` is refused as
written, before anything is resolved. A path outside the allowed folders is refused with the same message
whether or not it exists, so the refusal does not tell a client what is on the server.

A caption is a sidecar text file with the image's stem (`cat1.png` -> `cat1.txt`), the convention of
kohya's sd-scripts, ai-toolkit and FluxGym, so a folder prepared for them trains here as it is.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

from flux_ui.core.errors import InvalidInput

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")  # what a training folder's images may be
CAPTION_SUFFIX = ".txt"
MAX_CAPTION_BYTES = 16_384  # far past any caption the encoders read (T5: 512 tokens); a larger file is not one


@dataclass(frozen=True)
class FolderImage:
    """One image of a server folder and its sidecar caption file, if there is one."""

    image: Path  # resolved, inside an allowed folder
    caption: Path | None  # `<stem>.txt` beside it, resolved, inside an allowed folder


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    return any(path.is_relative_to(root) for root in roots)


def checked_folder(value: object, field: str, roots: Sequence[Path]) -> Path:
    """`value` resolved, if it is a folder inside one of `roots` (a relative path is taken below the first
    of them); else InvalidInput naming `field` and the fix."""
    shown = ", ".join(str(r) for r in roots)
    if not roots:
        raise InvalidInput(
            field, "reading folders on this server is off; upload the images, or start the app with --train-dir FOLDER"
        )
    if not isinstance(value, str | os.PathLike):
        raise InvalidInput(field, f"expected a folder's path as text, got {type(value).__name__}")
    text = os.fspath(value).strip()
    if ".." in PurePath(text).parts:
        raise InvalidInput(field, f"{text!r} contains '..'; give the folder's path without it (inside {shown})")
    allowed = [Path(r).expanduser().resolve() for r in roots]
    try:
        path = (allowed[0] / Path(text).expanduser()).resolve()  # an absolute path replaces allowed[0]
    except (OSError, ValueError, RuntimeError):  # NUL bytes, link loops
        raise InvalidInput(field, f"{text!r} is not a path; give a folder inside {shown}") from None
    if not _inside(path, allowed):
        raise InvalidInput(
            field, f"{text!r} is outside the folders training may read; put the images in a folder inside {shown}"
        )
    if not path.exists():
        raise InvalidInput(field, f"{text!r} does not exist; check the path (folders inside {shown})")
    if not path.is_dir():
        raise InvalidInput(field, f"{text!r} is a file, not a folder; give the folder that holds the images")
    return path


def _regular_inside(path: Path, field: str, roots: Sequence[Path]) -> Path | None:
    """`path` resolved if it is a regular file inside `roots`; None if it is no file (a folder, a FIFO);
    InvalidInput if it is a link that leads out."""
    resolved = path.resolve()
    if not _inside(resolved, roots):
        raise InvalidInput(field, f"{path.name} links outside the folders training may read; copy the file in instead")
    try:
        return resolved if stat.S_ISREG(os.stat(resolved).st_mode) else None
    except OSError:  # a broken link
        return None


def folder_images(folder: Path, field: str, roots: Sequence[Path]) -> list[FolderImage]:
    """The images directly in `folder` (not its subfolders; hidden files skipped), in file-name order, each
    with its sidecar caption file. `folder` comes from `checked_folder`."""
    allowed = [Path(r).expanduser().resolve() for r in roots]
    found = []
    for entry in sorted(folder.iterdir(), key=lambda p: (p.name.lower(), p.name)):
        if entry.name.startswith(".") or entry.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        image = _regular_inside(entry, field, allowed)
        if image is None:
            continue
        sidecar = entry.with_suffix(CAPTION_SUFFIX)
        caption = _regular_inside(sidecar, field, allowed) if os.path.lexists(sidecar) else None
        found.append(FolderImage(image, caption))
    return found


def read_file(path: Path, field: str, max_bytes: int) -> bytes:
    """The bytes of `path` (from `folder_images`), refused naming `field` past `max_bytes`."""
    size = path.stat().st_size
    if size > max_bytes:
        raise InvalidInput(field, f"{path.name} is {size / 1e6:.1f} MB, over the limit of {max_bytes / 1e6:g} MB")
    return path.read_bytes()


def read_caption(path: Path, field: str) -> str:
    """A sidecar caption: UTF-8 text (a BOM is allowed), its lines joined by spaces."""
    data = read_file(path, field, MAX_CAPTION_BYTES)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput(field, f"{path.name} is not UTF-8 text; save it as UTF-8") from None
    return " ".join(text.split())
