from dataclasses import replace

import numpy as np
import pytest
from PIL import Image, ImageDraw

from flux_ui.core.errors import ModelUnavailableError
from flux_ui.media.control_maps import canny
from flux_ui.models.registry import Registry
from flux_ui.tasks.control import depth_estimator


def edges(img: Image.Image, low=50, high=200) -> np.ndarray:
    out = canny(img, low, high)
    assert out.mode == "RGB" and out.size == img.size
    a = np.asarray(out)
    assert set(np.unique(a)) <= {0, 255}
    return a[..., 0] > 0


def test_flat_image_has_no_edges():
    assert not edges(Image.new("RGB", (64, 64), (90, 120, 200))).any()


def test_a_step_gives_one_thin_line_at_the_step():
    img = Image.new("RGB", (64, 64), 0)
    img.paste((255, 255, 255), (32, 0, 64, 64))
    e = edges(img)
    cols = np.flatnonzero(e.any(axis=0))
    assert len(cols) == 1 and cols[0] in (31, 32)  # one pixel wide, on the step
    assert e[:, cols[0]].all()  # along the whole height


def test_a_square_is_outlined():
    img = Image.new("RGB", (96, 96), "black")
    ImageDraw.Draw(img).rectangle((24, 24, 71, 71), fill="white")
    e = edges(img)
    assert not e[30:66, 30:66].any()  # nothing inside
    assert e[24:72, 22:26].any(axis=1).all() and e[24:72, 70:74].any(axis=1).all()  # left and right sides


def test_colour_edges_count_even_with_equal_brightness():
    img = Image.new("RGB", (64, 64), (255, 0, 0))
    img.paste((0, 0, 255), (32, 0, 64, 64))  # the strongest channel's gradient wins, as in OpenCV
    assert edges(img).any()


def test_thresholds_and_hysteresis():
    img = Image.new("RGB", (64, 64), 0)
    img.paste((60, 60, 60), (0, 32, 32, 64))  # weak step: Sobel gradient 4 * 60 = 240
    img.paste((255, 255, 255), (32, 0, 64, 64))  # strong step: 4 * 255 = 1020
    strong_only = edges(img, low=500, high=500)
    both = edges(img, low=50, high=500)
    assert strong_only.sum() < both.sum()  # the weak step joins, being connected to the strong one
    isolated = Image.new("RGB", (64, 64), 0)
    isolated.paste((60, 60, 60), (32, 0, 64, 64))
    assert not edges(isolated, low=50, high=500).any()  # weak and not connected to a strong edge
    assert edges(isolated, low=50, high=200).any()


def test_depth_estimator_loads_once_and_maps_to_the_requested_size(registry):
    img = Image.effect_noise((120, 80), 60).convert("RGB")
    with depth_estimator(registry) as estimator:
        a = estimator(img, (96, 64))
    with depth_estimator(registry) as again:
        assert again is estimator
        b = again(img, (96, 64))
    assert registry.load_counts["depth-estimator"] == 1
    assert a.size == (96, 64) and a.mode == "RGB"
    pixels = np.asarray(a)
    assert pixels.min() == 0 and pixels.max() == 255  # stretched to the full range
    np.testing.assert_array_equal(pixels, np.asarray(b))
    assert registry.status()["aux"] == {"depth-estimator": "cpu"}
    assert registry.evict_aux() == ["depth-estimator"]


def test_missing_depth_estimator_is_explained(settings, tmp_path):
    registry = Registry(replace(settings, model_paths={"depth-estimator": str(tmp_path / "nowhere")}))
    with (
        pytest.raises(ModelUnavailableError, match="Depth estimator.*--model depth-estimator"),
        depth_estimator(registry),
    ):
        pass
