"""FLUX.2's tasks on tiny models: editing with several reference images and [klein] inpainting, end to end
through the task functions, the REST API and the Python API; their bad input is refused by field."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from flux_ui.client import FluxUI
from flux_ui.core.errors import InvalidInput
from flux_ui.media.metadata import format_parameters, parse_parameters
from flux_ui.output.history import infer_task
from flux_ui.serving import rest as api
from flux_ui.tasks.flux2_edit import Flux2EditParams, flux2_edit, validate_flux2_edit
from flux_ui.tasks.flux2_inpaint import Flux2InpaintParams, flux2_inpaint, validate_flux2_inpaint
from flux_ui.tasks.table import TASKS
from tests.test_api import b64, decode


def picture(colour: str, size=(96, 64)) -> Image.Image:
    return Image.new("RGB", size, colour)


def square_mask(size=(64, 64)) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, (16, 16, 48, 48))
    return mask


def test_the_task_table_offers_the_flux2_tasks():
    assert {"flux2_edit", "flux2_inpaint"} <= set(TASKS)


def test_edit_with_two_references_runs_end_to_end(registry):
    params = Flux2EditParams(
        (picture("red"), picture("blue", (64, 80))), "the red one on the blue one", steps=2, seed=4, num_images=2
    )
    job = validate_flux2_edit(params, registry.settings)
    assert (job.width, job.height) == (96, 64)  # "auto": the first reference's size
    result = flux2_edit(registry, job)
    assert [g.image.size for g in result.images] == [(96, 64), (96, 64)]
    meta = result.images[0].meta
    assert meta.variant == "flux2-klein-4b" and meta.extra["References"] == "2"
    assert meta.extra["Reference sizes"] == "96x64, 64x80"
    assert [g.meta.seed for g in result.images] == [4, 5]
    assert infer_task(parse_parameters(format_parameters(meta))) == "flux2_edit"  # History tells it apart
    # The references condition the result: another second reference gives another image.
    other = validate_flux2_edit(
        Flux2EditParams((picture("red"), picture("green", (64, 80))), "the red one on the blue one", steps=2, seed=4),
        registry.settings,
    )
    again = flux2_edit(registry, other).images[0].image
    assert not np.array_equal(np.asarray(again), np.asarray(result.images[0].image))


def test_edit_with_dev_takes_its_guidance(registry):
    job = validate_flux2_edit(
        Flux2EditParams((picture("red"),), "make it blue", variant="flux2-dev", size="64x64", steps=2),
        registry.settings,
    )
    assert job.guidance == 4.0 and (job.width, job.height) == (64, 64)
    assert flux2_edit(registry, job).images[0].image.size == (64, 64)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        (Flux2EditParams((None, None), "x"), "image_1"),
        (Flux2EditParams((picture("red"), picture("red", (40, 64))), "x"), "image_2"),  # under 64 px
        (Flux2EditParams((picture("red", (64, 640)),), "x"), "image_1"),  # 10:1
        (Flux2EditParams((picture("red"),) * 5, "x"), "image_5"),
        (Flux2EditParams((picture("red"),), " "), "instruction"),
        (Flux2EditParams((picture("red"),), "x", variant="dev"), "variant"),  # a FLUX.1 model
        (Flux2EditParams((picture("red"),), "x", size="1000x1000"), "size"),
    ],
)
def test_bad_edits_are_refused_by_field(registry, params, field):
    with pytest.raises(InvalidInput) as err:
        validate_flux2_edit(params, registry.settings)
    assert err.value.field == field


def test_klein_inpaints_only_the_masked_area(registry):
    source = Image.radial_gradient("L").convert("RGB").resize((64, 64))
    job = validate_flux2_inpaint(
        Flux2InpaintParams(source, square_mask(), "a red fox", variant="flux2-klein-base-4b", steps=2, seed=1),
        registry.settings,
    )
    assert job.strength == 1.0 and job.guidance == 4.0
    result = flux2_inpaint(registry, job)
    out = np.asarray(result.images[0].image).astype(int)
    inside = np.abs(out[20:44, 20:44] - np.asarray(source)[20:44, 20:44]).mean()
    assert inside > 5  # the masked square is repainted
    assert result.images[0].meta.extra["Repainted"] == "25%"
    assert infer_task(parse_parameters(format_parameters(result.images[0].meta))) == "flux2_inpaint"
    with registry.pipeline("flux2-klein-base-4b", pipeline_class="Flux2KleinInpaintPipeline") as pipe:
        assert type(pipe).__name__ == "Flux2KleinInpaintPipeline"
        with registry.pipeline("flux2-klein-base-4b") as plain:
            assert pipe.text_encoder is plain.text_encoder and pipe.transformer is plain.transformer


def test_inpaint_refuses_dev_and_an_empty_mask(registry):
    with pytest.raises(InvalidInput, match="variant: expected a FLUX.2 model that inpaints"):
        validate_flux2_inpaint(Flux2InpaintParams(picture("red"), square_mask(), "x", "flux2-dev"), registry.settings)
    with pytest.raises(InvalidInput) as err:
        validate_flux2_inpaint(Flux2InpaintParams(picture("red"), Image.new("L", (8, 8)), "x"), registry.settings)
    assert err.value.field == "mask"


def test_rest_reaches_the_flux2_tasks(registry):
    app = FastAPI()
    api.install(app, registry, None)
    client = TestClient(app)
    r = client.post(
        "/generate",
        json={
            "task": "flux2_edit",
            "prompt": "the two together",
            "image": b64(picture("red")),
            "images": [b64(picture("blue"))],
            "steps": 2,
            "seed": 9,
        },
    )
    assert r.status_code == 200, r.text
    assert decode(r.json()["images"][0]["png"]).size == (96, 64)
    assert "References: 2" in r.json()["images"][0]["parameters"]
    r = client.post(
        "/generate",
        json={
            "task": "flux2_edit",
            "prompt": "x",
            "image": b64(picture("red")),
            "images": [b64(picture("red", (8, 8)))],
        },
    )
    assert r.status_code == 422 and "images[0]" in r.text
    r = client.post(
        "/generate",
        json={
            "task": "flux2_inpaint",
            "prompt": "a fox",
            "image": b64(picture("red", (64, 64))),
            "mask": b64(square_mask()),
            "strength": 0.5,
            "steps": 4,
        },
    )
    assert r.status_code == 200, r.text
    assert "Strength: 0.5" in r.json()["images"][0]["parameters"]
    r = client.post(
        "/generate",
        json={
            "task": "text_to_image",
            "prompt": "a fox",
            "variant": "flux2-klein-9b",
            "resolution": "64x64",
            "steps": 2,
        },
    )
    assert r.status_code == 200, r.text


def test_python_api_reaches_the_flux2_tasks(tiny_dir, tmp_path):
    flux = FluxUI(tiny=True, tiny_dir=tiny_dir, outputs_dir=tmp_path / "outputs", preview_every=0)
    edited = flux.flux2_edit([picture("red"), picture("blue")], "both", steps=2, seed=3)
    assert edited.images[0].size == (96, 64)
    painted = flux.flux2_inpaint(picture("red", (64, 64)), square_mask(), "a fox", steps=2)
    assert painted.images[0].size == (64, 64)
    made = flux.text_to_image("a fox", variant="flux2-dev", resolution=(64, 64), steps=2)
    assert made.images[0].size == (64, 64)
    with pytest.raises(InvalidInput) as err:
        flux.flux2_edit([picture("red"), picture("red", (8, 8))], "both")
    assert err.value.field == "images[1]"


def test_gradio_client_reaches_the_flux2_tasks(app_server, tmp_path):
    from gradio_client import Client, handle_file

    first, second, source, mask = (tmp_path / f"{n}.png" for n in ("first", "second", "source", "mask"))
    picture("red").save(first)
    picture("blue", (64, 64)).save(second)
    picture("green", (64, 64)).save(source)
    square_mask().save(mask)
    client = Client(app_server[0], verbose=False)
    gallery, seed, info = client.predict(
        handle_file(str(first)),
        handle_file(str(second)),
        None,
        None,
        "both together",
        "flux2-klein-4b",
        "auto",
        2,
        None,
        7,
        1,
        api_name="/flux2_edit",
    )
    assert seed == 7 and len(gallery) == 1
    assert Image.open(gallery[0]["image"]).size == (96, 64)
    gallery, seed, info = client.predict(
        image=handle_file(str(source)),
        mask=handle_file(str(mask)),
        prompt="a fox",
        variant="flux2-klein-9b",
        steps=2,
        seed=8,
        api_name="/flux2_inpaint",
    )
    assert seed == 8 and Image.open(gallery[0]["image"]).size == (64, 64)
    gallery, seed, _ = client.predict(
        prompt="a fox", variant="flux2-dev", width=64, height=64, steps=2, seed=9, api_name="/text_to_image"
    )
    assert seed == 9
    assert "Model: FLUX.2 [dev], Variant: flux2-dev" in Image.open(gallery[0]["image"]).text["parameters"]
