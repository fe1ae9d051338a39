"""Downloads from the hub show their progress: a real local hub (an HTTP server answering the endpoints the hub
client calls) serves the tiny models' folders; a Registry with no model root downloads [dev] from it through
`snapshot_download`/`hf_hub_download`, the progress record sees every file, the image equals the one from
the local folders, and a second load downloads nothing. Auxiliary models and hub LoRAs come down the same
way."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from PIL import Image
from transformers.utils import hub as transformers_hub

from flux_ui.models import downloads, sources
from flux_ui.models.registry import Registry
from flux_ui.tasks.control import depth_estimator
from flux_ui.tasks.text_to_image import TextToImageParams, text_to_image, validate_text_to_image

CHUNK = 16 * 1024


class Hub:
    """The hub's download endpoints over the repo folders below `root` (org/name/...)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.repos: dict[str, Path] = {}  # more repos (org/name -> folder), beside those below root
        self.slow_s = 0.0  # sleep between chunks of a file's body
        self.gets: list[str] = []  # files whose bodies were sent
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def commit(repo: str) -> str:
        return hashlib.sha1(repo.encode()).hexdigest()

    def folder(self, repo: str) -> Path:
        return self.repos.get(repo, self.root / repo)

    def files(self, repo: str) -> list[Path]:
        folder = self.folder(repo)
        return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def reply(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
                self.send_response(status)
                for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                parts = [unquote(p) for p in urlparse(self.path).path.strip("/").split("/")]
                if parts[:2] == ["api", "models"] and len(parts) >= 6:
                    repo, kind = "/".join(parts[2:4]), parts[4]
                    files = hub.files(repo)
                    if not files:
                        return self.reply(404, b"{}", {"X-Error-Code": "RepoNotFound"})
                    names = [p.relative_to(hub.folder(repo)).as_posix() for p in files]
                    if kind == "revision":
                        info = {"id": repo, "sha": hub.commit(repo), "siblings": [{"rfilename": n} for n in names]}
                    else:  # tree/{rev}: the recursive file listing, one page
                        info = [
                            {"type": "file", "path": n, "size": p.stat().st_size, "oid": hub.commit(n)}
                            for n, p in zip(names, files, strict=True)
                        ]
                    return self.reply(200, json.dumps(info).encode(), {"Content-Type": "application/json"})
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo = "/".join(parts[:2])
                    path = hub.folder(repo).joinpath(*parts[4:])
                    if not path.is_file():
                        return self.reply(404, b"", {"X-Error-Code": "EntryNotFound"})
                    body = path.read_bytes()
                    headers = {
                        "X-Repo-Commit": hub.commit(repo),
                        "ETag": f'"{hashlib.sha256(body).hexdigest()}"',
                        "Content-Length": str(len(body)),
                    }
                    self.send_response(200)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    if self.command == "GET":
                        hub.gets.append(f"{repo}/{'/'.join(parts[4:])}")
                        for i in range(0, len(body), CHUNK):
                            self.wfile.write(body[i : i + CHUNK])
                            self.wfile.flush()
                            time.sleep(hub.slow_s)
                    return None
                return self.reply(200 if parts == [""] else 404)

        return Handler


@pytest.fixture
def hub(tiny_dir, tmp_path, monkeypatch):
    from huggingface_hub import constants

    hub = Hub(tiny_dir)
    cache = tmp_path / "hub-cache"
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", CHUNK)  # the client reports per chunk it reads (10 MB)
    monkeypatch.setattr(downloads, "progress", downloads.Downloads())
    # transformers keeps one HfApi, its endpoint read when first made: a fresh one for this hub.
    monkeypatch.setattr(transformers_hub, "_hf_api", None)
    yield hub
    hub.server.shutdown()
    hub.server.server_close()  # a client still pointed here fails at once instead of waiting


def image(registry: Registry) -> np.ndarray:
    params = TextToImageParams(prompt="a red fox", width=64, height=64, steps=2, seed=5, variant="dev")
    return np.asarray(text_to_image(registry, validate_text_to_image(params, registry.settings)).images[0].image)


def test_a_registry_without_model_root_downloads_with_progress_then_reads_the_cache(hub, settings, tiny_dir):
    hub_settings = replace(settings, tiny=False, model_root=None)
    assert sources.resolve_source(hub_settings, "dev", "black-forest-labs/FLUX.1-dev") == "black-forest-labs/FLUX.1-dev"
    registry = Registry(hub_settings)
    assert registry.downloads is downloads.progress and registry.downloads.line() == ""

    got = image(registry)

    fetched = registry.downloads.snapshot()["fetched"]
    wanted = {  # what [dev] needs from the hub: its transformer and scheduler, [schnell]'s shared parts
        f"{repo}/{p.relative_to(tiny_dir / repo).as_posix()}"
        for repo, subs in (
            ("black-forest-labs/FLUX.1-dev", ("transformer", "scheduler")),
            ("black-forest-labs/FLUX.1-schnell", ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae")),
        )
        for sub in subs
        for p in (tiny_dir / repo / sub).rglob("*")
        if p.is_file()
    }
    assert {f"{f['repo']}/{f['file']}" for f in fetched} == wanted
    assert sorted(hub.gets) == sorted(wanted)  # each file's body sent once, and only those
    assert all(f["done"] == f["total"] > 0 for f in fetched), fetched
    assert registry.status()["downloads"] == {"now": None, "fetched": fetched}
    assert registry.downloads.line() == ""  # nothing shown once done

    np.testing.assert_array_equal(got, image(Registry(settings)))  # the same weights as the local folders

    hub.gets.clear()
    again = Registry(hub_settings)
    np.testing.assert_array_equal(image(again), got)
    assert hub.gets == [] and again.downloads.snapshot()["fetched"] == fetched  # nothing downloaded again


def test_a_slow_download_is_shown_with_file_bytes_and_rate(hub, settings):
    hub.slow_s = 0.05
    record = downloads.progress
    seen: list[str] = []
    done = threading.Event()

    def watch():
        while not done.is_set():
            if line := record.line():
                seen.append(line)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        sources.load(
            "FLUX.1 [dev] transformer",
            "black-forest-labs/FLUX.1-dev",
            "--model dev=FOLDER",
            lambda: None,
            "transformer",
        )
    finally:
        done.set()
        watcher.join()
    weights = [s for s in seen if "diffusion_pytorch_model.safetensors" in s]
    assert weights, seen
    assert weights[-1].startswith(
        "**Downloading** FLUX.1 [dev] transformer from black-forest-labs/FLUX.1-dev: "
        "diffusion_pytorch_model.safetensors "
    )  # the file's name within the part's folder
    assert " kB/s (file " in weights[-1] and " of 2, " in weights[-1] and " kB in all)" in weights[-1]
    sizes = [float(s.split("safetensors ")[1].split(" of ")[0]) for s in weights]
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0]  # the bytes done grow while it downloads
    assert record.line() == ""


def test_no_download_when_the_hub_is_off(hub, settings, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls = []
    sources.load(
        "FLUX.1 [dev] transformer", "black-forest-labs/FLUX.1-dev", "--x", lambda: calls.append(1), "transformer"
    )
    assert calls == [1] and hub.gets == [] and downloads.progress.snapshot()["fetched"] == []


def test_an_auxiliary_model_and_a_hub_lora_download_with_progress(hub, settings, tiny_dir, tiny_lora_dir, tmp_path):
    """The depth estimator (a transformers model, its repo read whole) and a hub LoRA's file come down
    through the same record as FLUX's parts: the line above the tabs names the model and the file while
    it downloads, and every file is recorded with its bytes done equal to its size."""
    depth_repo, lora_repo, lora_file = "LiheYoung/depth-anything-small-hf", "flux-ui-tests/tiny-fox", "fox.safetensors"
    hub.repos[lora_repo] = tmp_path / "tiny-fox"
    hub.repos[lora_repo].mkdir()
    shutil.copy(tiny_lora_dir / "kohya-fox.safetensors", hub.repos[lora_repo] / lora_file)
    (hub.repos[lora_repo] / "README.md").write_text("A tiny LoRA.\n")  # not fetched: only the LoRA's file is
    spec = f"{lora_repo}/{lora_file}"
    registry = Registry(replace(settings, tiny=False, model_root=None, hub_loras=(spec,)))
    hub.slow_s = 0.05  # 16 kB a chunk: the LoRA's file is 3 chunks, the depth model's 35
    seen: list[str] = []
    done = threading.Event()

    def watch():
        while not done.is_set():
            if line := registry.downloads.line():
                seen.append(line)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    image = Image.new("RGB", (64, 48), (200, 120, 40))
    try:
        with depth_estimator(registry) as estimator:
            got = np.asarray(estimator(image, image.size))
        lora = registry.loras.fetch(spec)
    finally:
        done.set()
        watcher.join()

    folder = tiny_dir / depth_repo
    wanted = {f"{depth_repo}/{p.relative_to(folder).as_posix()}" for p in folder.rglob("*") if p.is_file()} | {spec}
    fetched = registry.downloads.snapshot()["fetched"]
    assert {f"{f['repo']}/{f['file']}" for f in fetched} == wanted
    assert sorted(hub.gets) == sorted(wanted)  # each body sent once; the LoRA repo's README not at all
    assert all(f["done"] == f["total"] > 0 for f in fetched), fetched
    assert any(s.startswith(f"**Downloading** Depth estimator from {depth_repo}: model.safetensors ") for s in seen)
    assert any(s.startswith(f"**Downloading** LoRA {spec!r} from {lora_repo}: {lora_file} ") for s in seen), seen
    assert registry.downloads.line() == ""

    assert lora.path.read_bytes() == (tiny_lora_dir / "kohya-fox.safetensors").read_bytes()
    with depth_estimator(Registry(settings)) as local:  # the same model as the local folder's
        np.testing.assert_array_equal(got, np.asarray(local(image, image.size)))
