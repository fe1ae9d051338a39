"""A real browser (Debian's Chromium, driven by Playwright) on the small things of daily use: Reuse last
before any run, a clamped slider value said out loud, Ctrl+Enter, the VQA question box, error pills that
go away; and screenshots of every tab at 1400 and 400 px wide (written to a temporary folder, not kept)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from conftest import open_tab, set_number
from PIL import Image

SLOW = 120_000  # ms: generous, the CPU is shared
TABS = (
    "Text to image",
    "Image to image",
    "Upscale",
    "Kontext edit",
    "Redux variation",
    "Ask about an image",
    "Fill",
    "Control",
)


def wait_text(page, elem_id: str, text: str) -> None:
    page.wait_for_function(
        "([id, text]) => document.querySelector('#' + id)?.innerText.includes(text)", arg=[elem_id, text], timeout=SLOW
    )


def test_reuse_last_before_any_run_leaves_the_seed(page):
    page.locator("#seed input").fill("77")
    page.get_by_role("button", name="Reuse last").click()
    page.get_by_text("No image made yet in this session").first.wait_for(timeout=30_000)
    assert page.locator("#seed input").input_value() == "77"
    assert "4294967295" in page.locator("#seed").inner_text()


def test_a_clamped_slider_value_is_said(page):
    set_number(page, "steps", 500)
    page.locator("#steps .clamp-note").get_by_text("500 is over the limit; set to 100").wait_for(timeout=30_000)
    set_number(page, "width", -5)
    page.locator("#width .clamp-note").get_by_text("-5 is under the limit; set to 64").wait_for(timeout=30_000)
    set_number(page, "width", 128)
    page.locator("#width .clamp-note").wait_for(state="detached", timeout=30_000)
    set_number(page, "steps", 1)


def test_ctrl_enter_runs_the_tab_and_error_pills_go_after_a_good_run(page, tmp_path):
    # A PNG without parameters: Load parameters refuses it.
    plain = tmp_path / "plain.png"
    Image.new("RGB", (64, 64), (10, 20, 30)).save(plain)
    page.get_by_text("Load parameters from image").click()
    page.locator("#params-file input[type=file]").set_input_files(str(plain))
    page.get_by_text("it carries no generation parameters").first.wait_for(timeout=30_000)

    page.wait_for_function("() => document.querySelector('#generate').title.includes('Ctrl+Enter')", timeout=30_000)
    page.locator("#prompt textarea").fill("a green pear")
    set_number(page, "width", 128)
    set_number(page, "height", 128)
    set_number(page, "steps", 1)
    page.locator("#seed input").fill("606")
    page.locator("#prompt textarea").press("Control+Enter")
    wait_text(page, "info", "Seed 606")
    errors = page.evaluate(
        """() => [...document.querySelectorAll('.block .error')]
            .filter(e => e.offsetParent !== null && e.innerText.trim() === 'Error')
            .map(e => e.closest('.block').id || e.closest('.block').className)"""
    )
    assert errors == [], f"red Error pills still shown after a good run: {errors}"


@pytest.fixture(scope="module")
def shots() -> Path:
    folder = Path(os.environ.get("FLUX_UI_SCREENSHOTS") or tempfile.mkdtemp(prefix="flux-ui-shots-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"screenshots in {folder}")
    return folder


def test_the_vqa_question_box_empties_when_sent(page, tmp_path):
    image = tmp_path / "sign.png"
    Image.new("RGB", (200, 120), (240, 200, 40)).save(image)
    open_tab(page, "Ask about an image")
    page.locator("#vqa-image input[type=file]").set_input_files(str(image))
    page.locator("#vqa-image img").first.wait_for(state="visible", timeout=60_000)
    page.locator("#vqa-question textarea").fill("What colour is it?")
    page.locator("#vqa-ask").click()
    page.wait_for_function("() => document.querySelector('#vqa-question textarea').value === ''", timeout=30_000)
    page.locator("#vqa-chat [data-testid='user']", has_text="What colour is it?").wait_for(timeout=60_000)
    page.locator("#vqa-chat [data-testid='bot']").last.wait_for(timeout=SLOW)
    open_tab(page, "Text to image")


@pytest.mark.parametrize("width", [1400, 400])
def test_screenshots_of_every_tab(browser, app_server, shots, width):
    page = browser.new_page(viewport={"width": width, "height": 1000})
    page.goto(app_server[0])
    page.wait_for_selector("#prompt textarea", timeout=60_000)
    for name in TABS:
        tab = page.get_by_role("tab", name=name)
        if tab.count() and tab.is_visible():
            tab.click()
        else:  # at 400 px the tab bar folds the others into a "More tabs" menu
            page.get_by_role("button", name="More tabs").click()
            page.locator(".overflow-dropdown button", has_text=name).click()
        page.wait_for_timeout(500)
        slug = name.lower().replace(" ", "-")
        page.screenshot(path=str(shots / f"{width}-{slug}.png"), full_page=True)
    page.close()
    assert len(list(shots.glob(f"{width}-*.png"))) == len(TABS)
