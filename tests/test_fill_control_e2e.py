"""End to end: Fill and Control through gradio_client against `python app.py --tiny`."""

from __future__ import annotations

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image, ImageDraw

from flux_ui.media.metadata import meta_from_parameters, parse_parameters, read_parameters


@pytest.fixture(scope="module")
def client(app_server):
    url, _ = app_server
    return Client(url, verbose=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    picture = Image.effect_noise((128, 96), 70).convert("RGB")
    ImageDraw.Draw(picture).ellipse((30, 20, 100, 80), fill="orange")
    picture.save(folder / "picture.png")
    mask = Image.new("L", (64, 48), 0)  # half the picture's size: resized on the server
    mask.paste(255, (10, 10, 30, 30))
    mask.save(folder / "mask.png")
    Image.new("L", (128, 96), 0).save(folder / "empty.png")
    (folder / "notes.txt").write_text("not an image")
    return {p.stem: str(p) for p in folder.iterdir()}


def read(path: str):
    with Image.open(path) as img:
        return img.size, read_parameters(img)


def test_fill_inpaints_with_a_mask(client, files):
    gallery, seed, info = client.predict(
        image=handle_file(files["picture"]),
        mask=handle_file(files["mask"]),
        prompt="a red fox",
        steps=2,
        seed=31,
        api_name="/fill",
    )
    assert seed == 31 and "Seed 31" in info and "128×96 px" in info and "% repainted" in info
    size, text = read(gallery[0]["image"])
    assert size == (128, 96)
    meta = meta_from_parameters(text)
    assert (meta.variant, meta.steps, meta.guidance, meta.seed) == ("fill-dev", 2, 30.0, 31)
    assert "Mask hash" in parse_parameters(text)


def test_fill_outpaints_without_a_mask(client, files):
    gallery, _, _ = client.predict(
        image=handle_file(files["picture"]), prompt="a wide meadow", right=64, top=16, steps=2, seed=2, api_name="/fill"
    )
    size, text = read(gallery[0]["image"])
    assert size == (192, 112)
    assert parse_parameters(text)["Outpaint"] == "left 0, right 64, top 16, bottom 0"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": ""}, "prompt: is empty"),
        ({"mask": None}, "mask: is missing"),
        ({"mask": "empty"}, "mask: is empty"),
        ({"image": "notes"}, "image: is not an image"),
        ({"left": 3000, "right": 3000}, "the canvas would be 6128 px wide"),
    ],
)
def test_fill_bad_input_is_named(client, files, kwargs, message):
    args = {"image": "picture", "mask": "mask", "prompt": "a fox", "steps": 1, "seed": 1, **kwargs}
    for key in ("image", "mask"):
        if args[key] is not None:
            args[key] = handle_file(files[args[key]])
    with pytest.raises(AppError) as err:
        client.predict(**args, api_name="/fill")
    assert message in str(err.value)


@pytest.mark.parametrize(("mode", "route", "variant"), [("canny", "full", "canny-dev"), ("depth", "lora", "dev")])
def test_control_returns_images_and_the_map(client, files, mode, route, variant):
    gallery, control_map, seed, info = client.predict(
        image=handle_file(files["picture"]),
        prompt="a robot made of gold",
        mode=mode,
        route=route,
        steps=2,
        seed=8,
        api_name="/control",
    )
    assert seed == 8 and "Seed 8" in info
    size, text = read(gallery[0]["image"])
    assert size == (128, 96)
    params = parse_parameters(text)
    assert (params["Variant"], params["Control"], params["Control route"]) == (variant, mode, route)
    with Image.open(control_map) as m:
        assert m.size == (128, 96)


def test_control_map_endpoint_and_an_uploaded_map(client, files):
    edges = client.predict(image=handle_file(files["picture"]), mode="canny", api_name="/control_map")
    with Image.open(edges) as m:
        assert m.size == (128, 96) and m.convert("L").getextrema() == (0, 255)
    gallery, _, _, _ = client.predict(
        image=None, control_image=handle_file(edges), prompt="a gold ring", steps=1, seed=3, api_name="/control"
    )
    _, text = read(gallery[0]["image"])
    assert parse_parameters(text)["Control map"] == "uploaded"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "pose"}, "mode: unknown mode 'pose'"),
        ({"image": None}, "image: is missing"),
        ({"prompt": " "}, "prompt: is empty"),
        ({"low_threshold": 300}, "low_threshold: 300 is above high_threshold"),
    ],
)
def test_control_bad_input_is_named(client, files, kwargs, message):
    args = {"image": handle_file(files["picture"]), "prompt": "a robot", "steps": 1, "seed": 1, **kwargs}
    with pytest.raises(AppError) as err:
        client.predict(**args, api_name="/control")
    assert message in str(err.value)
