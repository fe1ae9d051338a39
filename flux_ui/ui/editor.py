"""The mask editor the inpainting tabs share: a picture with a brush layer, split into the image and mask
their API endpoints take."""

from __future__ import annotations

import gradio as gr
import numpy as np
from PIL import Image

from flux_ui.core.errors import InvalidInput
from flux_ui.ui.common import invalid

BRUSH = gr.Brush(colors=[("rgb(255, 0, 255)", 0.6)], color_mode="fixed", default_size=24)


def mask_editor(label: str, elem_id: str) -> gr.ImageEditor:
    """An editor whose painted layers' opacity is the mask."""
    return gr.ImageEditor(
        label=label,
        type="pil",
        image_mode="RGBA",  # keeps the painted layers' transparency, which is the mask
        sources=("upload", "clipboard"),
        brush=BRUSH,
        eraser=gr.Eraser(default_size=24),
        layers=False,
        transforms=(),
        format="png",
        elem_id=elem_id,
    )


def split_editor(value: dict | None) -> tuple[Image.Image, Image.Image | None]:
    """The editor's background, and its painted layers as one mask (their opacity; None if unpainted)."""
    if not value or value.get("background") is None:
        raise invalid(InvalidInput("image", "is missing; upload the picture to fill"))
    background: Image.Image = value["background"]
    mask = None
    for layer in value.get("layers") or []:
        alpha = layer.convert("RGBA").getchannel("A")
        mask = alpha if mask is None else Image.fromarray(np.maximum(np.asarray(mask), np.asarray(alpha)))
    if mask is not None and mask.getextrema()[1] == 0:
        mask = None
    return background, mask
