"""OpenAI's images API on a running tiny server, with the official `openai` package as the client:
generations (b64_json and url), edits (Kontext, and Fill with a mask), models, errors in OpenAI's shape."""

from __future__ import annotations

import base64
import io
from dataclasses import replace

import httpx
import numpy as np
import openai
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from flux_ui.media.metadata import meta_from_parameters, read_parameters
from flux_ui.models.registry import Registry
from flux_ui.serving import openai_api
from flux_ui.serving.jobs import Jobs


@pytest.fixture(scope="module")
def client(app_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=app_server[0] + "v1", api_key="unused", max_retries=0)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def decode(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    img.load()
    return img


@pytest.fixture(scope="module")
def picture() -> bytes:
    return png_bytes(Image.radial_gradient("L").convert("RGB").resize((96, 64)))


def test_generations_b64_json(client):
    r = client.images.generate(model="schnell", prompt="a red fox", size="64x96", n=2, response_format="b64_json")
    assert len(r.data) == 2 and r.created > 0
    for item in r.data:
        img = decode(item.b64_json)
        assert img.size == (64, 96)
        meta = meta_from_parameters(read_parameters(img))
        assert (meta.prompt, meta.variant) == ("a red fox", "schnell")


def test_openai_model_names_map_to_dev_and_quality_is_ignored(client):
    r = client.images.generate(
        model="dall-e-3", prompt="a boat", size="64x64", quality="hd", style="vivid", response_format="b64_json"
    )
    assert meta_from_parameters(read_parameters(decode(r.data[0].b64_json))).variant == "dev"


def test_generations_url_serves_the_saved_png(client, app_server):
    r = client.images.generate(
        model="black-forest-labs/FLUX.1-schnell", prompt="a cat", size="64x64", response_format="url"
    )
    url = r.data[0].url
    assert url.startswith(app_server[0] + "v1/files/") and len(url.rsplit("/", 1)[1]) == 32
    got = httpx.get(url)
    assert got.status_code == 200 and got.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(got.content))
    assert img.size == (64, 64) and meta_from_parameters(read_parameters(img)).prompt == "a cat"
    assert httpx.get(app_server[0] + "v1/files/" + "0" * 32).status_code == 404


def test_edits_with_kontext_and_with_fill(client, picture):
    r = client.images.edit(image=("in.png", picture, "image/png"), prompt="make it red", size="64x64", n=1)
    img = decode(r.data[0].b64_json)
    text = read_parameters(img)
    assert img.size == (64, 64) and "Context size" in text and meta_from_parameters(text).variant == "kontext-dev"

    # OpenAI's masks: transparent = edit. The left half is transparent.
    mask = Image.new("RGBA", (96, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 48, 64))
    r = client.images.edit(
        image=("in.png", picture, "image/png"), mask=("mask.png", png_bytes(mask), "image/png"), prompt="a door"
    )
    meta = meta_from_parameters(read_parameters(decode(r.data[0].b64_json)))
    assert meta.variant == "fill-dev"


def test_openai_mask_transparent_means_edit():
    mask = Image.new("RGBA", (8, 8), (255, 255, 255, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 4, 8))
    ours = np.asarray(openai_api.openai_mask(png_bytes(mask)))
    assert (ours[:, :4] == 255).all() and (ours[:, 4:] == 0).all()


def test_models_lists_the_variants(client):
    ids = {m.id for m in client.models.list()}
    assert {"dev", "schnell", "krea-dev", "kontext-dev", "fill-dev"} <= ids


@pytest.mark.parametrize(
    "kwargs, param",
    [
        ({"model": "midjourney", "prompt": "x"}, "model"),
        ({"model": "dev", "prompt": "x", "size": "100x64"}, "size"),
        ({"model": "dev", "prompt": "  "}, "prompt"),
        ({"model": "dev", "prompt": "x", "n": 99, "size": "64x64"}, "n"),
        ({"model": "dev", "prompt": "x", "response_format": "gif"}, "response_format"),
    ],
    ids=["model", "size", "prompt", "n", "response_format"],
)
def test_bad_input_gets_an_openai_error_naming_the_param(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(**kwargs)
    err = info.value
    assert err.status_code == 400 and err.param == param and err.type == "invalid_request_error"
    assert err.body["message"].startswith(f"{param}: ")


def test_edit_without_image_names_it(app_server):
    r = httpx.post(app_server[0] + "v1/images/edits", data={"prompt": "x"}, files={"mask": ("m.png", b"x")})
    assert r.status_code == 400 and r.json()["error"]["param"] == "image"


def test_the_api_key_is_a_bearer_token(registry):
    keyed = Registry(replace(registry.settings, api_key="s3cret"))
    app = FastAPI()
    openai_api.install(app, keyed, None, Jobs(2))
    http = TestClient(app)
    assert http.get("/v1/models").status_code == 401
    refused = http.get("/v1/models", headers={"Authorization": "Bearer wrong"})
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    assert http.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    client = openai.OpenAI(base_url="http://testserver/v1", api_key="s3cret", http_client=http, max_retries=0)
    r = client.images.generate(model="schnell", prompt="a fox", size="64x64", response_format="b64_json")
    assert decode(r.data[0].b64_json).size == (64, 64)
