"""The one path from a task's result to its caller, for every surface (UI tabs, REST): the safety screen,
then each image saved under the outputs folder with its parameters. An image that cannot be saved (a
full disk, say) is still delivered, with a warning; no image is lost to an error here."""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from flux_ui.media.metadata import ImageMeta
from flux_ui.models.registry import Registry
from flux_ui.output.files import save_image
from flux_ui.output.history import History
from flux_ui.output.safety import screen
from flux_ui.tasks import TaskResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivered:
    image: Image.Image  # as screened: blurred if the safety filter flagged it
    meta: ImageMeta
    saved: Path | None  # the PNG under the outputs folder; None if it could not be written (see warnings)


def deliver(
    registry: Registry, result: TaskResult, user: str | None = None, task: str | None = None
) -> tuple[list[Delivered], list[str]]:
    """Screen (with --safety-checker; raises ModelUnavailableError if the classifier cannot load) and save
    every image of `result`, each recorded in the history (with --history) as made by `user` (the login,
    None without one) with `task` (None: told from the parameters); return them with the warnings a caller
    should show."""
    # The notes of its making (a prompt cut short) first, once each: every image of a batch shares them.
    warnings = [*dict.fromkeys(note for item in result.images for note in item.notes), *screen(registry, result)]
    history = History(registry.settings.outputs_dir) if registry.settings.history else None
    delivered = []
    for item in result.images:
        try:
            saved = save_image(item.image, item.meta, registry.settings.outputs_dir)
        except OSError as err:
            log.error("could not save image (seed %d): %s", item.meta.seed, err)
            warnings.append(
                f"⚠ Not saved to disk: the image with seed {item.meta.seed} was not saved "
                f"({err.strerror or err}); it is returned all the same."
            )
            saved = None
        if saved is not None and history is not None:
            try:
                history.record(saved, item.meta, user=user, task=task)
            except (OSError, sqlite3.Error, ValueError) as err:  # the image is kept; rebuild() indexes it later
                log.warning("could not record %s in the history (%s); it is indexed at the next start", saved, err)
        delivered.append(Delivered(item.image, item.meta, saved))
    return delivered, warnings
