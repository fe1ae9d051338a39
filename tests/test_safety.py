"""--safety-checker: a tiny random-weight classifier with the real one's labels scores every image; those
at or over the threshold are blurred before they are shown, returned or saved."""

from __future__ import annotations

import base64
import io
from dataclasses import replace

from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image, ImageChops

from flux_ui.core.settings import settings_from_args
from flux_ui.models.registry import Registry
from flux_ui.output.safety import nsfw_scores, screen
from flux_ui.serving import rest as api
from flux_ui.tasks.text_to_image import TextToImageParams, text_to_image, validate_text_to_image


def generate(registry: Registry):
    params = validate_text_to_image(TextToImageParams("a fox", width=64, height=64, steps=1, seed=3), registry.settings)
    return text_to_image(registry, params)


def test_off_by_default(registry):
    assert not settings_from_args([]).safety_checker
    result = generate(registry)
    before = result.images[0].image.copy()
    assert screen(registry, result) == []
    assert ImageChops.difference(before, result.images[0].image).getbbox() is None
    assert "safety" not in registry.status()["aux"]  # the classifier is not even loaded


def test_flagged_images_are_blurred_and_others_kept(settings):
    flag_all = Registry(replace(settings, safety_checker=True, safety_threshold=0.0))
    result = generate(flag_all)
    before = result.images[0].image.copy()
    (note,) = screen(flag_all, result)
    assert "seed 3" in note and "blurred" in note
    assert ImageChops.difference(before, result.images[0].image).getbbox() is not None
    scores = nsfw_scores(flag_all, [before])
    assert 0.0 <= scores[0] <= 1.0

    flag_none = Registry(replace(settings, safety_checker=True, safety_threshold=1.01))
    result = generate(flag_none)
    before = result.images[0].image.copy()
    assert screen(flag_none, result) == []
    assert ImageChops.difference(before, result.images[0].image).getbbox() is None


def test_rest_returns_the_blurred_image_with_a_warning(settings):
    app = FastAPI()
    api.install(app, Registry(replace(settings, safety_checker=True, safety_threshold=0.0)))
    job = {"task": "text_to_image", "prompt": "a fox", "resolution": "64x64", "steps": 1, "seed": 3}
    body = TestClient(app).post("/generate", json=job).json()
    assert "safety filter" in body["warnings"][0]
    blurred = Image.open(io.BytesIO(base64.b64decode(body["images"][0]["png"])))
    with Image.open(body["images"][0]["saved"]) as saved:  # what was saved is the blurred image too
        assert ImageChops.difference(blurred.convert("RGB"), saved.convert("RGB")).getbbox() is None


def test_a_missing_classifier_withholds_the_images(settings, tmp_path):
    """Fail closed: with the filter on and its model unavailable, no unscreened image is returned."""
    app = FastAPI()
    broken = replace(settings, safety_checker=True, safety_model=str(tmp_path / "no-classifier"))
    api.install(app, Registry(broken))
    job = {"task": "text_to_image", "prompt": "a fox", "resolution": "64x64", "steps": 1, "seed": 3}
    r = TestClient(app).post("/generate", json=job)
    assert r.status_code == 503 and "--safety-model" in r.json()["error"]
