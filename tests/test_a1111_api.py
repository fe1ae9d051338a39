"""The AUTOMATIC1111 API subset on a running tiny server, in the shapes A1111 clients send: txt2img with a
LoRA tag, img2img, models and options, progress during a job, interrupt, and A1111's 422 for a bad field."""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import httpx
import pytest
from PIL import Image

from flux_ui.media.metadata import meta_from_parameters, read_parameters

# What A1111 clients (Open WebUI, SillyTavern) send with txt2img, defaults included.
TXT2IMG = {
    "prompt": "a lighthouse <lora:diffusers-ink:0.8>",
    "negative_prompt": "",
    "seed": 5,
    "sampler_name": "Euler a",
    "scheduler": "Automatic",
    "batch_size": 1,
    "n_iter": 2,
    "steps": 2,
    "cfg_scale": 7,
    "distilled_cfg_scale": 3.5,
    "width": 64,
    "height": 96,
    "restore_faces": False,
    "tiling": False,
    "enable_hr": False,
    "hr_scale": 2,
    "override_settings": {"sd_model_checkpoint": "flux1-dev.safetensors [0123abcd]", "CLIP_stop_at_last_layers": 2},
    "send_images": True,
    "save_images": False,
}


@pytest.fixture(scope="module")
def http(app_server) -> httpx.Client:
    with httpx.Client(base_url=app_server[0].rstrip("/"), timeout=300) as client:
        yield client


def b64_png(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def decode(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    img.load()
    return img


def test_txt2img_with_a_lora_tag(http):
    r = http.post("/sdapi/v1/txt2img", json=TXT2IMG)
    assert r.status_code == 200, r.text
    body = r.json()
    info = json.loads(body["info"])
    assert len(body["images"]) == 2 and info["all_seeds"] == [5, 6] and info["seed"] == 5
    assert body["parameters"]["prompt"] == TXT2IMG["prompt"]
    meta = meta_from_parameters(read_parameters(decode(body["images"][0])))
    assert (meta.variant, meta.width, meta.height, meta.guidance) == ("dev", 64, 96, 3.5)
    assert "diffusers-ink" in info["infotexts"][0]
    assert {"sampler_name", "scheduler", "hr_scale", "override_settings.CLIP_stop_at_last_layers"} <= set(
        info["ignored"]
    )
    assert "negative_prompt" not in info["ignored"]  # empty: it asks for nothing


def test_img2img_edits_with_kontext_and_inpaints_with_a_mask(http):
    picture = b64_png(Image.radial_gradient("L").convert("RGB").resize((96, 64)))
    job = {"init_images": [picture], "prompt": "make it red", "steps": 1, "seed": 2, "width": 64, "height": 64}
    r = http.post("/sdapi/v1/img2img", json={**job, "denoising_strength": 0.6})
    assert r.status_code == 200, r.text
    body = r.json()
    info = json.loads(body["info"])
    img = decode(body["images"][0])
    assert body["parameters"]["init_images"] is None
    assert info["task"] == "image_to_image" and "denoising_strength" not in info.get("ignored", [])
    assert img.size == (64, 64)
    assert "Denoising strength: 0.6" in read_parameters(img)
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (0, 0, 48, 64))
    r = http.post("/sdapi/v1/img2img", json={**job, "mask": b64_png(mask)})
    assert r.status_code == 200, r.text
    assert json.loads(r.json()["info"])["task"] == "fill"
    assert meta_from_parameters(read_parameters(decode(r.json()["images"][0]))).variant == "fill-dev"


def test_sampler_scheduler_and_vae_menus(http):
    assert [s["name"] for s in http.get("/sdapi/v1/samplers").json()] == ["Euler"]
    assert http.get("/sdapi/v1/schedulers").json()[0]["name"] == "simple"
    assert http.get("/sdapi/v1/sd-vae").json() == [{"model_name": "Automatic", "filename": None}]


def test_models_loras_and_switching_the_model(http):
    titles = [m["title"] for m in http.get("/sdapi/v1/sd-models").json()]
    flux2 = ["flux2-dev", "flux2-klein-4b", "flux2-klein-9b", "flux2-klein-base-4b", "flux2-klein-base-9b"]
    assert titles == ["dev", "schnell", "krea-dev", *flux2]  # txt2img runs FLUX.2 too
    assert "diffusers-ink" in {lora["name"] for lora in http.get("/sdapi/v1/loras").json()}
    assert http.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "dev"
    try:
        assert http.post("/sdapi/v1/options", json={"sd_model_checkpoint": "schnell"}).status_code == 200
        assert http.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "schnell"
        job = {"prompt": "a fox", "steps": 1, "width": 64, "height": 64}
        r = http.post("/sdapi/v1/txt2img", json=job)
        assert json.loads(r.json()["info"])["sd_model_name"] == "schnell"
    finally:
        http.post("/sdapi/v1/options", json={"sd_model_checkpoint": "dev"})


def test_progress_during_a_job_and_interrupt(http):
    job = {"prompt": "a long job", "steps": 100, "batch_size": 4, "width": 128, "height": 128, "seed": 1}
    answer: dict = {}
    worker = threading.Thread(target=lambda: answer.update(r=http.post("/sdapi/v1/txt2img", json=job)))
    assert http.get("/sdapi/v1/progress").json()["progress"] == 0
    worker.start()
    deadline = time.monotonic() + 120
    progress = http.get("/sdapi/v1/progress").json()
    while progress["state"]["sampling_step"] < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
        progress = http.get("/sdapi/v1/progress").json()
    assert 0 < progress["progress"] < 1 and progress["state"]["sampling_steps"] == 100
    assert progress["state"]["job_count"] == 1 and progress["current_image"]  # --preview-every 1
    assert http.post("/sdapi/v1/interrupt").status_code == 200
    worker.join(120)
    r = answer["r"]
    assert r.status_code == 200 and r.json()["images"] == []
    assert json.loads(r.json()["info"])["interrupted"] is True


@pytest.mark.parametrize(
    "path, body, field",
    [
        ("/sdapi/v1/txt2img", {"prompt": "x", "steps": 0}, "steps"),
        ("/sdapi/v1/txt2img", {"prompt": "x", "width": 100, "height": 64}, "width"),
        ("/sdapi/v1/txt2img", {"prompt": "x", "batch_size": 99}, "batch_size"),
        ("/sdapi/v1/txt2img", {"prompt": "x", "override_settings": {"sd_model_checkpoint": "sdxl"}}, None),
        ("/sdapi/v1/txt2img", {"prompt": "<lora:nope:1> x", "steps": 1}, "prompt"),
        ("/sdapi/v1/img2img", {"prompt": "x", "init_images": ["!!"]}, "init_images[0]"),
        ("/sdapi/v1/options", {"sd_model_checkpoint": "sdxl"}, "sd_model_checkpoint"),
    ],
    ids=["steps", "width", "batch_size", "checkpoint", "lora", "init_images", "options"],
)
def test_bad_input_gets_a1111s_422_naming_the_field(http, path, body, field):
    field = field or "override_settings.sd_model_checkpoint"
    r = http.post(path, json=body)
    assert r.status_code == 422, r.text
    (detail,) = r.json()["detail"]
    assert detail["loc"] == ["body", field] and detail["msg"]


def test_txt2img_hires_fix_upscales_each_image(http):
    from flux_ui.tiny.upscalers import TINY_UPSCALER

    body = {
        **TXT2IMG,
        "enable_hr": True,
        "hr_scale": 2,
        "hr_upscaler": TINY_UPSCALER,
        "denoising_strength": 0.5,
        "hr_second_pass_steps": 2,
        "seed": 11,
    }
    r = http.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    images = [decode(b) for b in r.json()["images"]]
    assert [im.size for im in images] == [(128, 192)] * 2 and info["all_seeds"] == [11, 12]
    for text in info["infotexts"]:
        assert f"Hires upscaler: {TINY_UPSCALER}" in text and "Denoising strength: 0.5" in text
        assert "Hires upscale: 2" in text and "diffusers-ink" in text  # the prompt's LoRA in the refine pass too
    assert not {"enable_hr", "hr_scale", "hr_upscaler", "denoising_strength"} & set(info["ignored"])
    # A1111's latent upscalers have no counterpart: Lanczos, and the answer says so.
    r = http.post("/sdapi/v1/txt2img", json={**body, "n_iter": 1, "hr_upscaler": "Latent (nearest-exact)"})
    info = json.loads(r.json()["info"])
    assert "Hires upscaler: lanczos" in info["infotexts"][0]
    assert any("Latent (nearest-exact)" in w and "Lanczos" in w for w in info["warnings"])


@pytest.mark.parametrize(
    "extra, field, words",
    [
        ({"hr_scale": 9}, "hr_scale", "out of range; use 1.5 to 4"),
        ({"hr_upscaler": "4x-Nope"}, "hr_upscaler", "no upscaler model named '4x-Nope'"),
        ({"hr_scale": 4, "width": 1024, "height": 1024}, "hr_scale", "over the limit of"),
        ({"denoising_strength": 2}, "denoising_strength", "out of range"),
    ],
    ids=["scale", "upscaler", "megapixels", "strength"],
)
def test_hires_fields_are_checked_before_anything_runs(http, extra, field, words):
    started = time.monotonic()
    body = {"prompt": "x", "steps": 1, "width": 64, "height": 64, "enable_hr": True, **extra}
    r = http.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 422, r.text
    (detail,) = r.json()["detail"]
    assert detail["loc"] == ["body", field] and words in detail["msg"], detail
    assert time.monotonic() - started < 10  # refused up front, no first pass run
