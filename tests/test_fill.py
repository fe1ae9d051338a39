from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from flux_ui.core.errors import Cancelled, InvalidInput
from flux_ui.media.metadata import meta_from_parameters, parse_parameters, png_info
from flux_ui.tasks.fill import FillParams, build_canvas, fill, validate_fill


@pytest.fixture(scope="module")
def picture() -> Image.Image:
    return Image.effect_noise((128, 96), 80).convert("RGB")


def square_mask(size=(128, 96), box=(16, 16, 48, 48)) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def params(settings, picture, **kw) -> FillParams:
    base = {"image": picture, "prompt": "a red fox", "mask": square_mask(), "steps": 2, "seed": 5}
    return validate_fill(FillParams(**{**base, **kw}), settings)


def pixels(result, i=0):
    return np.asarray(result.images[i].image)


def test_defaults_are_the_published_ones(settings, picture):
    p = validate_fill(FillParams(picture, "a fox", square_mask()), settings)
    assert (p.steps, p.guidance) == (50, 30.0)


def test_inpaint_keeps_the_size_and_records_the_request(registry, settings, picture):
    result = fill(registry, params(settings, picture))
    assert result.images[0].image.size == (128, 96)
    meta = result.images[0].meta
    assert (meta.variant, meta.steps, meta.guidance, meta.seed) == ("fill-dev", 2, 30.0, 5)
    assert set(meta.extra) == {"Source hash", "Mask hash"}
    text = png_info(meta).chunks[0][1].decode("latin-1")
    assert meta_from_parameters(text.split("\0", 1)[1]).variant == "fill-dev"
    assert result.repainted == pytest.approx(32 * 32 / (128 * 96), abs=0.01)


def test_same_seed_same_image_and_the_mask_matters(registry, settings, picture):
    a = fill(registry, params(settings, picture))
    b = fill(registry, params(settings, picture))
    c = fill(registry, params(settings, picture, mask=square_mask(box=(64, 32, 120, 90))))
    np.testing.assert_array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))


def test_a_mask_of_another_size_is_resized(registry, settings, picture):
    small = square_mask((64, 48), (8, 8, 24, 24))  # the same square at half size
    assert params(settings, picture, mask=small).mask.size == (128, 96)
    np.testing.assert_array_equal(
        np.asarray(params(settings, picture, mask=small).mask), np.asarray(params(settings, picture).mask)
    )


def test_painted_transparent_layers_are_masks(settings, picture):
    layer = Image.new("RGBA", (128, 96), (255, 0, 255, 0))
    layer.paste((255, 0, 255, 153), (16, 16, 48, 48))  # a 60 % opaque brush, as the editor paints
    np.testing.assert_array_equal(np.asarray(params(settings, picture, mask=layer).mask), np.asarray(square_mask()))


def test_outpaint_grows_the_canvas_and_masks_the_new_area(registry, settings, picture):
    p = params(settings, picture, mask=None, left=32, bottom=16)
    canvas, mask = build_canvas(p, settings.max_pixels)
    assert canvas.size == mask.size == (160, 112)
    m = np.asarray(mask)
    assert (m[:, :32] == 255).all() and (m[96:, :] == 255).all() and (m[:96, 32:] == 0).all()
    np.testing.assert_array_equal(np.asarray(canvas)[:96, 32:], np.asarray(picture))
    result = fill(registry, p)
    assert result.images[0].image.size == (160, 112)
    assert parse_parameters(png_info(result.images[0].meta).chunks[0][1].decode("latin-1").split("\0", 1)[1])[
        "Outpaint"
    ] == ("left 32, right 0, top 0, bottom 16")


def test_outpaint_with_a_mask_repaints_both(settings, picture):
    _, mask = build_canvas(params(settings, picture, right=16), settings.max_pixels)
    m = np.asarray(mask)
    assert (m[:, 128:] == 255).all() and (m[16:48, 16:48] == 255).all() and m[60:, :100].max() == 0


def test_large_canvas_is_scaled_to_the_megapixel_limit(settings, picture):
    small = replace(settings, max_megapixels=0.01)  # 10,000 pixels
    canvas, mask = build_canvas(params(small, picture, right=64), small.max_pixels)
    w, h = canvas.size
    assert w * h <= 10_000 and w % 16 == 0 and h % 16 == 0 and mask.size == (w, h)


@pytest.mark.parametrize(
    ("kw", "field", "message"),
    [
        ({"prompt": "  "}, "prompt", "is empty"),
        ({"mask": None}, "mask", "is missing; paint over the area to fill, or set outpaint amounts"),
        ({"mask": Image.new("L", (128, 96), 0)}, "mask", "is empty"),
        ({"mask": b"garbage"}, "mask", "is not an image"),
        ({"image": Image.new("RGB", (32, 32))}, "image", "at least 64 pixels"),
        ({"image": None}, "image", "is missing"),
        ({"right": -8}, "right", "negative"),
        ({"top": 2.5}, "top", "whole number"),
        ({"left": 4000, "right": 100}, "left", r"the canvas would be 4228 px wide \(image 128 \+ left 4000 \+ right"),
        ({"bottom": 5000}, "bottom", "over the 4096 px limit; top and bottom together can add at most 4000"),
        ({"steps": 0}, "steps", "out of range"),
        ({"guidance": "lots"}, "guidance", "expected a number"),
        ({"seed": -3}, "seed", "out of range"),
        ({"num_images": 9}, "num_images", "out of range"),
    ],
)
def test_bad_input_names_the_field(settings, picture, kw, field, message):
    with pytest.raises(InvalidInput, match=message) as err:
        params(settings, picture, **kw)
    assert err.value.field == field


def test_empty_mask_is_fine_when_outpainting(settings, picture):
    assert params(settings, picture, mask=Image.new("L", (128, 96), 0), top=16).mask is None


def test_progress_previews_and_cancel(registry, settings, picture):
    events = []
    fill(registry, params(settings, picture, steps=3), on_step=events.append)
    assert [e.step for e in events] == [1, 2, 3]
    assert [e.preview.size for e in events if e.preview is not None] == [(128, 96), (128, 96)]
    seen = []
    with pytest.raises(Cancelled):
        fill(registry, params(settings, picture, steps=5), on_step=seen.append, should_stop=lambda: len(seen) >= 1)
    assert len(seen) == 1
