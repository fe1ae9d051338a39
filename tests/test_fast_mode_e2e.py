"""Fast mode through every surface on tiny models: the UI's events (gradio_client against `app.py --tiny`),
the REST API and the Python API. The block counts themselves are checked in test_fast_mode.py."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from flux_ui.client import FluxUI
from flux_ui.core.errors import InvalidInput
from flux_ui.media.metadata import read_parameters
from flux_ui.models import fast
from flux_ui.serving import rest as api

STEPS = 8
T2I = {"prompt": "a fox in fresh snow", "width": 64, "height": 64, "steps": STEPS, "seed": 21}


def png(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    img.load()
    return img


def gallery_image(gallery) -> tuple[np.ndarray, str]:
    with Image.open(gallery[0]["image"]) as img:
        return np.asarray(img.convert("RGB")), read_parameters(img)


def test_ui_events_take_fast_mode(app_server, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(app_server[0], verbose=False)
    exact, exact_text = gallery_image(client.predict(**T2I, api_name="/text_to_image")[0])
    quick, quick_text = gallery_image(client.predict(**T2I, fast=True, api_name="/text_to_image")[0])
    again, _ = gallery_image(client.predict(**T2I, fast=False, api_name="/text_to_image")[0])
    assert f'Fast mode: "{fast.describe(STEPS)}"' in quick_text and "Fast mode" not in exact_text
    np.testing.assert_array_equal(exact, again)
    assert not np.array_equal(exact, quick)

    source = tmp_path / "input.png"
    Image.radial_gradient("L").convert("RGB").resize((64, 64)).save(source)
    gallery, _, _ = client.predict(
        handle_file(str(source)), "a fox", strength=1.0, steps=STEPS, seed=3, fast=True, api_name="/image_to_image"
    )
    assert fast.describe(STEPS) in gallery_image(gallery)[1]
    gallery, _, _ = client.predict(
        handle_file(str(source)), "make it blue", size="64x64", steps=STEPS, seed=3, fast=True, api_name="/kontext_edit"
    )
    assert fast.describe(STEPS) in gallery_image(gallery)[1]


@pytest.fixture
def rest(registry) -> TestClient:
    app = FastAPI()
    api.install(app, registry)
    return TestClient(app)


def test_rest_generate_takes_fast(rest):
    body = {"task": "text_to_image", "prompt": "a fox", "resolution": "64x64", "steps": STEPS, "seed": 4}
    exact = rest.post("/generate", json=body).json()["images"][0]
    quick = rest.post("/generate", json={**body, "fast": True}).json()["images"][0]
    again = rest.post("/generate", json={**body, "fast": False}).json()["images"][0]
    assert fast.describe(STEPS) in quick["parameters"] and "Fast mode" not in exact["parameters"]
    assert np.array_equal(np.asarray(png(exact["png"])), np.asarray(png(again["png"])))
    assert not np.array_equal(np.asarray(png(exact["png"])), np.asarray(png(quick["png"])))
    r = rest.post("/generate", json={**body, "fast": "yes"})
    assert r.status_code == 422 and r.json()["field"] == "fast", r.text


def test_python_api_takes_fast(tiny_dir, tmp_path):
    flux = FluxUI(tiny=True, tiny_dir=tiny_dir, outputs_dir=tmp_path / "outputs")
    result = flux.text_to_image("a fox", resolution=(64, 64), steps=STEPS, seed=5, fast=True)
    assert fast.describe(STEPS) in result.parameters[0]
    with pytest.raises(InvalidInput, match="^fast: expected true or false"):
        flux.generate("text_to_image", prompt="a fox", fast="on")


def components(demo) -> dict[str, dict]:
    """The app's components by elem_id, as the browser receives them."""
    return {c["props"]["elem_id"]: c for c in demo.config["components"] if c["props"].get("elem_id")}


def test_the_checkboxes_state_the_trade_off_and_its_source(settings):
    from dataclasses import replace

    from flux_ui.models.registry import Registry
    from flux_ui.ui.app import build_ui

    shown = components(build_ui(Registry(replace(settings, preload=True))))
    for elem_id in ("fast", "i2i-fast", "kontext-fast"):
        props = shown[elem_id]["props"]
        assert props["value"] is False and props["interactive"] is not False
        assert "ImageReward" in props["info"] and fast.SOURCE in props["info"]
    assert "startup" in shown  # --preload's phase line above the tabs
    offload = components(build_ui(Registry(replace(settings, memory_policy="offload-12gb"))))
    assert offload["fast"]["props"]["interactive"] is False
    assert "offload-12gb" in offload["fast"]["props"]["info"] and "startup" not in offload
