"""Live previews: a cheap linear projection from the latent channels (16 for FLUX.1, 32 for FLUX.2) to RGB.

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
        # FLUX.1's VAE scales and shifts its latents for the transformer; FLUX.2's has neither (its pipelines
        # normalise by the VAE's batch-norm statistics instead, undone in `unpack_flux2`).
        shift, scale = getattr(cfg, "shift_factor", None) or 0.0, getattr(cfg, "scaling_factor", None) or 1.0
        latents = (latents - shift) * scale
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


def unpack_flux2(pipe, latents: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A FLUX.2 pipeline's packed latents, (batch, tokens, 128) in raster order, as the VAE's latents
    (batch, 32, height / 8, width / 8): the batch-norm normalisation undone and the 2x2 patches unfolded, as
    the pipeline does before decoding. `size` is the image's (width, height)."""
    h, w = size[1] // 16, size[0] // 16
    x = latents[:, : h * w].reshape(latents.shape[0], h, w, latents.shape[-1]).permute(0, 3, 1, 2)
    bn = pipe.vae.bn
    std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + pipe.vae.config.batch_norm_eps)
    x = x * std.to(x) + bn.running_mean.view(1, -1, 1, 1).to(x)
    return pipe._unpatchify_latents(x)
