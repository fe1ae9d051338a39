"""End to end: Kontext edit and Redux variation on `python app.py --tiny`, driven through gradio_client,
starting from an image the app itself generated."""

from __future__ import annotations

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from flux_ui.media.images import image_hash, load_image
from flux_ui.media.metadata import parse_parameters, read_parameters


@pytest.fixture(scope="module")
def client(app_server):
    url, _ = app_server
    return Client(url, verbose=False)


@pytest.fixture(scope="module")
def generated(client) -> str:
    """A 256x192 image made by /text_to_image: the input of the edits below."""
    gallery, _, _ = client.predict(
        prompt="a red chair", width=256, height=192, steps=1, seed=21, api_name="/text_to_image"
    )
    return gallery[0]["image"]


def parameters(path: str) -> dict[str, str]:
    with Image.open(path) as img:
        return parse_parameters(read_parameters(img))


def source_hash(path: str) -> str:
    return image_hash(load_image(path, "image"))


def test_kontext_edit_of_a_generated_image(client, generated, app_server):
    gallery, seed, info = client.predict(
        image=handle_file(generated),
        instruction="make the chair blue",
        size="128x96",
        steps=2,
        seed=7,
        api_name="/kontext_edit",
    )
    assert seed == 7 and "Output 128×96" in info and len(gallery) == 1
    with Image.open(gallery[0]["image"]) as img:
        assert img.size == (128, 96)
    p = parameters(gallery[0]["image"])
    assert (p["Prompt"], p["Variant"], p["Steps"], p["Distilled CFG Scale"]) == (
        "make the chair blue",
        "kontext-dev",
        "2",
        "2.5",
    )
    assert p["Source hash"] == source_hash(generated) and p["Source size"] == "256x192"
    _, outputs = app_server
    assert list(outputs.rglob("*-7.png"))


def test_kontext_auto_size_is_the_preferred_resolution(client, generated):
    gallery, _, info = client.predict(
        image=handle_file(generated), instruction="add a hat", steps=1, seed=8, api_name="/kontext_edit"
    )
    with Image.open(gallery[0]["image"]) as img:
        assert img.size == (1184, 880)  # 256x192 is 4:3; 1184x880 is the nearest Kontext resolution
    assert "context 1184x880" in info


def test_redux_variation_of_two_images(client, generated, tmp_path):
    transparent = tmp_path / "transparent.png"
    Image.new("RGBA", (96, 96), (0, 128, 0, 0)).save(transparent)  # shows as white
    gallery, seed, _ = client.predict(
        image_1=handle_file(generated),
        image_3=handle_file(str(transparent)),
        strength_3=0.5,
        prompt="in the style of a painting",
        prompt_embeds_scale=1.2,
        width=128,
        height=64,
        steps=2,
        seed=9,
        num_images=2,
        api_name="/redux_variation",
    )
    assert seed == 9 and len(gallery) == 2
    with Image.open(gallery[1]["image"]) as img:
        assert img.size == (128, 64)
    p = parameters(gallery[1]["image"])
    white = image_hash(Image.new("RGB", (96, 96), (255, 255, 255)))
    assert p["Source hash"] == f"{source_hash(generated)}, {white}"
    assert (p["Redux strengths"], p["Prompt embeds scale"], p["Seed"], p["Variant"]) == (
        "1, 0.5",
        "1.2",
        "10",
        "redux-dev",
    )


def test_redux_needs_no_prompt(client, generated):
    gallery, _, _ = client.predict(
        image_1=handle_file(generated), width=64, height=64, steps=1, seed=1, api_name="/redux_variation"
    )
    assert parameters(gallery[0]["image"])["Prompt"] == ""


KONTEXT_BAD = [
    ("text", "image: is not an image"),
    ("small", "image: is 63x200; each side must be at least 64"),
    ("huge", "image: is 5000x4100, 20.5 megapixels, over the limit of 20"),
    ("bomb", "image: refused as a decompression bomb"),
]


@pytest.mark.parametrize(("name", "message"), KONTEXT_BAD)
def test_kontext_refuses_bad_images_and_keeps_serving(client, bad_images, generated, name, message):
    with pytest.raises(AppError) as err:
        client.predict(image=handle_file(str(bad_images[name])), instruction="x", api_name="/kontext_edit")
    assert message in str(err.value)
    still_serving(client, generated)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"instruction": "   "}, "instruction: is empty; say what to change"),
        ({"size": "100x100"}, "size: width: 100 is not a multiple of 16"),
        ({"steps": 0}, "steps: 0 is out of range"),
        ({"image": None}, "image: is missing"),
    ],
)
def test_kontext_bad_fields(client, generated, kwargs, message):
    args = {"image": handle_file(generated), "instruction": "x", "size": "64x64", "steps": 1, **kwargs}
    with pytest.raises(AppError) as err:
        client.predict(**args, api_name="/kontext_edit")
    assert message in str(err.value)


@pytest.mark.parametrize(("name", "message"), [("text", "image_2: is not an image"), ("bomb", "image_2: refused")])
def test_redux_refuses_bad_images_by_slot(client, bad_images, generated, name, message):
    with pytest.raises(AppError) as err:
        client.predict(
            image_1=handle_file(generated),
            image_2=handle_file(str(bad_images[name])),
            width=64,
            height=64,
            steps=1,
            api_name="/redux_variation",
        )
    assert message in str(err.value)
    with pytest.raises(AppError, match="image_1: is missing"):
        client.predict(image_1=None, api_name="/redux_variation")
    still_serving(client, generated)


def still_serving(client, generated) -> None:
    gallery, _, _ = client.predict(
        image=handle_file(generated), instruction="still here", size="64x64", steps=1, seed=2, api_name="/kontext_edit"
    )
    assert len(gallery) == 1


def test_edited_images_load_back_into_text_to_image(client, generated):
    gallery, _, _ = client.predict(
        image_1=handle_file(generated),
        prompt="a green lamp",
        width=64,
        height=64,
        steps=1,
        seed=31,
        api_name="/redux_variation",
    )
    values = client.predict(handle_file(gallery[0]["image"]), api_name="/load_parameters")
    prompt, variant, width, height, steps, guidance, seed = values[:7]
    # Redux runs on [dev]: the text-to-image form gets [dev] with the image's own settings.
    assert (prompt, variant, width, height, steps, guidance, seed) == ("a green lamp", "dev", 64, 64, 1, 2.5, 31)
