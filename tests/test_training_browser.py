"""A real browser on the Train tab: upload images, caption them with the VQA model, train a few steps, and
find the new LoRA in the Text to image tab's picker."""

from __future__ import annotations

import pytest
from conftest import open_tab
from PIL import Image, ImageDraw

from tests.conftest import running_app


@pytest.fixture(scope="module")
def train_page(browser, tiny_dir, tmp_path_factory):
    """A page of its own on an app of its own (the LoRA it trains goes to that app's LoRA folder)."""
    work = tmp_path_factory.mktemp("train-browser")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")  # see test_training_app
        with running_app(tiny_dir, work, "--lora-dir", str(work / "loras")) as (url, _):
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(url)
            page.wait_for_selector("#prompt textarea", timeout=60_000)
            yield page, work
            page.close()


def fill(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    box.fill(value)
    box.press("Tab")


def test_upload_caption_train_and_pick(train_page, tmp_path):
    page, work = train_page
    files = []
    for i in range(4):
        img = Image.new("RGB", (256 + 16 * i, 256), (30, 160, 60))
        ImageDraw.Draw(img).ellipse((50, 50, 200, 200), fill=(240, 240, 40))
        files.append(str(tmp_path / f"{i}.png"))
        img.save(files[-1])
    open_tab(page, "Train a LoRA")
    page.locator("#train-images input[type=file]").set_input_files(files)
    page.get_by_text("Caption with the VQA model").click()
    page.locator("#train-caption").click()
    page.wait_for_function(
        "() => document.querySelector('#train-captions textarea').value.trim().split('\\n').length === 4",
        timeout=120_000,
    )
    fill(page, "train-captions", "")  # the tiny VQA model's random words may pass CLIP's 77 tokens
    fill(page, "train-trigger", "ohwx")
    fill(page, "train-name", "browser-lora")
    preset = page.locator("#train-preset input")
    preset.click()
    page.get_by_role("option", name="80+ GB").click()
    fill(page, "train-steps", "3")
    fill(page, "train-resolution", "64")
    page.get_by_text("Samples, checkpoints and compile").click()
    fill(page, "train-samples", "a photo")
    page.locator("#train-start").click()
    page.locator("#train-result").get_by_text("browser-lora").first.wait_for(timeout=180_000)
    assert (work / "loras" / "browser-lora.safetensors").is_file()
    assert page.locator("#train-samples-gallery img").count() >= 1
    open_tab(page, "Text to image")
    page.locator("#loras input").click()
    page.get_by_role("option", name="browser-lora").first.wait_for(timeout=10_000)
