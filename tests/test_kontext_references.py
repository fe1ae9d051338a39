"""Kontext with several references on the tiny models: stitched into one picture, end to end through the
task, REST and gradio_client."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from flux_ui.core.errors import InvalidInput
from flux_ui.media.images import image_hash, stitch
from flux_ui.media.metadata import parse_parameters, read_parameters
from flux_ui.serving import rest as api
from flux_ui.tasks.kontext import KontextParams, context_size, kontext_edit, validate_kontext

PERSON = Image.new("RGB", (96, 128), (200, 30, 30))
JACKET = Image.new("RGB", (128, 128), (20, 40, 220))


def test_stitching_lays_references_side_by_side_or_in_rows_of_two():
    pair = stitch([PERSON, JACKET])
    assert pair.size == (96 + 128, 128)
    assert pair.getpixel((10, 64)) == (200, 30, 30) and pair.getpixel((200, 64)) == (20, 40, 220)
    assert stitch([JACKET] * 3).size == (256, 256)  # a row of three squares would be 3:1; rows of two instead
    assert stitch([JACKET] * 4).size == (256, 256)
    assert stitch([Image.new("RGB", (2000, 4000))] * 2).height == 1568  # never taller than Kontext's longest side


def test_two_references_run_end_to_end(registry, settings):
    job = validate_kontext(
        KontextParams(
            PERSON, "the person on the left wears the jacket on the right", steps=2, seed=4, images=(JACKET,)
        ),
        settings,
    )
    assert job.context.size == (224, 128)
    assert (job.width, job.height) == context_size(PERSON)  # auto follows the first image
    result = kontext_edit(registry, job)
    (item,) = result.images
    assert item.image.size == (job.width, job.height)
    extra = item.meta.extra
    assert extra["References"] == "2 stitched (224x128)"
    assert extra["Reference hashes"] == image_hash(JACKET)
    assert extra["Context size"] == "x".join(map(str, context_size(job.context)))
    assert not np.array_equal(
        np.asarray(item.image), np.asarray(kontext_edit(registry, job_without(job)).images[0].image)
    )


def job_without(job):
    from dataclasses import replace

    return replace(job, references=())


def test_reference_slots_are_checked_by_name(settings):
    with pytest.raises(InvalidInput, match="image_3: could not be decoded|image_3: ") as err:
        validate_kontext(KontextParams(PERSON, "mix them", images=(JACKET, b"not an image")), settings)
    assert err.value.field == "image_3"
    with pytest.raises(InvalidInput, match="at most 3 more") as err:
        validate_kontext(KontextParams(PERSON, "mix them", images=(JACKET,) * 4), settings)
    empty = validate_kontext(KontextParams(PERSON, "mix them", images=(None, "", JACKET)), settings)
    assert len(empty.references) == 1  # empty form slots are dropped


def b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_rest(registry):
    app = FastAPI()
    api.install(app, registry, None)
    client = TestClient(app)
    body = {"task": "kontext_edit", "prompt": "mix them", "image": b64(PERSON), "steps": 1, "seed": 2}
    r = client.post("/generate", json={**body, "images": [b64(JACKET)]})
    assert r.status_code == 200, r.text
    with Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]["png"]))) as img:
        assert parse_parameters(read_parameters(img))["References"] == "2 stitched (224x128)"
    r = client.post("/generate", json={**body, "images": [b64(JACKET), "!!"]})
    assert r.status_code == 422 and r.json()["field"] == "images[1]", r.text


def test_gradio_client(app_server, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(app_server[0], verbose=False)
    PERSON.save(tmp_path / "person.png")
    JACKET.save(tmp_path / "jacket.png")
    gallery, seed_used, info = client.predict(
        handle_file(str(tmp_path / "person.png")),
        "the person wears the jacket",
        steps=1,
        seed=31,
        image_2=handle_file(str(tmp_path / "jacket.png")),
        api_name="/kontext_edit",
    )
    assert seed_used == 31 and "2 stitched (224x128)" in info
