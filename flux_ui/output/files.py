"""Saving generated images: PNG with embedded parameters, in dated folders, never overwriting."""

from __future__ import annotations

import logging
import re
from datetime import date
from pathlib import Path

from PIL import Image

from flux_ui.media.metadata import ImageMeta, png_info

log = logging.getLogger(__name__)
_NUMBERED = re.compile(r"^(\d{5})-")


def _next_number(folder: Path) -> int:
    numbers = [int(m.group(1)) for p in folder.glob("*.png") if (m := _NUMBERED.match(p.name))]
    return max(numbers, default=0) + 1


def save_image(image: Image.Image, meta: ImageMeta, outputs_dir: Path) -> Path:
    """Save as `<outputs_dir>/<YYYY-MM-DD>/<NNNNN>-<seed>.png`; raises OSError if the disk refuses.

    The file is opened in exclusive-create mode, so two writers can never overwrite each other.
    """
    folder = outputs_dir / date.today().isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    number = _next_number(folder)
    while True:
        path = folder / f"{number:05d}-{meta.seed}.png"
        try:
            with open(path, "xb") as fh:
                image.save(fh, format="PNG", pnginfo=png_info(meta))
            return path
        except FileExistsError:
            number += 1
        except OSError:
            path.unlink(missing_ok=True)  # no half-written file left behind
            raise
