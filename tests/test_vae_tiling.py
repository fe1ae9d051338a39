"""Tiled VAE: on above the memory policy's size (or by --vae-tiling), through the app's own path, with
the image close to the untiled one (diffusers blends a quarter-tile overlap between tiles)."""

from dataclasses import replace

import numpy as np

from flux_ui.core.policies import get_policy, tile_vae
from flux_ui.models.registry import Registry
from flux_ui.tasks.text_to_image import TextToImageParams, text_to_image, validate_text_to_image


def test_the_policy_and_the_setting_decide():
    resident, offload = get_policy("resident"), get_policy("offload-12gb")
    assert not tile_vae("auto", resident, (1024, 1024)) and tile_vae("auto", resident, (2304, 2304))
    assert tile_vae("auto", offload, (1216, 1216)) and not tile_vae("auto", offload, (1024, 1024))
    assert tile_vae("auto", resident, (1536, 1536)) and not tile_vae("auto", resident, (1024, 1408))
    assert tile_vae("on", resident, (64, 64)) and not tile_vae("off", offload, (4096, 4096))


def image(registry: Registry) -> np.ndarray:
    params = TextToImageParams(prompt="a red fox", width=256, height=256, steps=1, seed=5)
    result = text_to_image(registry, validate_text_to_image(params, registry.settings))
    return np.asarray(result.images[0].image).astype(np.int16)


def test_a_tiled_decode_is_close_to_the_untiled_one(settings):
    """The tiny VAE tiles at 64 px (its sample size), so a 256 px image is decoded in 16 overlapping tiles.
    Measured on the tiny models: mean difference 10.4 of 255 (its mid-block attention sees one small tile
    at a time, and random weights make that count); bound 16. The full-size VAE's 1024 px tiles are
    measured on the GPU (bench/vae_tiling.py)."""
    untiled_registry = Registry(replace(settings, vae_tiling="off"))
    untiled = image(untiled_registry)
    assert not untiled_registry.shared().vae.use_tiling
    tiled_registry = Registry(replace(settings, vae_tiling="on"))
    tiled = image(tiled_registry)
    assert tiled_registry.shared().vae.use_tiling
    diff = np.abs(tiled - untiled)
    print(f"tiled vs untiled: mean {diff.mean():.2f}, max {diff.max()} of 255")
    assert diff.mean() < 16
    assert diff.max() > 0  # it did tile: the seams' blending changes some pixels
