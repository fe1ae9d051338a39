"""End to end: `python app.py --tiny` in its own process, driven through gradio_client like a user's script."""

from __future__ import annotations

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image

from flux_ui.media.metadata import meta_from_parameters, read_parameters


@pytest.fixture(scope="module")
def client(app_server):
    url, _ = app_server
    return Client(url, verbose=False)


def test_text_to_image_returns_png_with_parameters(client, app_server):
    gallery, seed_used, info = client.predict(
        prompt="a red fox in the snow", seed=1234, width=256, height=256, steps=2, api_name="/text_to_image"
    )
    assert seed_used == 1234 and "Seed 1234" in info
    assert len(gallery) == 1
    with Image.open(gallery[0]["image"]) as img:
        assert img.format == "PNG" and img.size == (256, 256)
        meta = meta_from_parameters(read_parameters(img))
    assert (meta.prompt, meta.seed, meta.steps, meta.width, meta.height, meta.variant) == (
        "a red fox in the snow",
        1234,
        2,
        256,
        256,
        "dev",
    )
    _, outputs = app_server
    saved = list(outputs.rglob("*-1234.png"))
    assert saved, "the image was not saved under the outputs folder"


def test_schnell_and_batches(client):
    gallery, seed_used, _ = client.predict(
        prompt="a cat",
        variant="schnell",
        seed=7,
        width=128,
        height=64,
        steps=2,
        num_images=2,
        api_name="/text_to_image",
    )
    assert seed_used == 7 and len(gallery) == 2
    metas = []
    for item in gallery:
        with Image.open(item["image"]) as img:
            assert img.size == (128, 64)
            metas.append(meta_from_parameters(read_parameters(img)))
    assert [m.seed for m in metas] == [7, 8] and all(m.guidance is None for m in metas)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"width": 250}, "width: 250 is not a multiple of 16"),
        ({"width": 2048, "height": 2048}, "over the limit"),
        ({"steps": 0}, "steps: 0 is out of range"),
        ({"steps": 1000}, "steps: 1000 is out of range"),
        ({"prompt": "   "}, "prompt: is empty"),
        ({"variant": "flux-pro"}, "variant: unknown variant 'flux-pro'"),
        ({"seed": -7}, "seed:"),
    ],
)
def test_bad_input_is_named_and_the_server_keeps_serving(client, kwargs, message):
    args = {"prompt": "a fox", "width": 64, "height": 64, "steps": 1, "seed": 1, **kwargs}
    with pytest.raises(AppError) as err:
        client.predict(**args, api_name="/text_to_image")
    assert message in str(err.value)
    gallery, _, _ = client.predict(prompt="still here", width=64, height=64, steps=1, seed=2, api_name="/text_to_image")
    assert len(gallery) == 1


def test_load_parameters_round_trip(client):
    gallery, _, _ = client.predict(
        prompt="a blue chair",
        variant="krea-dev",
        seed=99,
        width=192,
        height=128,
        steps=3,
        guidance=4.0,
        api_name="/text_to_image",
    )
    from gradio_client import handle_file

    values = client.predict(handle_file(gallery[0]["image"]), api_name="/load_parameters")
    prompt, variant, width, height, steps, guidance, seed = values[:7]
    assert (prompt, variant, width, height, steps, guidance, seed) == ("a blue chair", "krea-dev", 192, 128, 3, 4.0, 99)


def test_load_parameters_rejects_images_without_them(client, tmp_path):
    from gradio_client import handle_file

    plain = tmp_path / "plain.png"
    Image.new("RGB", (16, 16)).save(plain)
    with pytest.raises(AppError, match="no generation parameters"):
        client.predict(handle_file(str(plain)), api_name="/load_parameters")


def test_status_reports_loaded_models(client):
    client.predict(prompt="warm up", width=64, height=64, steps=1, seed=3, api_name="/text_to_image")
    status = client.predict(api_name="/status")
    assert status["device"] == "cpu"
    assert set(status["shared"]) == {"text_encoder", "text_encoder_2", "vae"}
    assert any(t["variant"] == "dev" for t in status["transformers"])
    assert status["policy"] == "cpu" and status["policy_reason"] == "device cpu"
    assert status["memory"]["ram"]["total_gib"] > 0 and status["sizes_mib"]["transformer:dev"] > 0
    freed = client.predict(api_name="/free_memory")
    assert freed["transformers"] == [] and set(freed["shared"]) == {"text_encoder", "text_encoder_2", "vae"}
