"""Training images from a folder on the server, with their sidecar captions (`cat1.png` + `cat1.txt`).

The folder must lie inside one of the folders the app was started with (`--train-dir`); the checks are
`media.server_folders`'. Images are read in file-name order, each through the same decoding and limits as
an upload; a caption file is read as text, its lines joined.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from flux_ui.core.errors import InvalidInput
from flux_ui.core.settings import Settings
from flux_ui.media import server_folders
from flux_ui.media.images import load_image

FIELD = "folder"  # the API name of the field


@dataclass(frozen=True)
class FolderSet:
    """A server folder's training images, read and checked."""

    path: Path  # the folder, resolved
    names: tuple[str, ...]  # the images' file names, in the order they are trained and captioned
    images: tuple[Image.Image, ...]  # RGB
    captions: tuple[str | None, ...]  # each image's sidecar caption; None where it has no caption file

    @property
    def captioned(self) -> int:
        """How many images have a caption file."""
        return sum(c is not None for c in self.captions)


def given(value: object) -> bool:
    """Whether a folder was named at all (None and blank text name none)."""
    return value is not None and not (isinstance(value, str) and not value.strip())


def read_folder(value: object, settings: Settings, min_images: int, max_images: int, min_side: int) -> FolderSet:
    """The images and captions of the server folder `value`; InvalidInput naming "folder" for a path outside
    `settings.train_dirs` (or with '..', or leading out through a link), a folder that does not exist, too
    few or too many images, an image that does not decode or is smaller than `min_side` px a side."""
    folder = server_folders.checked_folder(value, FIELD, settings.train_dirs)
    found = server_folders.folder_images(folder, FIELD, settings.train_dirs)
    kinds = ", ".join(server_folders.IMAGE_SUFFIXES)
    if len(found) < min_images:
        raise InvalidInput(
            FIELD, f"{folder} holds {len(found)} images ({kinds}); put at least {min_images} in it (10 to 50 work well)"
        )
    if len(found) > max_images:
        raise InvalidInput(FIELD, f"{folder} holds {len(found)} images; use a folder of at most {max_images}")
    limit = int(settings.max_upload_mb * 1_000_000)
    images, captions = [], []
    for item in found:
        data = server_folders.read_file(item.image, FIELD, limit)
        try:
            images.append(load_image(data, item.image.name, min_side=min_side))
        except InvalidInput as err:
            raise InvalidInput(FIELD, str(err)) from None  # "folder: cat3.png: is 300x120; …"
        captions.append(None if item.caption is None else server_folders.read_caption(item.caption, FIELD))
    return FolderSet(folder, tuple(i.image.name for i in found), tuple(images), tuple(captions))
