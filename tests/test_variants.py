import pytest

from flux_ui.core.variants import (
    DEV_LICENSE,
    FLUX1,
    FLUX2,
    SCHNELL_LICENSE,
    VARIANTS,
    family_variants,
    get_variant,
    variants_for,
)


def test_table_covers_the_family_with_real_repo_ids():
    assert {v.repo_id for v in VARIANTS.values()} == {
        "black-forest-labs/FLUX.1-dev",
        "black-forest-labs/FLUX.1-schnell",
        "black-forest-labs/FLUX.1-Krea-dev",
        "black-forest-labs/FLUX.1-Kontext-dev",
        "black-forest-labs/FLUX.1-Fill-dev",
        "black-forest-labs/FLUX.1-Canny-dev",
        "black-forest-labs/FLUX.1-Depth-dev",
        "black-forest-labs/FLUX.1-Redux-dev",
        "black-forest-labs/FLUX.2-dev",
        "black-forest-labs/FLUX.2-klein-4B",
        "black-forest-labs/FLUX.2-klein-9B",
        "black-forest-labs/FLUX.2-klein-base-4B",
        "black-forest-labs/FLUX.2-klein-base-9B",
    }


def test_published_defaults():
    schnell, dev = get_variant("schnell"), get_variant("dev")
    assert schnell.default_guidance is None and not schnell.uses_guidance
    assert schnell.default_steps == 4 and schnell.max_sequence_length == 256
    assert schnell.license == SCHNELL_LICENSE and schnell.commercial_use
    assert dev.default_guidance == 3.5 and dev.max_sequence_length == 512
    assert get_variant("kontext-dev").default_guidance == 2.5
    assert get_variant("fill-dev").default_guidance == 30.0 and get_variant("fill-dev").default_steps == 50
    for v in family_variants(FLUX1):
        if v.name != "schnell":
            assert v.license == DEV_LICENSE and not v.commercial_use, v.name


def test_pipeline_classes_exist_in_diffusers():
    import diffusers

    for v in VARIANTS.values():
        assert hasattr(diffusers, v.pipeline_class), v.pipeline_class


def test_resolutions_are_multiples_of_16():
    for v in VARIANTS.values():
        assert v.resolutions
        assert all(w % 16 == 0 and h % 16 == 0 for w, h in v.resolutions), v.name


def test_unknown_variant_lists_valid_names():
    with pytest.raises(ValueError) as err:
        get_variant("flux-pro")
    msg = str(err.value)
    assert "flux-pro" in msg and "dev" in msg and "schnell" in msg and "krea-dev" in msg


def test_text_to_image_variants():
    assert [v.name for v in variants_for("text_to_image", FLUX1)] == ["dev", "schnell", "krea-dev"]
    flux2 = [v.name for v in family_variants(FLUX2)]
    assert [v.name for v in variants_for("text_to_image")] == ["dev", "schnell", "krea-dev", *flux2]
