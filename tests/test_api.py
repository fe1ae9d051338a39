"""The REST API in process (FastAPI's TestClient), on tiny models: every task, auth, the queue bound."""

from __future__ import annotations

import base64
import io
import threading
import time
from dataclasses import replace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from flux_ui.media.metadata import meta_from_parameters, read_parameters
from flux_ui.models.registry import Registry
from flux_ui.serving import rest as api


def b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def decode(png: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(png)))
    img.load()
    return img


def make_client(registry: Registry, auth: tuple[str, str] | None = None) -> TestClient:
    app = FastAPI()
    api.install(app, registry, auth)
    return TestClient(app)


@pytest.fixture
def client(registry) -> TestClient:
    return make_client(registry)


@pytest.fixture(scope="module")
def picture() -> str:
    return b64(Image.radial_gradient("L").convert("RGB").resize((96, 64)))


def test_health(client, settings):
    body = client.get("/health").json()
    assert body["status"] == "healthy" and body["device"] == "cpu" and body["speed"] == "off"
    assert set(body["loaded"]) == {"shared", "transformers", "aux"}
    assert body["memory_policy"] == settings.memory_policy and "ram" in body["memory"]


def test_text_to_image_returns_pngs_with_their_parameters(client, settings):
    r = client.post(
        "/generate",
        json={
            "task": "text_to_image",
            "prompt": "a fox",
            "resolution": "64x96",
            "steps": 1,
            "seed": 41,
            "num_images": 2,
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["seed"] == 41 and [i["seed"] for i in body["images"]] == [41, 42]
    for item in body["images"]:
        img = decode(item["png"])
        assert img.size == (64, 96)
        meta = meta_from_parameters(read_parameters(img))
        assert (meta.prompt, meta.seed, meta.variant) == ("a fox", item["seed"], "dev")
        assert item["parameters"] == read_parameters(img)
        assert item["saved"] and str(settings.outputs_dir) in item["saved"]


@pytest.mark.parametrize(
    "extra",
    [
        {"task": "kontext_edit", "prompt": "make it red", "resolution": "64x64"},
        {"task": "redux_variation", "resolution": "64x64", "strengths": [1.0]},
        {"task": "fill", "prompt": "a door", "right": 32},
        {"task": "control", "prompt": "a robot", "mode": "canny"},
    ],
    ids=lambda e: e["task"],
)
def test_image_tasks(client, picture, extra):
    r = client.post("/generate", json={"image": picture, "steps": 1, "seed": 3, **extra})
    assert r.status_code == 200, r.text
    (item,) = r.json()["images"]
    text = read_parameters(decode(item["png"]))
    assert meta_from_parameters(text).seed == 3 and "Source hash" in text


def test_vqa_answers_in_text(client, picture):
    r = client.post("/generate", json={"task": "vqa", "image": picture, "prompt": "What is it?", "max_new_tokens": 4})
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body["answer"], str) and body["images"] == []


def test_api_key_is_required_when_set(registry):
    keyed = make_client(Registry(replace(registry.settings, api_key="s3cret")))
    job = {"task": "text_to_image", "prompt": "x", "resolution": "64x64", "steps": 1}
    assert keyed.post("/generate", json=job).status_code == 401
    assert keyed.post("/generate", json=job, headers={"X-API-Key": "wrong"}).status_code == 401
    assert keyed.post("/generate", json=job, headers={"X-API-Key": "s3cret"}).status_code == 200
    assert keyed.get("/health").status_code == 200  # health checks need no key


def test_ui_login_opens_the_api_as_basic_auth(registry):
    guarded = make_client(registry, auth=("flux", "pw:with:colons"))
    job = {"task": "text_to_image", "prompt": "x", "resolution": "64x64", "steps": 1}
    assert guarded.post("/generate", json=job).status_code == 401
    assert guarded.post("/generate", json=job, auth=("flux", "nope")).status_code == 401
    assert guarded.post("/generate", json=job, auth=("flux", "pw:with:colons")).status_code == 200


def test_full_queue_is_refused_with_503(settings):
    """With --queue-size 1, a second request while the first waits for the GPU is refused at once."""
    registry = Registry(replace(settings, queue_size=1))
    client = make_client(registry)
    job = {"task": "text_to_image", "prompt": "x", "resolution": "64x64", "steps": 1, "seed": 1}
    first: dict = {}
    waiting = threading.Thread(target=lambda: first.update(r=client.post("/generate", json=job)))
    with registry.pipeline("schnell"):  # the GPU is busy (a UI job holds it) while both requests arrive
        waiting.start()
        time.sleep(0.5)
        refused = client.post("/generate", json=job)
    waiting.join(60)
    assert refused.status_code == 503 and "Queue full" in refused.json()["detail"]
    assert first["r"].status_code == 200
    assert client.post("/generate", json=job).status_code == 200  # the slot is free again
