"""What a Python API call gives back, the same in this process and from a server."""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image


@dataclass
class Result:
    """What one call gave back. For vqa: `answer`, and no images."""

    task: str
    images: list[Image.Image] = field(default_factory=list)  # RGB, as delivered (screened if --safety-checker)
    seeds: list[int] = field(default_factory=list)  # one per image
    parameters: list[str] = field(default_factory=list)  # the metadata text embedded in each saved PNG
    saved: list[str | None] = field(default_factory=list)  # each PNG's path (on the server, in remote mode)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase (load, denoise, total, ...)
    warnings: list[str] = field(default_factory=list)  # e.g. an image that could not be saved
    answer: str | None = None  # vqa only
    replica: str | None = None  # with --replicas: the replica that made the images

    @property
    def image(self) -> Image.Image | None:
        """The first image (None for vqa)."""
        return self.images[0] if self.images else None

    @property
    def seed(self) -> int | None:
        return self.seeds[0] if self.seeds else None
