"""The Train tab's API from a client, as the browser uses it: captions by the VQA model, a short run, the
LoRA in the library and usable in a prompt at once; a bad field refused at once; cancel, then resume."""

from __future__ import annotations

import json
import time

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image, ImageDraw

from tests.conftest import running_app


@pytest.fixture(scope="module")
def app(tiny_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("train-app")
    # One thread per torch op in the app: the tiny models' matrices are too small to share, and on a busy
    # 2-core machine two threads made a training step 50 times slower.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        args = ("--lora-dir", str(work / "loras"), "--train-dir", str(work / "datasets"))
        with running_app(tiny_dir, work, *args) as (url, _):
            yield Client(url, verbose=False), work


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("train-images")
    paths = []
    for i in range(4):
        img = Image.new("RGB", (256, 256 + 32 * i), (200, 50, 40))
        ImageDraw.Draw(img).rectangle((60, 60, 180, 180), fill=(40, 40, 200))
        paths.append(str(folder / f"{i}.png"))
        img.save(paths[-1])
    return paths


def train(client, images, name, **kw):
    args = {
        "images": [handle_file(p) for p in images],
        "captions": "",
        "trigger": "ohwx",
        "name": name,
        "preset": "80+ GB",
        "steps": 3,
        "learning_rate": 1e-3,
        "rank": 4,
        "resolution": 64,
        "sample_prompts": "a photo",
        "sample_every": 0,
        "checkpoint_every": 0,
        "seed": 1,
        **kw,
    }
    return client.predict(**args, api_name="/train_lora")


def test_caption_train_and_use(app, images):
    client, work = app
    captions = client.predict([handle_file(p) for p in images], "Describe it.", api_name="/caption_images")
    assert len(captions.split("\n")) == 4 and all(line.strip() for line in captions.split("\n"))
    # The tiny VQA model writes random words, often past CLIP's 77 tokens: the run uses the trigger word alone.
    status, plot, samples, result = train(client, images, "client-lora")
    assert "client-lora" in result and (work / "loras" / "client-lora.safetensors").is_file()
    assert len(plot["data"]) == 3 and len(samples) == 1
    names = [entry["name"] for entry in client.predict(api_name="/loras")]
    assert "client-lora" in names
    gallery, _, info = client.predict(
        "ohwx <lora:client-lora:1>", "dev", 64, 64, 2, 3.5, 1, 1, api_name="/text_to_image"
    )
    assert gallery


def test_train_from_a_server_folder_with_caption_files(app, images):
    client, work = app
    folder = work / "datasets" / "discs"
    folder.mkdir(parents=True)
    for i, path in enumerate(images):
        Image.open(path).save(folder / f"{i:02d}.png")
        (folder / f"{i:02d}.txt").write_text(f"a red square, view {i}")
    status, plot, samples, result = train(client, [], "folder-lora", folder="discs", sample_prompts="")
    assert "folder-lora" in result and len(plot["data"]) == 3
    run = json.loads((work / "outputs" / "training" / "folder-lora" / "run.json").read_text())
    assert run["captions"][2] == "a red square, view 2" and run["source_folder"] == str(folder.resolve())
    with pytest.raises(AppError, match="folder: '/etc' is outside the folders training may read"):
        train(client, [], "outside", folder="/etc")
    with pytest.raises(AppError, match="folder: has caption files"):
        client.predict([], "Describe it.", "discs", api_name="/caption_images")


def test_a_bad_field_is_refused_at_once(app, images):
    client, _ = app
    with pytest.raises(AppError, match="images: has 2; upload at least 4"):
        train(client, images[:2], "too-few")
    with pytest.raises(AppError, match="name: '../x' is not allowed"):
        train(client, images, "../x")


def test_resume_continues_a_cancelled_run(app, images):
    client, work = app
    job = client.submit(
        **{
            "images": [handle_file(p) for p in images],
            "captions": "",
            "trigger": "ohwx",
            "name": "paused",
            "preset": "80+ GB",
            "steps": 200,
            "learning_rate": 1e-3,
            "rank": 4,
            "resolution": 64,
            "sample_prompts": "",
            "sample_every": 0,
            "checkpoint_every": 0,
            "seed": 1,
        },
        api_name="/train_lora",
    )
    deadline = time.monotonic() + 120
    while not (work / "outputs" / "training" / "paused" / "run.json").is_file():
        assert time.monotonic() < deadline
        time.sleep(0.2)
    job.cancel()
    time.sleep(1)
    with pytest.raises(AppError, match="press Resume"):
        train(client, images, "paused")
    status, plot, _, result = client.predict("paused", 200, api_name="/resume_training")
    assert "paused" in result and len(plot["data"]) == 200
