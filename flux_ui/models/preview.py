"""Live previews: a cheap linear projection from the 16 latent channels straight to RGB.

No second model is needed: the projection is fitted once per VAE by least squares, from the VAE's own
encodings of flat-coloured tiles (each latent pixel then sees one known colour). That costs a single
small encode, and works for any FLUX-style VAE, real or tiny.
"""

from __future__ import annotations

import logging

import torch
from PIL import Image

log = logging.getLogger(__name__)

TILE = 16  # pixels per flat colour tile: two latent pixels, so most latent pixels see one colour
TILES = 8  # tiles per side of each calibration image
IMAGES = 8  # calibration images


class LatentPreviewer:
    """Projects pipeline-space latents (already scaled and shifted) to an RGB PIL image."""

    def __init__(self, vae: torch.nn.Module, seed: int = 0):
        self.vae = vae
        self.weight, self.bias = self._fit(seed)

    @torch.no_grad()
    def _fit(self, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        colours = torch.rand(IMAGES, 3, TILES, TILES, generator=g) * 2 - 1  # in [-1, 1], the VAE's range
        images = colours.repeat_interleave(TILE, dim=2).repeat_interleave(TILE, dim=3)
        param = next(self.vae.parameters())
        latents = self.vae.encode(images.to(param.device, param.dtype)).latent_dist.mean.float().cpu()
        cfg = self.vae.config
        latents = (latents - (cfg.shift_factor or 0.0)) * cfg.scaling_factor
        factor = images.shape[-1] // latents.shape[-1]  # 8 for FLUX's VAE
        target = torch.nn.functional.avg_pool2d(images, factor)
        x = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
        x = torch.cat([x, torch.ones(len(x), 1)], dim=1)
        y = target.permute(0, 2, 3, 1).reshape(-1, 3)
        solution = torch.linalg.lstsq(x, y).solution  # (channels + 1, 3)
        log.info("fitted latent preview projection (%d samples)", len(x))
        return solution[:-1], solution[-1]

    @torch.no_grad()
    def to_image(self, latents: torch.Tensor, size: tuple[int, int] | None = None) -> Image.Image:
        """latents: (channels, h, w) or (1, channels, h, w) in pipeline space; size: output (w, h)."""
        lat = latents.float().cpu().reshape(-1, *latents.shape[-3:])[0]
        rgb = torch.einsum("chw,cr->hwr", lat, self.weight) + self.bias
        pixels = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
        img = Image.fromarray(pixels, mode="RGB")
        return img.resize(size, Image.Resampling.BILINEAR) if size else img
