"""The Python API (flux_ui.client.FluxUI) in this process on tiny models and against a running tiny server:
the founding document's three calls, the same image for the same seed in both modes, errors naming the
argument."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from flux_ui.client import FluxUI
from flux_ui.core.errors import InvalidInput
from flux_ui.media.metadata import meta_from_parameters, read_parameters
from flux_ui.tasks import StepEvent


@pytest.fixture(scope="module")
def local(tiny_dir, tiny_lora_dir, tmp_path_factory) -> FluxUI:
    return FluxUI(tiny=True, tiny_dir=tiny_dir, outputs_dir=tmp_path_factory.mktemp("outputs"), preview_every=1)


@pytest.fixture(scope="module")
def remote(app_server) -> FluxUI:
    return FluxUI(url=app_server[0])


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("in") / "gradient.png"
    Image.radial_gradient("L").convert("RGB").resize((96, 64)).save(path)
    return str(path)


def test_the_three_founding_calls_in_process(local, picture):
    events: list[StepEvent] = []
    result = local.generate(
        task="text_to_image", prompt="a fox", resolution=(64, 96), steps=2, seed=7, on_step=events.append
    )
    assert result.image.size == (64, 96) and result.seeds == [7]
    assert [e.step for e in events] == [1, 2] and events[0].preview is not None
    meta = meta_from_parameters(result.parameters[0])
    assert (meta.prompt, meta.seed, meta.steps) == ("a fox", 7, 2)
    saved = Image.open(result.saved[0])
    assert read_parameters(saved) == result.parameters[0] and result.timings["total"] > 0

    edited = local.edit(image=picture, instruction="make it red", resolution=(64, 64), steps=1, seed=3)
    assert edited.image.size == (64, 64) and "Source hash" in edited.parameters[0]

    answer = local.vqa(image=picture, question="What is it?", max_new_tokens=4)
    assert isinstance(answer.answer, str) and answer.images == []


def test_other_tasks_in_process(local, picture):
    assert local.variation(picture, resolution=(64, 64), steps=1).image.size == (64, 64)
    assert local.fill(picture, "a door", right=32, steps=1).image.size == (128, 64)
    assert local.control("a robot", picture, steps=1).images


def test_same_seed_same_image_in_process_and_from_a_server(local, remote):
    job = {"prompt": "a lighthouse", "resolution": (64, 64), "steps": 2, "seed": 1234, "num_images": 2}
    here, there = local.text_to_image(**job), remote.text_to_image(**job)
    assert here.seeds == there.seeds == [1234, 1235]
    for a, b in zip(here.images, there.images, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert there.saved[0] and there.saved[0].endswith(".png")


def test_remote_edit_and_vqa(remote, picture):
    assert remote.edit(image=Image.open(picture), instruction="make it red", resolution="64x64", steps=1).images
    assert isinstance(remote.vqa(image=picture, question="What is it?", max_new_tokens=4).answer, str)


@pytest.mark.parametrize("mode", ["local", "remote"])
@pytest.mark.parametrize(
    "call, field",
    [
        (lambda f, pic: f.edit(image=pic, instruction="  "), "instruction"),
        (lambda f, pic: f.vqa(image=pic, question=""), "question"),
        (lambda f, pic: f.text_to_image("a fox", resolution=(100, 64)), "resolution"),
        (lambda f, pic: f.generate(prompt="a fox", steps=0), "steps"),
        (lambda f, pic: f.variation(pic, images=[b"not an image"], steps=1), "images[0]"),
    ],
    ids=["instruction", "question", "resolution", "steps", "images"],
)
def test_bad_input_raises_invalid_input_naming_the_argument(request, mode, call, field, picture):
    flux = request.getfixturevalue(mode)
    with pytest.raises(InvalidInput) as info:
        call(flux, picture)
    assert info.value.field == field, str(info.value)
    assert str(info.value).startswith(f"{field}: ")


def test_unknown_settings_are_refused_by_name():
    with pytest.raises(TypeError, match="no_such_setting"):
        FluxUI(no_such_setting=1)
