"""A real browser (Debian's Chromium, driven by Playwright): paint a mask and Fill; compute a map and Control."""

from __future__ import annotations

import re

import pytest
from conftest import open_tab, paint_a_stroke, set_number
from PIL import Image, ImageDraw

from flux_ui.media.metadata import parse_parameters, read_parameters


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("browser") / "picture.png"
    img = Image.effect_noise((128, 96), 60).convert("RGB")
    ImageDraw.Draw(img).ellipse((30, 20, 100, 80), fill="orange")
    img.save(path)
    return str(path)


def wait_for_text(page, elem_id: str, text: str) -> str:
    page.wait_for_function(
        "([id, text]) => document.getElementById(id) && document.getElementById(id).innerText.includes(text)",
        arg=[elem_id, text],
        timeout=120_000,
    )
    return page.locator(f"#{elem_id}").inner_text()


def saved(outputs, seed: int) -> str:
    (path,) = outputs.rglob(f"*-{seed}.png")
    with Image.open(path) as img:
        return read_parameters(img)


def test_paint_a_mask_and_fill(page, app_server, picture):
    open_tab(page, "Fill")
    paint_a_stroke(page, "fill-editor", picture)
    page.locator("#fill-prompt textarea").fill("a red fox")
    set_number(page, "fill-steps", 2)
    page.locator("#fill-seed input").fill("6061")
    page.locator("#fill-run").click()
    info = wait_for_text(page, "fill-info", "Seed 6061")
    repainted = int(re.search(r"(\d+)% repainted", info).group(1))
    assert 3 <= repainted <= 80  # the stroke, not nothing and not everything
    assert page.locator("#fill-gallery img").count() >= 1
    _, outputs = app_server
    params = parse_parameters(saved(outputs, 6061))
    assert params["Variant"] == "fill-dev" and "Mask hash" in params and params["Size"] == "128x96"


def test_fill_without_paint_says_what_is_missing(page):
    open_tab(page, "Fill")
    page.locator("#fill-editor").get_by_role("button", name="Clear canvas").click()
    page.locator("#fill-run").click()
    page.get_by_text("image: is missing").first.wait_for(timeout=30_000)


def test_source_shows_its_map_and_control_generates(page, app_server, picture):
    open_tab(page, "Control")
    page.locator("#control-image input[type=file]").set_input_files(picture)
    page.locator("#control-map img").wait_for(state="visible", timeout=60_000)  # computed on upload
    page.locator("#control-prompt textarea").fill("a robot made of gold")
    set_number(page, "control-steps", 2)
    page.locator("#control-seed input").fill("7071")
    page.locator("#control-generate").click()
    wait_for_text(page, "control-info", "Seed 7071")
    assert page.locator("#control-gallery img").count() >= 1
    _, outputs = app_server
    params = parse_parameters(saved(outputs, 7071))
    assert (params["Variant"], params["Control"], params["Canny thresholds"]) == ("canny-dev", "canny", "50/200")


def test_an_uploaded_map_is_used_instead(page, app_server, tmp_path):
    open_tab(page, "Control")
    custom = tmp_path / "edges.png"
    img = Image.new("RGB", (128, 96), "black")
    ImageDraw.Draw(img).rectangle((20, 20, 100, 70), outline="white", width=2)
    img.save(custom)
    page.locator("#control-map").get_by_role("button", name="Remove Image").click()
    page.locator("#control-map input[type=file]").set_input_files(str(custom))
    page.locator("#control-map img").wait_for(state="visible", timeout=30_000)
    page.locator("#control-seed input").fill("7072")
    page.locator("#control-generate").click()
    wait_for_text(page, "control-info", "Seed 7072")
    _, outputs = app_server
    params = parse_parameters(saved(outputs, 7072))
    assert params["Control map"] == "uploaded" and "Canny thresholds" not in params
