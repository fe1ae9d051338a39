"""Fast mode in Fill, Control (both routes) and Redux on tiny models: the block evaluations its fixed mask
skips are counted on the real transformer blocks, the image without it is bit-identical before and after a
fast request, and the same refusals as text to image hold."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from test_fast_mode import counting, state

from flux_ui.core.errors import InvalidInput
from flux_ui.models import fast
from flux_ui.tasks.control import ControlParams, control, validate_control
from flux_ui.tasks.fill import FillParams, fill, validate_fill
from flux_ui.tasks.redux import ReduxParams, redux_variation, validate_redux

STEPS = 8
CACHED = {"double": [STEPS], "single": [sum(fast.computed_steps(STEPS))]}  # per image
EXACT = {"double": [STEPS], "single": [STEPS]}


@pytest.fixture(scope="module")
def picture() -> Image.Image:
    return Image.effect_noise((96, 64), 80).convert("RGB")


def mask() -> Image.Image:
    m = Image.new("L", (96, 64), 0)
    m.paste(255, (16, 16, 48, 48))
    return m


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].image)


def exact_then_fast_then_exact(registry, variant: str, run, same_modules: bool = True) -> None:
    """run(fast) -> result: counted with and without fast mode; the exact image is the same before and
    after the fast one, and the cache leaves the transformer as it found it (`same_modules`: its very
    module objects; the control LoRA's removal puts back an equal input layer, not the same object)."""
    with counting(registry, variant) as exact_counts:
        exact = run(False)
    before = state(registry, variant)
    with counting(registry, variant) as fast_counts:
        quick = run(True)
    assert state(registry, variant) == before or not same_modules
    again = run(False)
    assert exact_counts == EXACT and fast_counts == CACHED
    np.testing.assert_array_equal(pixels(exact), pixels(again))
    assert not np.array_equal(pixels(exact), pixels(quick))
    assert quick.images[0].meta.extra["Fast mode"] == fast.describe(STEPS)
    assert "Fast mode" not in again.images[0].meta.extra


def test_fill_skips_what_the_mask_says(registry, picture):
    def run(on: bool):
        raw = FillParams(picture, "a red fox", mask(), steps=STEPS, seed=5, fast=on)
        return fill(registry, validate_fill(raw, registry.settings))

    exact_then_fast_then_exact(registry, "fill-dev", run)


def test_fill_outpainting_in_fast_mode(registry, picture):
    raw = FillParams(picture, "a red fox", None, right=32, steps=STEPS, seed=5, fast=True)
    with counting(registry, "fill-dev") as counts:
        result = fill(registry, validate_fill(raw, registry.settings))
    assert counts == CACHED and result.images[0].image.size == (128, 64)


@pytest.mark.parametrize("mode, variant", [("canny", "canny-dev"), ("depth", "depth-dev")])
def test_control_full_route_skips_what_the_mask_says(registry, picture, mode, variant):
    def run(on: bool):
        raw = ControlParams("a red fox", picture, mode=mode, steps=STEPS, seed=7, fast=on)
        return control(registry, validate_control(raw, registry.settings))

    exact_then_fast_then_exact(registry, variant, run)


def test_control_lora_route_in_fast_mode(registry, picture):
    """BFL's control LoRA on [dev] under the cache: counted on the [dev] blocks; the LoRA and the cache
    both come off, so the plain [dev] image is unchanged."""
    from test_fast_mode import t2i

    plain = pixels(t2i(registry))

    def run(on: bool):
        raw = ControlParams("a red fox", picture, route="lora", steps=STEPS, seed=7, fast=on)
        return control(registry, validate_control(raw, registry.settings))

    exact_then_fast_then_exact(registry, "dev", run, same_modules=False)
    np.testing.assert_array_equal(pixels(t2i(registry)), plain)


def test_redux_skips_what_the_mask_says(registry, picture):
    def run(on: bool):
        raw = ReduxParams((picture,), (1.0,), width=96, height=64, steps=STEPS, seed=9, fast=on)
        return redux_variation(registry, validate_redux(raw, registry.settings))

    exact_then_fast_then_exact(registry, "dev", run)  # Redux runs on the [dev] transformer


ASKS = {  # (picture, settings, fast) -> the validated job
    "fill": lambda pic, settings, on: validate_fill(FillParams(pic, "a fox", mask(), fast=on), settings),
    "control": lambda pic, settings, on: validate_control(ControlParams("a fox", pic, fast=on), settings),
    "redux": lambda pic, settings, on: validate_redux(ReduxParams((pic,), (1.0,), fast=on), settings),
}


@pytest.mark.parametrize("task", ASKS)
@pytest.mark.parametrize("value", ["yes", 1, None])
def test_fast_must_be_a_bool(settings, picture, task, value):
    with pytest.raises(InvalidInput, match=r"^fast: expected true or false"):
        ASKS[task](picture, settings, value)


@pytest.mark.parametrize("task", ASKS)
def test_refused_under_group_offloading_by_field(settings, picture, task):
    offload = replace(settings, memory_policy="offload-12gb")
    with pytest.raises(InvalidInput, match=r"^fast: is not available under the 'offload-12gb'"):
        ASKS[task](picture, offload, True)
    assert ASKS[task](picture, offload, False).fast is False
