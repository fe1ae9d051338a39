"""Files a request names: only uploads to this server are read.

Gradio hands an event the server-side path of each uploaded file, and a client that speaks Gradio's HTTP
API can write any path into that payload. Gradio refuses paths outside its upload folder, but only once
the app counts as launched (the serving layer sees to that); this is the app's own check at the one place
where files enter the task layer, so that a future Gradio change cannot reopen the hole.

A path is read only if, with every link resolved, it is a regular file inside one of the upload folders.
Anything else (a path elsewhere, a directory, a device, a FIFO, a link leading out) is refused with the
same message, which names the field and does not say whether the path exists.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Sequence
from pathlib import Path

from flux_ui.core.errors import InvalidInput


def upload_dir() -> Path:
    """Where Gradio keeps uploads (and the copies of results it serves): `GRADIO_TEMP_DIR`, else
    `<system temp>/gradio`, the rule of `gradio.utils.get_upload_folder` (a test checks they agree).
    Read from the environment at each call, as Gradio does, so both always name the same folder."""
    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio").resolve()


def checked_upload(path: str | os.PathLike, field: str, roots: Sequence[Path] | None = None) -> Path:
    """`path` resolved, if it is a regular file inside `roots` (default: the upload folder); else
    InvalidInput naming `field`. The file is not opened: `stat` of a FIFO or device does not block."""
    refused = InvalidInput(field, "is not a file uploaded to this server; upload it again")
    try:
        resolved = Path(os.fspath(path)).resolve()
    except (OSError, ValueError, TypeError, RuntimeError):  # NUL bytes, link loops, not a path at all
        raise refused from None
    folders = [upload_dir()] if roots is None else [Path(r).resolve() for r in roots]
    if not any(resolved.is_relative_to(folder) for folder in folders):
        raise refused
    try:
        mode = os.stat(resolved).st_mode
    except (OSError, ValueError):
        raise refused from None
    if not stat.S_ISREG(mode):
        raise refused
    return resolved
