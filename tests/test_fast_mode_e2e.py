"""Fast mode through every surface on tiny models: the UI's events (gradio_client against `app.py --tiny`),
the REST API and the Python API. The block counts themselves are checked in test_fast_mode.py."""

from __future__ import annotations

import base64
import io
import json

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
    boxes = ("fast", "i2i-fast", "kontext-fast", "redux-fast", "fill-fast", "control-fast")
    for elem_id in boxes:
        props = shown[elem_id]["props"]
        assert props["value"] is False and props["interactive"] is not False
        assert "ImageReward" in props["info"] and fast.SOURCE in props["info"]
    assert "startup" in shown  # --preload's phase line above the tabs
    offload = components(build_ui(Registry(replace(settings, memory_policy="offload-12gb"))))
    assert all(offload[elem_id]["props"]["interactive"] is False for elem_id in boxes)
    assert "offload-12gb" in offload["fast"]["props"]["info"] and "startup" not in offload


def test_fill_control_and_redux_events_take_fast_mode(app_server, tmp_path):
    """The three endpoints that gained `fast` as their last input: on with it, and an older client that
    sends every input but that one still gets exact mode (the handler's default)."""
    import httpx
    from gradio_client import Client, handle_file

    client = Client(app_server[0], verbose=False)
    source, mask = tmp_path / "input.png", tmp_path / "mask.png"
    Image.radial_gradient("L").convert("RGB").resize((64, 64)).save(source)
    Image.new("L", (64, 64), 255).save(mask)
    common = {"steps": STEPS, "seed": 3, "fast": True}
    gallery, _, _ = client.predict(
        handle_file(str(source)), handle_file(str(mask)), "a fox", **common, api_name="/fill"
    )
    assert fast.describe(STEPS) in gallery_image(gallery)[1]
    gallery, *_ = client.predict(handle_file(str(source)), "a fox", **common, api_name="/control")
    assert fast.describe(STEPS) in gallery_image(gallery)[1]
    gallery, _, _ = client.predict(handle_file(str(source)), width=64, height=64, **common, api_name="/redux_variation")
    assert fast.describe(STEPS) in gallery_image(gallery)[1]

    url = app_server[0]
    with httpx.Client(timeout=120) as http:
        uploaded = [
            http.post(f"{url}gradio_api/upload", files={"files": (p.name, p.read_bytes(), "image/png")}).json()[0]
            for p in (source, mask)
        ]
        files = [{"path": path, "meta": {"_type": "gradio.FileData"}} for path in uploaded]
        # Fill's inputs as they were before fast mode: image, mask, prompt, 4 sides, steps, guidance, seed, images.
        old = [*files, "a fox", 0, 0, 0, 0, STEPS, 30, 3, 1]
        event_id = http.post(f"{url}gradio_api/call/fill", json={"data": old}).json()["event_id"]
        stream = http.get(f"{url}gradio_api/call/fill/{event_id}").text
    assert "event: complete" in stream, stream[-500:]
    data = json.loads(stream.rsplit("data:", 1)[1])
    with Image.open(data[0][0]["image"]["path"]) as img:
        text = read_parameters(img)
    assert "Seed: 3" in text and "Fast mode" not in text


def test_rest_and_python_api_take_fast_for_fill_control_and_redux(rest, tiny_dir, tmp_path):
    picture = Image.radial_gradient("L").convert("RGB").resize((64, 64))
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    image = base64.b64encode(buf.getvalue()).decode()
    for task in ("fill", "control", "redux_variation"):
        body = {"task": task, "prompt": "a fox", "image": image, "steps": STEPS, "seed": 6, "fast": True}
        body |= {"right": 16} if task == "fill" else {"resolution": "64x64"} if task == "redux_variation" else {}
        r = rest.post("/generate", json=body)
        assert r.status_code == 200, (task, r.text[-300:])
        assert fast.describe(STEPS) in r.json()["images"][0]["parameters"], task
    flux = FluxUI(tiny=True, tiny_dir=tiny_dir, outputs_dir=tmp_path / "outputs")
    made = [
        flux.fill(picture, "a fox", right=16, steps=STEPS, seed=7, fast=True),
        flux.control("a fox", picture, steps=STEPS, seed=7, fast=True),
        flux.variation(picture, resolution=(64, 64), steps=STEPS, seed=7, fast=True),
    ]
    assert all(fast.describe(STEPS) in m.parameters[0] for m in made)
    with pytest.raises(InvalidInput, match="^fast: expected true or false"):
        flux.fill(picture, "a fox", right=16, fast="on")
