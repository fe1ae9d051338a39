"""FLUX.2 as a second model family, on tiny random-weight models in the real repos' layout: every variant
generates, shared parts are shared by identity within the family and kept apart from FLUX.1's, and a
family switch keeps each family's parts."""

from __future__ import annotations

import pytest

from flux_ui.core.variants import FLUX2, family_variants, get_variant
from flux_ui.tasks.text_to_image import TextToImageParams, text_to_image, validate_text_to_image

FLUX2_NAMES = [v.name for v in family_variants(FLUX2)]


def generate(registry, variant: str, seed: int = 5, **kw):
    params = TextToImageParams("a red fox", variant, width=64, height=64, steps=2, seed=seed, **kw)
    return text_to_image(registry, validate_text_to_image(params, registry.settings))


def test_the_flux2_variants_are_data_with_their_licenses():
    assert FLUX2_NAMES == [
        "flux2-dev",
        "flux2-klein-4b",
        "flux2-klein-9b",
        "flux2-klein-base-4b",
        "flux2-klein-base-9b",
    ]
    assert get_variant("flux2-klein-4b").commercial_use
    assert get_variant("flux2-klein-base-4b").commercial_use
    assert not get_variant("flux2-klein-9b").commercial_use
    assert not get_variant("flux2-dev").commercial_use
    assert get_variant("flux2-klein-4b").default_steps == 4 and get_variant("flux2-klein-4b").distilled
    assert get_variant("flux2-klein-base-9b").default_guidance == 4.0


@pytest.mark.parametrize("name", FLUX2_NAMES)
def test_every_flux2_variant_generates(registry, name):
    result = generate(registry, name)
    (image,) = result.images
    assert image.image.size == (64, 64)
    assert image.meta.variant == name
    assert image.meta.guidance == get_variant(name).default_guidance
    assert image.image.getextrema() != ((0, 0), (0, 0), (0, 0))  # decoded, not an empty canvas
