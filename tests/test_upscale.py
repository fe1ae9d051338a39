"""Upscale and hires fix on tiny models: the tiny ESRGAN through spandrel's loader, Lanczos without one,
validation, feathered tiles, and the REST endpoint."""

from __future__ import annotations

import base64
import dataclasses
import io

import numpy as np
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

import flux_ui.tasks.upscale as task
from flux_ui.core.errors import InvalidInput
from flux_ui.media.metadata import parse_parameters, read_parameters
from flux_ui.media.tiles import Blender, layout
from flux_ui.models import upscalers
from flux_ui.serving import rest as api
from flux_ui.tasks.table import TASKS
from flux_ui.tasks.upscale import UpscaleParams, upscale, validate_upscale
from flux_ui.tiny.upscalers import TINY_UPSCALER, write_tiny_upscaler


@pytest.fixture(scope="module")
def esrgan(tiny_dir):
    return write_tiny_upscaler(tiny_dir)


@pytest.fixture
def picture() -> Image.Image:
    y, x = np.mgrid[0:64, 0:96]
    rgb = np.stack([x * 2.5, y * 3.5, 255 - x * 2.0], axis=-1)
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


def job(settings, picture, **kw):
    base = {"prompt": "a red fox", "scale": 2, "strength": 0.3, "steps": 4, "seed": 3}
    return validate_upscale(UpscaleParams(picture, **{**base, **kw}), settings)


def test_the_tiny_esrgan_is_a_real_esrgan_file_read_by_spandrel(esrgan, picture):
    spandrel = upscalers.spandrel()
    state = torch.load(esrgan, weights_only=True)
    assert "model.0.weight" in state and "model.1.sub.0.RDB1.conv1.0.weight" in state  # 4x-UltraSharp's keys
    descriptor = spandrel.ModelLoader("cpu").load_from_file(esrgan)
    assert (descriptor.architecture.name, descriptor.scale) == ("ESRGAN", 4)
    model = upscalers.load(esrgan)
    assert model.scale == 4 and model.architecture == "ESRGAN"
    out = upscalers.upscale(model, picture, tile=40, overlap=8)  # 3x2 tiles
    assert out.size == (4 * picture.width, 4 * picture.height)
    whole = upscalers.upscale(model, picture, tile=128)  # one tile: the model's plain output
    diff = np.abs(np.asarray(out, dtype=np.float32) - np.asarray(whole, dtype=np.float32))
    assert diff.mean() < 8.0, diff.mean()  # tiles see less context at their borders, nothing more


def test_found_in_the_models_folders_and_refused_when_not_an_upscaler(settings, esrgan, tmp_path):
    assert upscalers.find(settings)[TINY_UPSCALER] == esrgan
    forge = tmp_path / "forge"
    (forge / "models" / "ESRGAN").mkdir(parents=True)
    torch.save({"conv.weight": torch.zeros(3, 3, 1, 1)}, forge / "models" / "ESRGAN" / "broken.pth")
    both = dataclasses.replace(settings, models_dirs=(forge,))
    assert list(upscalers.find(both)) == ["broken", TINY_UPSCALER]
    with pytest.raises(ValueError, match="not an upscaler model spandrel knows"):
        upscalers.load(forge / "models" / "ESRGAN" / "broken.pth")
    torch.save({"model.0.weight": torch.zeros(1), "path": tmp_path}, tmp_path / "tricky.pth")  # a Path object
    with pytest.raises(ValueError, match="the pickle holds more than tensors, and is not run"):
        upscalers.load(tmp_path / "tricky.pth")


def test_upscales_by_the_factor_with_the_model(registry, settings, esrgan, picture):
    params = job(settings, picture, strength=0)
    assert (params.upscaler, params.width, params.height) == (TINY_UPSCALER, 192, 128)
    result = upscale(registry, params)
    (item,) = result.images
    assert item.image.size == (192, 128)
    assert item.meta.extra["Hires upscaler"] == TINY_UPSCALER and item.meta.extra["Denoising strength"] == "0"
    assert registry.load_counts[f"upscaler:{esrgan}"] == 1
    assert f"upscaler:{esrgan}" in registry.status()["aux"]  # an auxiliary entry: evicted before FLUX parts
    upscale(registry, job(settings, picture, strength=0, scale=4))  # 4x: the kept model, not read again
    assert registry.load_counts[f"upscaler:{esrgan}"] == 1


def test_plain_resize_when_no_model_is_installed(registry, settings, tmp_path, picture):
    bare = dataclasses.replace(settings, model_root=tmp_path)  # no upscale_models/ anywhere
    params = job(bare, picture, strength=0, scale=1.5)
    assert (params.upscaler, params.upscaler_path) == ("lanczos", None)
    result = upscale(registry, params)
    expected = picture.resize((144, 96), Image.Resampling.LANCZOS)
    np.testing.assert_array_equal(np.asarray(result.images[0].image), np.asarray(expected))
    with pytest.raises(InvalidInput, match=f"upscaler: no upscaler model named '{TINY_UPSCALER}'"):
        job(bare, picture, upscaler=TINY_UPSCALER)


def test_validation_names_the_field(settings, esrgan, picture):
    cases = (
        ({"scale": 1.2}, "scale", "out of range; use 1.5 to 4"),
        ({"scale": 4.5}, "scale", "out of range"),
        ({"scale": "2"}, "scale", "expected a number"),
        ({"upscaler": "4x-UltraSharp"}, "upscaler", f"choose one of: auto, lanczos, {TINY_UPSCALER}"),
        ({"strength": 1.5}, "strength", "out of range"),
        ({"prompt": "  "}, "prompt", "set strength 0 to upscale only"),
        ({"tiling": "yes"}, "tiling", "choose one of: auto, on, off"),
        ({"variant": "fill-dev"}, "variant", "not a text-to-image model"),
    )
    for kw, field, words in cases:
        with pytest.raises(InvalidInput, match=words) as err:
            job(settings, picture, **kw)
        assert err.value.field == field, kw
    big = Image.new("RGB", (1024, 768))
    with pytest.raises(InvalidInput, match=r"2048x1536 \(3.15 megapixels\).*use at most 1.59 \(") as err:
        job(settings, big, scale=2)  # the default limit is 2 megapixels
    assert err.value.field == "scale"
    assert job(dataclasses.replace(settings, max_megapixels=4.0), big, scale=2).tiled  # over 1.5 MP: tiles
    assert not job(settings, picture).tiled
    assert job(settings, picture, prompt="", strength=0).prompt == ""  # upscale only needs no prompt


def test_tiles_cover_the_image_and_blend_without_steps():
    boxes = layout((2048, 1536), 1024, 128, multiple=16)
    assert len(boxes) == 6 and all(b.width == b.height == 1024 for b in boxes)
    assert all(b.x % 16 == 0 and b.y % 16 == 0 for b in boxes)
    # Neighbouring tiles that disagree completely (0 against 1): blended, the change is spread over the overlap.
    size, boxes = (300, 100), layout((300, 100), 100, 40)
    blender = Blender(size, boxes, channels=1)
    for i, box in enumerate(boxes):
        blender.add(box, np.full((box.height, box.width, 1), float(i % 2)))
    row = blender.result()[50, :, 0]
    assert len(boxes) == 5 and row[0] == row[-1] == 0  # tiles 0 and 4 alone at the ends
    assert np.abs(np.diff(row)).max() < 1.5 / 40  # a hard paste would step by 1 at once


class RecordingBlender(Blender):
    """The task's own blender, keeping each tile's result as the pipeline returned it."""

    made: list[RecordingBlender] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tiles = []
        RecordingBlender.made.append(self)

    def add(self, box, pixels):
        self.tiles.append((box, pixels.copy()))
        super().add(box, pixels)


def test_hires_pass_in_tiles_cross_fades_neighbours(registry, settings, esrgan, picture, monkeypatch):
    monkeypatch.setattr(task, "TILE", 96)
    monkeypatch.setattr(task, "TILE_OVERLAP", 32)
    monkeypatch.setattr(task, "Blender", RecordingBlender)
    events = []
    params = job(settings, picture, tiling="on", strength=0.5, steps=4)
    result = upscale(registry, params, on_step=events.append)
    out = np.asarray(result.images[0].image, dtype=np.float32) / 255
    assert out.shape == (128, 192, 3)
    assert result.images[0].meta.extra["Hires tiles"] == "3x2 of 96x96"
    assert len(events) == 6 * params.steps_run and events[-1].done == events[-1].total
    (tiles,) = [b.tiles for b in RecordingBlender.made]
    (a, ta), (b, tb) = tiles[0], tiles[1]  # the first two tiles of the top row
    assert (a.x, b.x, a.width) == (0, 48, 96)  # overlapping over columns 48-95
    rows = slice(0, 32)  # rows that only the top row of tiles covers
    # Where one tile alone covers the image, the output is that tile's result (up to 8-bit rounding).
    assert np.abs(out[rows, :48] - ta[rows, :48]).max() <= 0.5 / 255 + 1e-6
    # Across the overlap the output fades from the left tile to the right one: its share of the
    # difference falls from near 1 to near 0, never rising.
    left, right = ta[rows, 48:96], tb[rows, 0:48]
    differ = np.abs(left - right) > 0.05
    share = np.where(differ, (out[rows, 48:96] - right) / np.where(differ, left - right, 1), np.nan)
    by_column = np.nanmedian(share.reshape(-1, 48, 3).transpose(1, 0, 2).reshape(48, -1), axis=1)
    assert by_column[0] > 0.9 and by_column[-1] < 0.1, by_column
    assert np.all(np.diff(by_column) < 0.05), by_column
    assert np.abs(left - right).mean() > 0.05  # the tiles did disagree: without the fade there would be a seam


def b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_rest_and_task_table(registry, esrgan, picture):
    assert TASKS["upscale"].label == "Upscale"
    app = FastAPI()
    api.install(app, registry, None)
    client = TestClient(app)
    body = {"task": "upscale", "image": b64(picture), "prompt": "a fox", "steps": 2, "seed": 5, "scale": 1.5}
    r = client.post("/generate", json={**body, "strength": 0.5, "upscaler": TINY_UPSCALER})
    assert r.status_code == 200, r.text
    (item,) = r.json()["images"]
    with Image.open(io.BytesIO(base64.b64decode(item["png"]))) as img:
        assert img.size == (144, 96)
        fields = parse_parameters(read_parameters(img))
    assert (fields["Hires upscale"], fields["Hires upscaler"], fields["Denoising strength"]) == (
        "1.5",
        TINY_UPSCALER,
        "0.5",
    )
    r = client.post("/generate", json={**body, "scale": 8})
    assert r.status_code == 422 and r.json()["field"] == "scale", r.text
    r = client.post("/generate", json={**body, "tiling": "sometimes"})
    assert r.status_code == 422 and r.json()["field"] == "tiling", r.text


def test_gradio_client_endpoint(app_server, tmp_path, picture):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(app_server[0], verbose=False)
    source = tmp_path / "input.png"
    picture.save(source)
    gallery, seed_used, info = client.predict(
        handle_file(str(source)), "a fox in the rain", scale=2, strength=0.4, steps=3, seed=78, api_name="/upscale"
    )
    assert seed_used == 78 and TINY_UPSCALER in info and "strength 0.4" in info  # --tiny offers the tiny ESRGAN
    with Image.open(gallery[0]["image"]) as img:
        assert img.size == (192, 128)
        fields = parse_parameters(read_parameters(img))
    assert (fields["Hires upscaler"], fields["Seed"], fields["Steps"]) == (TINY_UPSCALER, "78", "3")
    with pytest.raises(AppError, match="scale: 9.0 is out of range; use 1.5 to 4"):
        client.predict(handle_file(str(source)), "a fox", scale=9, api_name="/upscale")


def test_a_hand_off_brings_the_prompt_of_text_to_image_pictures_only(tmp_path, picture):
    from flux_ui.media.metadata import ImageMeta, save_png
    from flux_ui.media.uploads import upload_dir
    from flux_ui.ui.tabs.upscale import parameters_of

    folder = upload_dir() / f"upscale-test-{tmp_path.name}"  # hand-offs read only uploaded or saved files
    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    for variant, prompt in (("schnell", "a harbour at noon"), ("kontext-dev", "make it night")):
        meta = ImageMeta(prompt=prompt, variant=variant, seed=1, steps=4, guidance=None, width=96, height=64)
        made[variant] = save_png(picture, folder / f"{variant}.png", meta)
    assert parameters_of(str(made["schnell"])) == ("a harbour at noon", "schnell")
    assert parameters_of(str(made["kontext-dev"])) == ("", None)  # an instruction, not a description
    picture.save(folder / "plain.png")
    assert parameters_of(str(folder / "plain.png")) == ("", None)
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()


def test_python_api_in_process_and_remote(tiny_dir, esrgan, app_server, tmp_path, picture):
    from flux_ui.client import FluxUI

    source = tmp_path / "in.png"
    picture.save(source)
    local = FluxUI(tiny=True, tiny_dir=tiny_dir, outputs_dir=tmp_path / "outputs")
    made = local.upscale(str(source), "a fox", scale=2, steps=2, seed=9)
    assert made.image.size == (192, 128) and f"Hires upscaler: {TINY_UPSCALER}" in made.parameters[0]
    remote = FluxUI(url=app_server[0]).upscale(str(source), scale=1.5, upscaler="lanczos", strength=0)
    assert remote.image.size == (144, 96) and "Hires upscaler: lanczos" in remote.parameters[0]
    with pytest.raises(InvalidInput) as err:
        FluxUI(url=app_server[0]).upscale(str(source), "a fox", tiling="sometimes")
    assert err.value.field == "tiling"
