"""Kontext edit and Redux variation on the tiny models, through the registry, as the UI runs them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS
from PIL import Image

from flux_ui.core.errors import InvalidInput
from flux_ui.core.variants import KONTEXT_RESOLUTIONS, nearest_resolution
from flux_ui.media.images import image_hash
from flux_ui.media.metadata import format_parameters, parse_parameters
from flux_ui.tasks.kontext import KontextParams, context_size, kontext_edit, validate_kontext
from flux_ui.tasks.redux import ReduxParams, redux_conditioning, redux_variation, validate_redux

RED = Image.new("RGB", (300, 200), (200, 30, 30))
BLUE = Image.new("RGB", (96, 128), (20, 40, 220))


def kontext(settings, **kw):
    base = {"image": RED, "instruction": "make it blue", "size": "128x80", "steps": 2, "seed": 3}
    return validate_kontext(KontextParams(**{**base, **kw}), settings)


def redux(settings, **kw):
    base = {"images": (RED,), "strengths": (1.0,), "width": 96, "height": 64, "steps": 2, "seed": 5}
    return validate_redux(ReduxParams(**{**base, **kw}), settings)


def pixels(result, i=0):
    return np.asarray(result.images[i].image)


# -- Kontext -------------------------------------------------------------------------------------------


def test_our_kontext_resolutions_are_diffusers_and_the_pick_follows_the_aspect_ratio():
    assert list(KONTEXT_RESOLUTIONS) == PREFERRED_KONTEXT_RESOLUTIONS
    assert nearest_resolution(1920, 1080, KONTEXT_RESOLUTIONS) == (1392, 752)
    assert nearest_resolution(1080, 1920, KONTEXT_RESOLUTIONS) == (752, 1392)
    assert nearest_resolution(500, 500, KONTEXT_RESOLUTIONS) == (1024, 1024)
    assert context_size(RED) == (1248, 832)  # 3:2


def test_kontext_size_auto_custom_and_bad(settings):
    auto = kontext(settings, size="auto")
    assert (auto.width, auto.height, auto.steps, auto.guidance) == (1248, 832, 2, 2.5)
    assert kontext(settings, size=" 256 x 192 ").width == 256
    for size, message in [
        ("250x192", "size: width: 250 is not a multiple of 16"),
        ("big", "size: expected 'auto' or WIDTHxHEIGHT"),
        ("2048x2048", "over the limit"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            kontext(settings, size=size)


def test_kontext_defaults_are_the_published_ones(settings):
    p = validate_kontext(KontextParams(image=RED, instruction="x"), settings)
    assert (p.steps, p.guidance, p.num_images, p.seed) == (28, 2.5, 1, -1)


@pytest.mark.parametrize("instruction", ["", "   ", None])
def test_kontext_needs_an_instruction(settings, instruction):
    with pytest.raises(InvalidInput) as err:
        kontext(settings, instruction=instruction)
    assert err.value.field == "instruction"


def test_kontext_edit_makes_the_asked_size_and_records_its_source(registry, settings):
    events = []
    result = kontext_edit(registry, kontext(settings, num_images=2), on_step=events.append)
    assert [im.image.size for im in result.images] == [(128, 80), (128, 80)]
    assert [im.meta.seed for im in result.images] == [3, 4]
    assert [(e.image_index, e.step) for e in events] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    meta = result.images[0].meta
    assert (meta.variant, meta.prompt, meta.guidance, meta.steps) == ("kontext-dev", "make it blue", 2.5, 2)
    fields = parse_parameters(format_parameters(meta))
    assert fields["Source hash"] == image_hash(RED)
    assert (fields["Source size"], fields["Context size"], fields["Size"]) == ("300x200", "1248x832", "128x80")
    assert registry.load_counts["transformer:kontext-dev"] == 1


def test_kontext_follows_its_input_and_seed(registry, settings):
    a = kontext_edit(registry, kontext(settings))
    b = kontext_edit(registry, kontext(settings))
    c = kontext_edit(registry, kontext(settings, image=BLUE))
    np.testing.assert_array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))


def test_kontext_shares_the_encoders_and_vae(registry):
    with registry.pipeline("dev") as dev:
        pass
    with registry.pipeline("kontext-dev") as kontext_pipe:
        assert type(kontext_pipe).__name__ == "FluxKontextPipeline"
        assert kontext_pipe.text_encoder is dev.text_encoder and kontext_pipe.text_encoder_2 is dev.text_encoder_2
        assert kontext_pipe.vae is dev.vae and kontext_pipe.transformer is not dev.transformer


# -- Redux ---------------------------------------------------------------------------------------------


def test_redux_prior_is_lent_with_the_shared_text_encoders_and_loaded_once(registry):
    with registry.pipeline("dev") as dev:
        pass
    for _ in range(2):
        with registry.pipeline("redux-dev") as prior:
            assert type(prior).__name__ == "FluxPriorReduxPipeline"
            assert prior.text_encoder is dev.text_encoder and prior.text_encoder_2 is dev.text_encoder_2
            assert prior.tokenizer is dev.tokenizer and prior.tokenizer_2 is dev.tokenizer_2
    for part in ("image_encoder", "feature_extractor", "image_embedder"):
        assert registry.load_counts[f"redux-dev:{part}"] == 1
    assert "transformer:redux-dev" not in registry.load_counts
    assert set(registry.status()["aux"]) == {
        "redux-dev:image_encoder",
        "redux-dev:feature_extractor",
        "redux-dev:image_embedder",
    }


def test_one_image_matches_diffusers_prior_exactly(registry, settings):
    params = redux(settings, strengths=(0.7,), prompt="a cat", prompt_embeds_scale=0.7, pooled_prompt_embeds_scale=0.4)
    with registry.pipeline("redux-dev") as prior, torch.inference_mode():
        ours = redux_conditioning(prior, params, "cpu", 512)
        theirs = prior(image=RED, prompt="a cat", prompt_embeds_scale=0.7, pooled_prompt_embeds_scale=0.4)
    torch.testing.assert_close(ours[0], theirs.prompt_embeds)
    torch.testing.assert_close(ours[1], theirs.pooled_prompt_embeds)


def test_image_tokens_are_weighted_by_strength_and_the_prompt_counts_once(registry, settings):
    with registry.pipeline("redux-dev") as prior, torch.inference_mode():
        red, _ = redux_conditioning(prior, redux(settings), "cpu", 512)
        blue, _ = redux_conditioning(prior, redux(settings, images=(BLUE,)), "cpu", 512)
        both, _ = redux_conditioning(prior, redux(settings, images=(RED, BLUE), strengths=(1.0, 0.5)), "cpu", 512)
    text = 512  # T5 tokens come first, then the Redux tokens
    torch.testing.assert_close(both[:, :text], red[:, :text])
    torch.testing.assert_close(both[:, text:], red[:, text:] + 0.5 * blue[:, text:])


def test_redux_variations_record_their_sources(registry, settings):
    params = redux(settings, images=(RED, None, BLUE, None), strengths=(1.0, 1.0, 0.5, 1.0), num_images=2)
    assert params.strengths == (1.0, 0.5) and len(params.images) == 2
    result = redux_variation(registry, params)
    assert [im.image.size for im in result.images] == [(96, 64), (96, 64)]
    fields = parse_parameters(format_parameters(result.images[1].meta))
    assert fields["Source hash"] == f"{image_hash(RED)}, {image_hash(BLUE)}"
    assert (fields["Redux strengths"], fields["Variant"], fields["Seed"], fields["Prompt"]) == (
        "1, 0.5",
        "redux-dev",
        "6",
        "",
    )
    assert registry.load_counts["transformer:dev"] == 1  # Redux runs on [dev]'s transformer


def test_redux_strength_changes_the_image(registry, settings):
    a = redux_variation(registry, redux(settings))
    b = redux_variation(registry, redux(settings, strengths=(0.3,)))
    assert not np.array_equal(pixels(a), pixels(b))


@pytest.mark.parametrize(
    ("kw", "field", "message"),
    [
        ({"images": (None, None), "strengths": (1, 1)}, "image_1", "upload at least one"),
        ({"images": (None, RED), "strengths": (1, 3)}, "strength_2", "3.0 is out of range"),
        ({"images": (RED, BLUE), "strengths": (0, 0)}, "strength_1", "every strength is 0"),
        ({"images": (RED,), "strengths": (1, 1)}, "strength_1", "one per image"),
        ({"images": (RED,) * 5, "strengths": (1,) * 5}, "image_5", "at most 4"),
        ({"prompt_embeds_scale": -1}, "prompt_embeds_scale", "out of range"),
        ({"pooled_prompt_embeds_scale": float("nan")}, "pooled_prompt_embeds_scale", "expected a number"),
        ({"width": 100}, "width", "not a multiple of 16"),
        ({"prompt": 5}, "prompt", "expected text"),
    ],
)
def test_redux_bad_input_names_the_field(settings, kw, field, message):
    with pytest.raises(InvalidInput, match=message) as err:
        redux(settings, **kw)
    assert err.value.field == field
