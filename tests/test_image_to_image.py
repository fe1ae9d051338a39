"""Image to image on tiny models: what strength does at its ends, validation, shared parts, the endpoints.

The tiny models have random weights, so their VAE does not reproduce an image: "returns the input" is
checked against the input's VAE round trip (encode, decode), the best any latent-space method can do.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from flux_ui.core.errors import InvalidInput
from flux_ui.media.images import image_hash
from flux_ui.media.metadata import meta_from_parameters, parse_parameters, read_parameters
from flux_ui.serving import rest as api
from flux_ui.tasks.image_to_image import (
    PIPELINE_CLASS,
    ImageToImageParams,
    encode_image,
    image_to_image,
    validate_image_to_image,
)
from flux_ui.tasks.table import TASKS
from flux_ui.tasks.text_to_image import TextToImageParams, text_to_image, validate_text_to_image

SIZE = (96, 64)


@pytest.fixture(scope="module")
def picture() -> Image.Image:
    return Image.radial_gradient("L").convert("RGB").resize(SIZE)


def job(settings, picture, **kw):
    base = {"image": picture, "prompt": "a red fox", "strength": 0.5, "steps": 3, "seed": 11}
    return validate_image_to_image(ImageToImageParams(**{**base, **kw}), settings)


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].image).astype(np.int32)


def round_trip(registry, picture) -> np.ndarray:
    """The input encoded as image to image encodes it, and decoded again."""
    with registry.pipeline("dev", pipeline_class=PIPELINE_CLASS) as pipe:
        latents = encode_image(pipe, picture, SIZE)
        vae = pipe.vae
        with torch.inference_mode():
            decoded = vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor).sample
        return np.asarray(pipe.image_processor.postprocess(decoded, output_type="pil")[0]).astype(np.int32)


def test_strength_1_is_text_to_image_of_the_same_seed_and_size(registry, settings, picture):
    # At strength 1, FluxImg2ImgPipeline runs the whole schedule of FluxPipeline (same sigmas, same shift
    # for the same size) and scale_noise starts from sigma = 1 exactly: 1 * noise + 0 * image. The noise is
    # the same because the task hands the pipeline the image latent (otherwise the pipeline samples the
    # VAE posterior with the generator first, and its noise would be the seed's second draw). So the
    # pictures are bit-identical, not merely close.
    i2i = image_to_image(registry, job(settings, picture, strength=1.0))
    t2i = text_to_image(
        registry,
        validate_text_to_image(TextToImageParams("a red fox", width=96, height=64, steps=3, seed=11), settings),
    )
    np.testing.assert_array_equal(pixels(i2i), pixels(t2i))


def test_low_strength_approaches_the_input(registry, settings, picture):
    # One step at the bottom of a 100-step schedule: the latent gets sigma ~0.01 of noise and one step of
    # the (random) transformer; the result tends to the round trip as strength falls.
    target = round_trip(registry, picture)
    far = np.abs(pixels(image_to_image(registry, job(settings, picture, strength=0.05, steps=20))) - target).mean()
    near_job = job(settings, picture, strength=0.01, steps=100)
    assert near_job.steps_run == 1
    near = np.abs(pixels(image_to_image(registry, near_job)) - target).mean()
    unrelated = np.abs(pixels(image_to_image(registry, job(settings, picture, strength=1.0))) - target).mean()
    assert near < far < unrelated
    assert near < 12  # of 255, mean per channel; the random transformer's one step is what is left


def test_strength_sets_the_steps_run_and_the_metadata(registry, settings, picture):
    events = []
    result = image_to_image(
        registry, job(settings, picture, strength=0.6, steps=5, num_images=2), on_step=events.append
    )
    assert [(e.image_index, e.step, e.steps, e.total) for e in events][:3] == [(0, 1, 3, 6), (0, 2, 3, 6), (0, 3, 3, 6)]
    assert len(events) == 6  # 5 - int(5 - 3.0) = 3 steps per image
    meta = result.images[1].meta
    assert (meta.seed, meta.steps, meta.width, meta.height) == (12, 5, 96, 64)
    assert meta.extra == {"Denoising strength": "0.6", "Source hash": image_hash(picture), "Source size": "96x64"}


@pytest.mark.parametrize(
    "value, message",
    [
        (0, "0 would leave the image unchanged"),
        (0.0, "0 would leave the image unchanged"),
        (-0.1, "out of range; use 0 to 1"),
        (1.5, "out of range; use 0 to 1"),
        ("0.5", "expected a number"),
        (True, "expected a number"),
        (float("nan"), "expected a number"),
        (1e-300, "too small to run one of 3 steps"),
    ],
)
def test_bad_strength_is_refused_naming_the_field(settings, picture, value, message):
    with pytest.raises(InvalidInput, match=message) as err:
        job(settings, picture, strength=value)
    assert err.value.field == "strength" and str(err.value).startswith("strength: ")


def test_size_defaults_to_the_input_within_the_megapixel_limit(settings):
    small = job(settings, Image.new("RGB", (200, 120)))
    assert (small.width, small.height) == (192, 112)  # never scaled up; each side down to a multiple of 16
    big = job(settings, Image.new("RGB", (3000, 2000)))
    assert big.width % 16 == 0 and big.height % 16 == 0 and big.width * big.height <= settings.max_pixels
    assert abs(big.width / big.height - 1.5) < 0.05
    chosen = job(settings, Image.new("RGB", (200, 120)), size="128x64")
    assert (chosen.width, chosen.height) == (128, 64)
    with pytest.raises(InvalidInput, match="size: width: 100 is not a multiple of 16") as err:
        job(settings, Image.new("RGB", (200, 120)), size="100x64")
    assert err.value.field == "size"


def test_other_fields_are_checked_as_text_to_image_checks_them(settings, registry, picture):
    for kw, field in (({"image": None}, "image"), ({"prompt": ""}, "prompt"), ({"variant": "kontext-dev"}, "variant")):
        with pytest.raises(InvalidInput) as err:
            job(settings, picture, **kw)
        assert err.value.field == field
    with pytest.raises(InvalidInput, match="prompt"):
        validate_image_to_image(ImageToImageParams(picture, "a fox <lora:no-such-lora:1>"), settings, registry.loras)
    schnell = job(settings, picture, variant="schnell", steps=None, guidance=None)
    assert (schnell.steps, schnell.guidance) == (4, None)


def test_shares_the_text_to_image_parts_by_identity(registry):
    with registry.pipeline("dev", pipeline_class=PIPELINE_CLASS) as i2i:
        parts = {k: getattr(i2i, k) for k in ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer")}
        assert type(i2i).__name__ == PIPELINE_CLASS
    with registry.pipeline("dev") as t2i:
        assert type(t2i).__name__ == "FluxPipeline"
        for name, part in parts.items():
            assert getattr(t2i, name) is part, name
    assert registry.load_counts["transformer:dev"] <= 1


def test_task_table_and_request(picture):
    from flux_ui.tasks import Request

    spec = TASKS["image_to_image"]
    raw = spec.from_request(Request(prompt="a fox", image=picture, strength=0.3, resolution="64x64"))
    assert (raw.strength, raw.size, raw.variant) == (0.3, "64x64", "dev")
    assert spec.from_request(Request(prompt="a fox", image=picture)).strength == 0.75


def b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_rest(registry, picture):
    app = FastAPI()
    api.install(app, registry, None)
    client = TestClient(app)
    body = {"task": "image_to_image", "image": b64(picture), "prompt": "a fox", "steps": 2, "seed": 5}
    r = client.post("/generate", json={**body, "strength": 0.5})
    assert r.status_code == 200, r.text
    (item,) = r.json()["images"]
    with Image.open(io.BytesIO(base64.b64decode(item["png"]))) as img:
        assert img.size == SIZE
        fields = parse_parameters(read_parameters(img))
    assert (fields["Denoising strength"], fields["Seed"], fields["Source size"]) == ("0.5", "5", "96x64")
    r = client.post("/generate", json={**body, "strength": 0})
    assert r.status_code == 422 and r.json()["field"] == "strength", r.text
    r = client.post("/generate", json={**body, "resolution": "100x64"})
    assert r.status_code == 422 and r.json()["field"] == "resolution", r.text


def test_gradio_client_endpoint(app_server, tmp_path, picture):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(app_server[0], verbose=False)
    source = tmp_path / "input.png"
    picture.save(source)
    gallery, seed_used, info = client.predict(
        handle_file(str(source)), "a fox in the rain", strength=0.4, steps=3, seed=77, api_name="/image_to_image"
    )
    assert seed_used == 77 and "strength 0.4" in info
    with Image.open(gallery[0]["image"]) as img:
        assert img.size == SIZE
        meta = meta_from_parameters(read_parameters(img))
    assert (meta.prompt, meta.seed, meta.steps, meta.variant) == ("a fox in the rain", 77, 3, "dev")
    with pytest.raises(AppError, match="strength: 0 would leave the image unchanged"):
        client.predict(handle_file(str(source)), "a fox", strength=0, api_name="/image_to_image")
