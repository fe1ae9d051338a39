"""Control maps for FLUX.1 Canny and Depth: Canny edges (numpy + scipy) and depth from a transformers model.

Both follow what BFL's reference code feeds its models: Canny on the RGB image at the output size with
thresholds 50/200 (OpenCV's algorithm, re-implemented here so that OpenCV is not a dependency), and a
Depth Anything depth map, resized to the output size, as a 3-channel greyscale image.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

CANNY_LOW = 50  # BFL's reference thresholds
CANNY_HIGH = 200
CANNY_MAX = 2040  # the largest gradient of 8-bit images under the 3x3 Sobel L1 norm (4*255 per axis)
# BFL's reference depth model is Depth Anything (large); the small one is the same family at 25M parameters.
DEPTH_ESTIMATOR_REPO = "LiheYoung/depth-anything-small-hf"
_TAN_22_5 = 0.4142135623730951
_TAN_67_5 = 2.414213562373095


def canny(image: Image.Image, low: float = CANNY_LOW, high: float = CANNY_HIGH) -> Image.Image:
    """Canny edges of an RGB image as a white-on-black RGB image of the same size.

    As OpenCV's `Canny(img, low, high)`: 3x3 Sobel gradients per channel (the channel with the strongest
    gradient wins), L1 magnitude, non-maximum suppression in four directions, and hysteresis: pixels above
    `high` are edges, pixels above `low` are edges if 8-connected to one.
    """
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    gx = np.stack([ndimage.sobel(rgb[..., c], axis=1, mode="nearest") for c in range(3)], axis=-1)
    gy = np.stack([ndimage.sobel(rgb[..., c], axis=0, mode="nearest") for c in range(3)], axis=-1)
    mag3 = np.abs(gx) + np.abs(gy)
    best = mag3.argmax(axis=-1)[..., None]
    gx = np.take_along_axis(gx, best, -1)[..., 0]
    gy = np.take_along_axis(gy, best, -1)[..., 0]
    mag = np.take_along_axis(mag3, best, -1)[..., 0]

    # Neighbours along the gradient direction, with a zero border as OpenCV uses.
    p = np.pad(mag, 1)
    h, w = mag.shape

    def shifted(dy: int, dx: int) -> np.ndarray:
        return p[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    ax, ay = np.abs(gx), np.abs(gy)
    horizontal = ay < ax * _TAN_22_5
    vertical = ay > ax * _TAN_67_5
    same_sign = (gx * gy) >= 0
    keep = np.where(
        horizontal,
        (mag > shifted(0, -1)) & (mag >= shifted(0, 1)),
        np.where(
            vertical,
            (mag > shifted(-1, 0)) & (mag >= shifted(1, 0)),
            np.where(
                same_sign,
                (mag > shifted(-1, -1)) & (mag > shifted(1, 1)),
                (mag > shifted(-1, 1)) & (mag > shifted(1, -1)),
            ),
        ),
    )
    candidates = keep & (mag > low)
    strong = candidates & (mag > high)
    labels, _ = ndimage.label(candidates, structure=np.ones((3, 3), dtype=bool))
    connected = np.unique(labels[strong])
    edges = np.isin(labels, connected[connected > 0])
    return Image.fromarray(np.where(edges, 255, 0).astype(np.uint8), "L").convert("RGB")


class DepthEstimator(torch.nn.Module):
    """A transformers depth-estimation model with its image processor: one registry entry, moved and
    evicted as one module."""

    def __init__(self, model: torch.nn.Module, processor: object):
        super().__init__()
        self.model = model
        self.processor = processor

    @torch.inference_mode()
    def forward(self, image: Image.Image, size: tuple[int, int]) -> Image.Image:
        """The depth map of `image` as an RGB image of `size` (width, height): near is bright, far dark,
        stretched to the full 0-255 range."""
        param = next(self.model.parameters())
        pixels = self.processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"]
        depth = self.model(pixel_values=pixels.to(param.device, param.dtype)).predicted_depth  # (1, h, w)
        depth = torch.nn.functional.interpolate(
            depth[:, None].float(), size=(size[1], size[0]), mode="bicubic", antialias=True, align_corners=False
        )[0, 0]
        low, high = depth.min(), depth.max()
        scaled = (depth - low) / (high - low) if high > low else torch.zeros_like(depth)
        grey = (scaled * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        return Image.fromarray(grey, "L").convert("RGB")


def load_depth_estimator(source: str, dtype: torch.dtype) -> DepthEstimator:
    """Load a depth model and its processor from a repo id or folder (transformers layout)."""
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    # The PIL backend: the torchvision one is optional and gives slightly different resizes.
    processor = AutoImageProcessor.from_pretrained(source, backend="pil")
    model = AutoModelForDepthEstimation.from_pretrained(source, dtype=dtype)
    return DepthEstimator(model.eval().requires_grad_(False), processor)
