import pytest

from flux_ui.core.errors import InvalidInput
from flux_ui.core.settings import Settings
from flux_ui.tasks.text_to_image import TextToImageParams, validate_text_to_image

S = Settings()


def check(**kw):
    return validate_text_to_image(TextToImageParams(**{"prompt": "a fox", **kw}), S)


def bad(field, fragment, **kw):
    with pytest.raises(InvalidInput) as err:
        check(**kw)
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}:")
    assert fragment in str(err.value)


def test_defaults_come_from_the_variant():
    p = check(variant="schnell", steps=None)
    assert p.steps == 4 and p.guidance is None
    p = check(variant="krea-dev", steps=None, guidance=None)
    assert p.steps == 28 and p.guidance == 4.5


def test_guidance_is_not_recorded_for_schnell():
    assert check(variant="schnell", guidance=7.0).guidance is None


def test_floats_from_sliders_become_ints():
    p = check(width=256.0, height=512.0, steps=2.0, num_images=2.0)
    assert (p.width, p.height, p.steps, p.num_images) == (256, 512, 2, 2)
    assert isinstance(p.width, int)


def test_prompt_is_stripped():
    assert check(prompt="  a fox \n").prompt == "a fox"


def test_size_not_multiple_of_16_names_the_nearest_valid_sizes():
    bad("width", "use 992 or 1008", width=1000)
    bad("height", "not a multiple of 16", height=520)


def test_size_over_the_megapixel_limit():
    bad("width", "over the limit of 2", width=2048, height=2048)


def test_size_too_small():
    bad("width", "out of range", width=32)


def test_steps_out_of_range():
    bad("steps", "out of range", steps=0)
    bad("steps", "1 to 100", steps=101)
    bad("steps", "whole number", steps=2.5)


def test_empty_prompt():
    bad("prompt", "is empty", prompt="   ")


def test_overlong_prompt():
    bad("prompt", "shorten it", prompt="x" * 5000)


def test_unknown_variant():
    bad("variant", "choose one of", variant="flux-pro")


def test_variant_of_another_task():
    bad("variant", "not a text-to-image model", variant="fill-dev")


def test_seed_range():
    assert check(seed=-1).seed == -1
    bad("seed", "-1 for a random seed", seed=-5)
    bad("seed", "out of range", seed=2**40)


def test_num_images_and_guidance():
    bad("num_images", "out of range", num_images=9)
    bad("guidance", "out of range", guidance=-1.0)
    bad("guidance", "expected a number", guidance=float("nan"))


def test_wrong_types():
    bad("width", "whole number", width="wide")
    bad("prompt", "expected text", prompt=None)
