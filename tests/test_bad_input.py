"""Bad input, tried systematically against the REST API and every Gradio endpoint: malformed JSON, wrong
types, huge and negative numbers, non-image bytes, decompression bombs, path traversal in LoRA, model and
choice names, oversized prompts and uploads. Each gets a clear error that names the field, and the server
keeps serving. The case lists are data, so their length is the number of cases tried."""

from __future__ import annotations

import base64

import pytest
from conftest import bomb_png
from fastapi import FastAPI
from fastapi.testclient import TestClient
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from flux_ui.core.settings import Settings
from flux_ui.models.registry import Registry
from flux_ui.serving import rest as api

T2I = {"task": "text_to_image", "prompt": "a fox", "resolution": "64x64", "steps": 1, "seed": 1}
TRAVERSAL = "../../etc/passwd"
BOMB = base64.b64encode(bomb_png(20_000, 20_000)).decode()  # 400 MP in a few KB
BOMB_108MP = base64.b64encode(bomb_png(12_000, 9_000)).decode()  # under PIL's own limit, over ours
NOT_AN_IMAGE = base64.b64encode(b"GIF89a but not really an image at all").decode()
GOOD = base64.b64encode(bomb_png(64, 64)).decode()  # a plain 64x64 black PNG

# (id, request body: a dict sent as JSON or raw text, field the error must name)
REST_CASES = [
    ("malformed-json", "{bad json", "body"),
    ("truncated-json", '{"task": "text_to_image", "prompt": "a', "body"),
    ("empty-body", "", "body"),
    ("json-array", "[1, 2]", "body"),
    ("json-null", "null", "body"),
    ("missing-task", {"prompt": "a fox"}, "task"),
    ("unknown-task", {**T2I, "task": "make_coffee"}, "task"),
    ("unknown-field", {**T2I, "stepz": 3}, "stepz"),
    ("prompt-number", {**T2I, "prompt": 123}, "prompt"),
    ("prompt-empty", {**T2I, "prompt": "   "}, "prompt"),
    ("prompt-over-limit", {**T2I, "prompt": "x" * 5000}, "prompt"),
    ("prompt-oversized", {**T2I, "prompt": "x" * 25_000}, "prompt"),
    ("steps-string", {**T2I, "steps": "28"}, "steps"),
    ("steps-float", {**T2I, "steps": 2.5}, "steps"),
    ("steps-bool", {**T2I, "steps": True}, "steps"),
    ("steps-negative", {**T2I, "steps": -1}, "steps"),
    ("steps-huge", {**T2I, "steps": 10**12}, "steps"),
    ("seed-negative", {**T2I, "seed": -5}, "seed"),
    ("seed-huge", {**T2I, "seed": 2**40}, "seed"),
    ("seed-string", {**T2I, "seed": "1"}, "seed"),
    ("num-images-zero", {**T2I, "num_images": 0}, "num_images"),
    ("num-images-huge", {**T2I, "num_images": 10**6}, "num_images"),
    ("num-images-list", {**T2I, "num_images": []}, "num_images"),
    ("guidance-negative", {**T2I, "guidance": -1}, "guidance"),
    ("guidance-huge", {**T2I, "guidance": 1e308}, "guidance"),
    ("guidance-string", {**T2I, "guidance": "high"}, "guidance"),
    ("resolution-huge", {**T2I, "resolution": "99999x99999"}, "resolution"),
    ("resolution-negative", {**T2I, "resolution": "-64x64"}, "resolution"),
    ("resolution-3d", {**T2I, "resolution": "64x64x64"}, "resolution"),
    ("resolution-odd", {**T2I, "resolution": "250x64"}, "resolution"),
    ("resolution-number", {**T2I, "resolution": 1024}, "resolution"),
    ("variant-traversal", {**T2I, "variant": TRAVERSAL}, "variant"),
    ("variant-other-task", {**T2I, "variant": "fill-dev"}, "variant"),
    ("lora-traversal", {**T2I, "prompt": f"a fox <lora:{TRAVERSAL}:1>"}, "prompt"),
    ("lora-absolute", {**T2I, "prompt": "a fox <lora:/etc/passwd:1>"}, "prompt"),
    ("lora-unknown", {**T2I, "prompt": "a fox <lora:nope:1>"}, "prompt"),
    ("lora-weight-huge", {**T2I, "prompt": "a fox <lora:nope:1e9>"}, "prompt"),
    ("kontext-no-image", {**T2I, "task": "kontext_edit"}, "image"),
    ("kontext-image-number", {**T2I, "task": "kontext_edit", "image": 42}, "image"),
    ("kontext-not-base64", {**T2I, "task": "kontext_edit", "image": "!!!not base64!!!"}, "image"),
    ("kontext-not-an-image", {**T2I, "task": "kontext_edit", "image": NOT_AN_IMAGE}, "image"),
    ("kontext-bad-data-url", {**T2I, "task": "kontext_edit", "image": "data:image/png;base64,@@"}, "image"),
    ("kontext-bomb", {**T2I, "task": "kontext_edit", "image": BOMB}, "image"),
    ("kontext-bomb-108mp", {**T2I, "task": "kontext_edit", "image": BOMB_108MP}, "image"),
    ("redux-bomb-second", {**T2I, "task": "redux_variation", "image": NOT_AN_IMAGE, "images": [BOMB]}, "image"),
    ("redux-too-many", {**T2I, "task": "redux_variation", "images": [BOMB] * 4}, "images"),
    ("redux-strength-string", {**T2I, "task": "redux_variation", "strengths": ["a"]}, "strengths"),
    ("fill-mask-bomb", {**T2I, "task": "fill", "image": BOMB, "mask": BOMB}, "image"),
    ("fill-outpaint-negative", {**T2I, "task": "fill", "image": GOOD, "left": -10}, "left"),
    ("control-mode-traversal", {**T2I, "task": "control", "mode": TRAVERSAL}, "mode"),
    ("control-map-not-image", {**T2I, "task": "control", "control_image": NOT_AN_IMAGE}, "control_image"),
    ("vqa-no-question", {"task": "vqa", "image": NOT_AN_IMAGE}, "image"),
    ("vqa-tokens-negative", {"task": "vqa", "image": GOOD, "prompt": "what?", "max_new_tokens": -1}, "max_new_tokens"),
]


@pytest.fixture(scope="module")
def rest(tiny_dir, tmp_path_factory) -> TestClient:
    settings = Settings(tiny=True, tiny_dir=tiny_dir, model_root=tiny_dir, outputs_dir=tmp_path_factory.mktemp("o"))
    app = FastAPI()
    api.install(app, Registry(settings))
    return TestClient(app)


@pytest.mark.parametrize(("body", "field"), [c[1:] for c in REST_CASES], ids=[c[0] for c in REST_CASES])
def test_rest_bad_input_names_the_field(rest, body, field):
    if isinstance(body, str):
        r = rest.post("/generate", content=body, headers={"Content-Type": "application/json"})
    else:
        r = rest.post("/generate", json=body)
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    message = r.json()["error"]
    assert message.startswith(f"{field}") or f"{field}:" in message, message
    assert len(r.content) < 20_000  # the error does not echo a megabyte upload back


def test_rest_oversized_upload_is_refused_before_it_is_read(rest):
    limit = int(Settings().max_body_mb * 1_000_000)
    r = rest.post("/generate", content=b"x" * (limit + 1), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"].startswith("body:")


def test_rest_keeps_serving_after_bad_input(rest):
    assert rest.get("/health").json()["status"] == "healthy"
    assert rest.post("/generate", json=T2I).status_code == 200


# Gradio endpoints: (id, api_name, keyword arguments, field the error must name). Files are named by key
# (bad_images: text, small, bomb, bomb_108mp) and sent as uploads.
T2I_ARGS = {"prompt": "a fox", "width": 64, "height": 64, "steps": 1, "seed": 1}
GRADIO_CASES = [
    ("t2i-steps-string", "/text_to_image", {**T2I_ARGS, "steps": "abc"}, "steps"),
    ("t2i-width-negative", "/text_to_image", {**T2I_ARGS, "width": -64}, "width"),
    ("t2i-height-huge", "/text_to_image", {**T2I_ARGS, "height": 10**9}, "height"),
    ("t2i-seed-huge", "/text_to_image", {**T2I_ARGS, "seed": 2**40}, "seed"),
    ("t2i-num-images-huge", "/text_to_image", {**T2I_ARGS, "num_images": 10**6}, "num_images"),
    ("t2i-guidance-huge", "/text_to_image", {**T2I_ARGS, "guidance": 1e308}, "guidance"),
    ("t2i-prompt-oversized", "/text_to_image", {**T2I_ARGS, "prompt": "x" * 50_000}, "prompt"),
    ("t2i-prompt-list", "/text_to_image", {**T2I_ARGS, "prompt": ["a", "b"]}, "prompt"),
    ("t2i-lora-traversal", "/text_to_image", {**T2I_ARGS, "prompt": f"x <lora:{TRAVERSAL}:1>"}, "prompt"),
    ("t2i-variant-traversal", "/text_to_image", {**T2I_ARGS, "variant": TRAVERSAL}, "variant"),
    ("kontext-not-an-image", "/kontext_edit", {"image": "text", "instruction": "red"}, "image"),
    ("kontext-bomb", "/kontext_edit", {"image": "bomb", "instruction": "red"}, "image"),
    ("kontext-size-huge", "/kontext_edit", {"image": "ok", "instruction": "red", "size": "99999x99999"}, "size"),
    ("kontext-steps-negative", "/kontext_edit", {"image": "ok", "instruction": "red", "steps": -1}, "steps"),
    ("kontext-instruction-oversized", "/kontext_edit", {"image": "ok", "instruction": "x" * 50_000}, "instruction"),
    ("redux-bomb", "/redux_variation", {"image_1": "bomb_108mp"}, "image_1"),
    ("redux-strength-negative", "/redux_variation", {"image_1": "ok", "strength_1": -5}, "strength_1"),
    ("redux-width-string", "/redux_variation", {"image_1": "ok", "width": "wide"}, "width"),
    ("fill-not-an-image", "/fill", {"image": "text", "prompt": "a door"}, "image"),
    ("fill-mask-bomb", "/fill", {"image": "ok", "mask": "bomb", "prompt": "a door"}, "mask"),
    ("fill-left-negative", "/fill", {"image": "ok", "prompt": "a door", "left": -10}, "left"),
    ("fill-right-huge", "/fill", {"image": "ok", "prompt": "a door", "right": 10**9}, "right"),
    ("control-bomb", "/control", {"image": "bomb", "prompt": "a robot"}, "image"),
    ("control-mode-traversal", "/control", {"image": "ok", "prompt": "a robot", "mode": TRAVERSAL}, "mode"),
    ("control-threshold-negative", "/control", {"image": "ok", "prompt": "r", "low_threshold": -1}, "low_threshold"),
    ("control-lora-scale-string", "/control", {"image": "ok", "prompt": "r", "lora_scale": "x"}, "lora_scale"),
    ("control-map-not-an-image", "/control_map", {"image": "text"}, "image"),
    ("vqa-bomb", "/vqa", {"image": "bomb", "question": "what?"}, "image"),
    ("vqa-question-oversized", "/vqa", {"image": "ok", "question": "x" * 50_000}, "question"),
    ("vqa-tokens-negative", "/vqa", {"image": "ok", "question": "what?", "max_new_tokens": -1}, "max_new_tokens"),
    # A Chatbot's value is checked against its data model before Gradio's own check, which named no parameter.
    ("vqa-history-garbage", "/vqa", {"image": "ok", "question": "what?", "history": "garbage"}, "history: is not"),
    ("describe-not-an-image", "/describe_as_prompt", {"image": "text"}, "image"),
    ("suggest-bomb", "/suggest_edit", {"image": "bomb"}, "image"),
    ("load-parameters-bomb", "/load_parameters", {"file": "bomb"}, "image"),
    ("load-parameters-not-an-image", "/load_parameters", {"file": "text"}, "image"),
]
FILE_ARGS = {"image", "image_1", "mask", "file", "control_image"}


@pytest.fixture(scope="module")
def client(app_server):
    return Client(app_server[0], verbose=False)


@pytest.fixture(scope="module")
def files(bad_images, tmp_path_factory) -> dict:
    from PIL import Image

    ok = tmp_path_factory.mktemp("ok") / "ok.png"
    Image.new("RGB", (96, 64), "gray").save(ok)
    return {**bad_images, "ok": ok}


@pytest.mark.parametrize(
    ("api_name", "kwargs", "field"), [c[1:] for c in GRADIO_CASES], ids=[c[0] for c in GRADIO_CASES]
)
def test_gradio_bad_input_names_the_field(client, files, api_name, kwargs, field):
    args = {k: handle_file(str(files[v])) if k in FILE_ARGS else v for k, v in kwargs.items()}
    with pytest.raises(AppError) as err:
        client.predict(**args, api_name=api_name)
    expected = field if " " in field else f"{field}:"
    assert expected in str(err.value), str(err.value)[:300]


def test_gradio_keeps_serving_after_bad_input(client):
    gallery, seed, _ = client.predict(**{**T2I_ARGS, "seed": 77}, api_name="/text_to_image")
    assert seed == 77 and len(gallery) == 1


def test_case_count():
    """The number reported for issue 8: bad-input cases tried (REST + Gradio + the oversized body)."""
    assert len(REST_CASES) + len(GRADIO_CASES) + 1 >= 80
