"""Faults: out of memory inside a generation, cancelling mid-run, a model that fails to load, a disk that
refuses the output. Each fails (or degrades) that one job with a clear message; the next job succeeds."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest
import torch
import uvicorn
from conftest import free_port
from fastapi import FastAPI
from fastapi.testclient import TestClient
from gradio_client import Client
from gradio_client.exceptions import AppError

from flux_ui.models.registry import Registry
from flux_ui.serving import rest as api
from flux_ui.serving.server import Login, build_app

JOB = {"task": "text_to_image", "prompt": "a fox", "resolution": "64x64", "steps": 2, "seed": 5}


def rest(registry: Registry) -> TestClient:
    app = FastAPI()
    api.install(app, registry)
    return TestClient(app)


def oom_in_the_transformer(registry: Registry, variant: str = "dev", times: int = 1):
    """Make the real transformer raise CUDA's out-of-memory error on its next `times` forward passes, from
    inside the pipeline's denoising loop, as a too-large job would on a GPU."""
    left = {"n": times}

    def hook(module, args, kwargs):
        if left["n"] > 0:
            left["n"] -= 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    return registry.transformer(variant).register_forward_pre_hook(hook, with_kwargs=True)


def test_out_of_memory_over_rest_frees_memory_and_the_next_job_runs(registry, settings):
    client = rest(registry)
    vqa = {"task": "vqa", "image": _png_b64(), "prompt": "what?", "max_new_tokens": 2}
    assert client.post("/generate", json=vqa).status_code == 200
    assert registry.status()["aux"], "the VQA model should be loaded"
    handle = oom_in_the_transformer(registry)
    try:
        r = client.post("/generate", json=JOB)
    finally:
        handle.remove()
    assert r.status_code == 503 and "Out of GPU memory" in r.json()["error"]
    assert registry.status()["aux"] == {}  # auxiliary models were dropped to make room
    assert client.post("/generate", json=JOB).status_code == 200


@pytest.fixture(scope="module")
def live(tiny_dir, tmp_path_factory):
    """The whole app served by uvicorn in this process (so a test can reach into its registry); yields
    (url, registry). Its outputs folder sits below a regular file, so every save fails as a full disk does."""
    blocker = tmp_path_factory.mktemp("disk") / "a-file"
    blocker.write_text("not a folder")
    from flux_ui.core.settings import Settings

    settings = Settings(tiny=True, tiny_dir=tiny_dir, model_root=tiny_dir, outputs_dir=blocker / "outputs")
    registry = Registry(replace(settings, port=free_port(), preview_every=0))
    app = build_app(registry, Login(None))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=registry.settings.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{registry.settings.port}/", registry
    server.should_exit = server.force_exit = True  # clients' open event streams would hold it otherwise
    thread.join(10)


def test_out_of_memory_in_the_ui_is_explained_and_the_next_job_runs(live):
    url, registry = live
    client = Client(url, verbose=False)
    args = {"prompt": "a fox", "width": 64, "height": 64, "steps": 2, "seed": 9, "api_name": "/text_to_image"}
    client.predict(**args)  # loads the transformer
    handle = oom_in_the_transformer(registry)
    try:
        with pytest.raises(AppError, match="Out of GPU memory"):
            client.predict(**args)
    finally:
        handle.remove()
    gallery, seed, _ = client.predict(**args)
    assert seed == 9 and len(gallery) == 1


def test_full_disk_still_returns_the_image_and_says_so(live):
    url, registry = live
    gallery, _, info = Client(url, verbose=False).predict(
        prompt="unsaved", width=64, height=64, steps=1, seed=11, api_name="/text_to_image"
    )
    assert len(gallery) == 1 and "Not saved to disk" in info
    r = rest(registry).post("/generate", json={**JOB, "seed": 12})
    body = r.json()
    assert r.status_code == 200 and body["images"][0]["png"] and body["images"][0]["saved"] is None
    assert "was not saved" in body["warnings"][0]


def test_cancel_mid_run_frees_the_gpu_for_the_next_job(live):
    url, registry = live
    user_a, user_b = Client(url, verbose=False), Client(url, verbose=False)
    job = user_a.submit(prompt="long", width=256, height=256, steps=100, seed=1, api_name="/text_to_image")
    deadline = time.monotonic() + 60
    while job.status().code.name not in ("PROGRESS", "ITERATING") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.status().code.name in ("PROGRESS", "ITERATING"), "the job never started its steps"
    job.cancel()
    start = time.monotonic()
    gallery, seed, _ = user_b.predict(prompt="next", width=64, height=64, steps=1, seed=2, api_name="/text_to_image")
    assert seed == 2 and len(gallery) == 1
    assert time.monotonic() - start < 30
    assert not job.outputs() or job.status().code.name == "CANCELLED"  # it did not run to its end
    # The lock is free from any thread now, not only re-entrantly from the one that held it.
    got = []

    def try_lock():
        if registry._lock.acquire(timeout=5):
            got.append(True)
            registry._lock.release()

    t = threading.Thread(target=try_lock)
    t.start()
    t.join()
    assert got == [True]


def test_a_model_that_fails_to_load_leaves_the_registry_usable(registry, settings, tmp_path):
    broken = Registry(replace(settings, model_paths={"schnell": str(tmp_path / "no-such-model")}))
    client = rest(broken)
    r = client.post("/generate", json={**JOB, "variant": "schnell"})
    assert r.status_code == 503 and "schnell" in r.json()["error"].lower()
    assert client.post("/generate", json=JOB).status_code == 200


def _png_b64() -> str:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_a_rest_client_that_disconnects_cancels_its_job(live):
    """A 100-step 512 px job (about 30 s here) is dropped by its client after a second; the next
    request runs at once instead of waiting for it."""
    import json
    import socket
    import urllib.request

    url, registry = live
    port = registry.settings.port
    body = json.dumps({**JOB, "resolution": "512x512", "steps": 100}).encode()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        head = "POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        head += f"Content-Length: {len(body)}\r\n\r\n"
        sock.sendall(head.encode() + body)
        time.sleep(1.5)  # the job is denoising
    start = time.monotonic()
    request = urllib.request.Request(
        url + "generate", json.dumps({**JOB, "seed": 6}).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as r:
        assert json.loads(r.read())["seed"] == 6
    assert time.monotonic() - start < 10, "the abandoned job was not cancelled"
