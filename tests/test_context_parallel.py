"""--context-parallel 2 on the CPU: `torchrun --nproc-per-node 2 app.py --tiny --context-parallel 2`, two
processes over gloo, each holding half of every transformer call's sequence (diffusers' Ulysses attention);
a REST request gives the image one process gives for the same seed, and both processes took part."""

from __future__ import annotations

import base64
import io
import sys

import numpy as np
import pytest
from conftest import free_port, running_app
from PIL import Image

from flux_ui.client import FluxUI

JOB = {"prompt": "a lighthouse at dusk", "resolution": "64x64", "steps": 3, "seed": 4321}


@pytest.fixture(scope="module")
def parallel_server(tiny_dir, tiny_lora_dir, tmp_path_factory):
    """`torchrun --nproc-per-node 2 app.py --tiny --context-parallel 2`; yields (url, its log)."""
    torchrun = (
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(free_port()),
    )
    args = ("--context-parallel", "2", "--preview-every", "0")
    with running_app(tiny_dir, tmp_path_factory.mktemp("cp"), *args, launcher=torchrun, timeout=300) as server:
        yield server


def test_two_processes_make_the_image_one_makes(parallel_server, tiny_dir, tmp_path):
    import httpx

    url, log = parallel_server
    response = httpx.post(url + "generate", json={"task": "text_to_image", **JOB}, timeout=300)
    assert response.status_code == 200, response.text
    body = response.json()
    split = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["images"][0]["png"]))).convert("RGB"), np.int16)

    alone = FluxUI(tiny=True, tiny_dir=tiny_dir, outputs_dir=tmp_path, preview_every=0)
    whole = np.asarray(alone.generate(**JOB).image, np.int16)
    assert body["seed"] == JOB["seed"] and split.shape == whole.shape == (64, 64, 3)
    assert np.abs(split - whole).max() <= 1  # float32 sums in another order: at most one level apart
    text = log.read_text()
    for rank in (0, 1):  # each process split its transformer, and the follower ran the job
        assert f"split over 2 processes (Ulysses), process {rank}" in text
    assert "process 1 follows the lead's jobs" in text
