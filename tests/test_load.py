"""Load: many clients at once against `app.py --tiny --queue-size 4`. Every request completes or is refused
with a clear queue-full message; none is lost, and each result carries its own request's prompt and seed."""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import running_app
from gradio_client import Client
from PIL import Image

from flux_ui.media.metadata import meta_from_parameters, read_parameters

CLIENTS = 24
QUEUE_SIZE = 4


@pytest.fixture(scope="module")
def small_queue_server(tiny_dir, tmp_path_factory):
    args = ("--queue-size", str(QUEUE_SIZE), "--preview-every", "0")
    with running_app(tiny_dir, tmp_path_factory.mktemp("load"), *args) as (url, _):
        yield url


def one_ui_request(url: str, i: int) -> tuple[str, object]:
    """A separate client per request, as separate users would be; returns ("ok", meta) or ("refused", msg)."""
    prompt, seed = f"request number {i}", 1000 + i
    try:
        client = Client(url, verbose=False)
        gallery, seed_used, _ = client.predict(
            prompt=prompt, seed=seed, width=64, height=64, steps=2, api_name="/text_to_image"
        )
    except Exception as err:  # noqa: BLE001 - the test classifies every failure below
        return "refused", f"{type(err).__name__}: {err}"
    with Image.open(gallery[0]["image"]) as img:
        meta = meta_from_parameters(read_parameters(img))
    return "ok", (prompt, seed, seed_used, meta)


def test_concurrent_ui_clients(small_queue_server):
    with ThreadPoolExecutor(CLIENTS) as pool:
        outcomes = list(pool.map(lambda i: one_ui_request(small_queue_server, i), range(CLIENTS)))
    assert len(outcomes) == CLIENTS  # none lost
    done = [o for kind, o in outcomes if kind == "ok"]
    refused = [o for kind, o in outcomes if kind == "refused"]
    for prompt, seed, seed_used, meta in done:  # each got its own image, not another's
        assert (meta.prompt, meta.seed, seed_used) == (prompt, seed, seed)
    for message in refused:
        assert "queue is full" in message.lower(), message
    assert done, "no request completed"
    print(f"{len(done)} completed, {len(refused)} refused as queue full")


def one_rest_request(url: str, i: int) -> tuple[int, dict]:
    job = {"task": "text_to_image", "prompt": f"rest {i}", "seed": 2000 + i, "resolution": "64x64", "steps": 2}
    request = urllib.request.Request(
        url + "generate", json.dumps(job).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_concurrent_rest_clients(small_queue_server):
    with ThreadPoolExecutor(CLIENTS) as pool:
        outcomes = list(pool.map(lambda i: (i, *one_rest_request(small_queue_server, i)), range(CLIENTS)))
    assert len(outcomes) == CLIENTS
    codes = [code for _, code, _ in outcomes]
    assert set(codes) <= {200, 503}, codes
    assert codes.count(200) >= 1 and codes.count(503) >= 1, codes  # 24 at once against 4 places
    for i, code, body in outcomes:
        if code == 503:
            assert body["detail"].startswith("Queue full"), body
            continue
        img = Image.open(io.BytesIO(base64.b64decode(body["images"][0]["png"])))
        meta = meta_from_parameters(read_parameters(img))
        assert (meta.prompt, meta.seed) == (f"rest {i}", 2000 + i)
