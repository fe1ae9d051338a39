"""Shared fixtures: tiny random-weight models (and LoRAs) written once per test session, a registry over
them, and a running `app.py --tiny --lora-dir ...` server for end-to-end and browser tests."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image

from flux_ui.core.settings import Settings
from flux_ui.models.registry import Registry
from flux_ui.tiny.loras import (
    TINY_LORA_SUBDIR,
    bfl_control_state,
    kohya_state,
    save,
    sd15_state,
    wide_state,
    write_tiny_loras,
)
from flux_ui.tiny.models import ensure_tiny_models

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """Tiny models in hub layout; FLUX_UI_TEST_TINY_DIR reuses a folder across runs."""
    folder = Path(os.environ.get("FLUX_UI_TEST_TINY_DIR") or tmp_path_factory.mktemp("tiny"))
    return ensure_tiny_models(folder)


@pytest.fixture(scope="session")
def tiny_lora_dir(tiny_dir) -> Path:
    """One tiny LoRA per file layout, where `app.py --tiny` finds them."""
    return write_tiny_loras(tiny_dir / TINY_LORA_SUBDIR)


@pytest.fixture(scope="session")
def lora_dir(tmp_path_factory) -> Path:
    """A LoRA folder of files that must be refused or fit only some variants, and a pickle."""
    import torch

    folder = tmp_path_factory.mktemp("loras")
    save(folder / "guided.safetensors", kohya_state(7, guidance=True))  # fits [dev] and Krea, not [schnell]
    save(folder / "misfit/wide.safetensors", wide_state(8))  # FLUX layer names, wrong shapes
    save(folder / "misfit/control.safetensors", bfl_control_state(9))  # a Control LoRA
    save(folder / "misfit/sd15.safetensors", sd15_state(10))  # not a FLUX LoRA at all
    torch.save(kohya_state(11), folder / "old-style.ckpt")  # a pickle
    return folder


@pytest.fixture
def settings(tiny_dir, tmp_path) -> Settings:
    return Settings(
        tiny=True, tiny_dir=tiny_dir, model_root=tiny_dir, outputs_dir=tmp_path / "outputs", preview_every=1
    )


@pytest.fixture
def registry(settings) -> Registry:
    return Registry(settings)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"app did not answer at {url} within {timeout} s:\n{log.read_text()[-4000:]}")


@contextmanager
def running_app(
    tiny_dir: Path,
    work: Path,
    *args: str,
    launcher: tuple[str, ...] = (sys.executable,),
    timeout: float = 120.0,
    tiny: bool = True,
    env: dict[str, str | None] | None = None,
) -> Iterator[tuple[str, Path]]:
    """`python app.py --tiny ARGS` on a free port, as a user would start it, in `work` (its outputs in
    work/outputs, its log in work/app.log); yields (url, log) once it answers, and stops it after.
    `launcher` is what runs app.py (torchrun, for --context-parallel); without `tiny`, the app starts as on a
    machine with real weights (or none); `env` adds to (or, with None values, removes from) the environment."""
    port = free_port()
    log = work / "app.log"
    full = {**os.environ, "FLUX_UI_TINY_DIR": str(tiny_dir), "FLUX_UI_OUTPUTS_DIR": str(work / "outputs")}
    full.pop("FLUX_UI_TINY", None)
    for key, value in (env or {}).items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [*launcher, str(ROOT / "app.py"), *(["--tiny"] if tiny else []), "--port", str(port), *args],
            cwd=work,
            env=full,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_server(url, proc, log, timeout)
        yield url, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def app_server(tiny_dir, tiny_lora_dir, lora_dir, tmp_path_factory):
    """`python app.py --tiny --lora-dir ...`; yields (url, outputs_dir).

    Its LoRAs: those of `lora_dir`, then the tiny ones tiny mode adds."""
    work = tmp_path_factory.mktemp("app")
    with running_app(tiny_dir, work, "--preview-every", "1", "--lora-dir", str(lora_dir)) as (url, _):
        yield url, work / "outputs"


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG of width x height 1-bit pixels, all zero: a few KB that inflate to gigapixels. Written
    row by row, so making it costs no more memory than one row."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="session")
def bad_images(tmp_path_factory) -> dict[str, Path]:
    """Files every image input must refuse: name -> path."""
    folder = tmp_path_factory.mktemp("bad-images")
    files = {
        "text": folder / "notes.png",  # a .png that is not an image
        "small": folder / "small.png",  # 63 px wide
        "huge": folder / "huge.png",  # 20.5 megapixels
        "bomb": folder / "bomb.png",  # 400 megapixels in a few KB: over PIL's own bomb limit
        "bomb_108mp": folder / "bomb-108mp.png",  # over ours, under PIL's (which only warns)
    }
    files["text"].write_text("not a picture")
    Image.new("RGB", (63, 200)).save(files["small"])
    Image.new("L", (5000, 4100)).save(files["huge"])
    files["bomb"].write_bytes(bomb_png(20_000, 20_000))
    files["bomb_108mp"].write_bytes(bomb_png(12_000, 9_000))
    return files


CHROMIUM = os.environ.get("FLUX_UI_CHROMIUM", "/usr/bin/chromium")
# Headless Chromium as root, with nothing that reaches out to the network by itself.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


@pytest.fixture(scope="session")
def browser():
    """One Debian Chromium for the whole session, driven by Playwright (which downloads no browser)."""
    if not shutil.which(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def page(browser, app_server):
    """A page of its own per test module on the running app, once the text-to-image tab is ready."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(app_server[0])
    page.wait_for_selector("#prompt textarea", timeout=60_000)
    yield page
    page.close()


def set_number(page, elem_id: str, value: int) -> None:
    """Type into a slider's number box, as a user would."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def open_tab(page, name: str) -> None:
    """Click the tab `name`, as a user does: from the tab bar, or from its "More tabs" menu where the bar
    folds the tabs that do not fit (at 400 px, and at 1400 px for the last of the many tabs)."""
    tab = page.get_by_role("tab", name=name, exact=True)
    if tab.count() and tab.first.is_visible():
        tab.first.click()
        return
    page.get_by_role("button", name="More tabs").click()
    page.locator(".overflow-dropdown button", has_text=name).first.click()


def paint_a_stroke(page, elem_id: str, picture: str) -> None:
    """Upload `picture` into the mask editor `elem_id` and paint one stroke across its middle, as a user does."""
    editor = page.locator(f"#{elem_id}")
    # The editor ignores uploads until its drawing canvas is laid out.
    page.wait_for_function(f"() => document.querySelector('#{elem_id} canvas')?.width > 0")
    editor.locator("input[type=file]").first.set_input_files(picture)
    editor.get_by_role("button", name="Color").wait_for(timeout=30_000)  # shown once the picture is in
    canvas = editor.locator("canvas").first.bounding_box()
    x, y = canvas["x"] + canvas["width"] / 2, canvas["y"] + canvas["height"] / 2
    page.mouse.move(x - 50, y - 20)  # the brush is the active tool after an upload: one stroke
    page.mouse.down()
    for i in range(1, 11):
        page.mouse.move(x - 50 + 10 * i, y - 20 + 4 * i)
    page.mouse.up()
