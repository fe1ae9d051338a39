"""A real browser (Debian's Chromium, driven by Playwright) through the FLUX.2 tabs: text to image with
FLUX.2 [klein] 4B, FLUX.2 edit with two references, FLUX.2 inpaint with a painted mask; each makes an image
of the size asked for, and the page's screenshot is the viewport's."""

from __future__ import annotations

import pytest
from conftest import open_tab, paint_a_stroke, set_number
from PIL import Image, ImageDraw

from flux_ui.media.metadata import parse_parameters, read_parameters

SLOW = 180_000  # ms: generous, the CPU is shared
VIEWPORT = (1400, 1000)  # the `page` fixture's


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("flux2-browser")
    out = []
    for n, colour in enumerate(("orange", "teal")):
        img = Image.effect_noise((128, 96), 60).convert("RGB")
        ImageDraw.Draw(img).ellipse((30 + 10 * n, 20, 100, 80), fill=colour)
        img.save(folder / f"ref{n}.png")
        out.append(str(folder / f"ref{n}.png"))
    return out


def wait_text(page, elem_id: str, text: str) -> str:
    page.wait_for_function(
        "([id, text]) => document.getElementById(id)?.innerText.includes(text)", arg=[elem_id, text], timeout=SLOW
    )
    return page.locator(f"#{elem_id}").inner_text()


def saved(outputs, seed: int) -> tuple[tuple[int, int], dict[str, str]]:
    """The size and parameters of the image saved with `seed`."""
    (path,) = outputs.rglob(f"*-{seed}.png")
    with Image.open(path) as img:
        return img.size, parse_parameters(read_parameters(img))


def check_screenshot(page, tmp_path, name: str) -> None:
    shot = tmp_path / f"{name}.png"
    page.screenshot(path=str(shot))
    with Image.open(shot) as img:
        assert img.size == VIEWPORT
        assert len(img.getcolors(1 << 16) or range(1 << 16)) > 16  # a rendered page, not a blank one


def test_text_to_image_with_flux2_klein(page, app_server, tmp_path):
    page.locator("#prompt textarea").fill("a lighthouse at dusk")
    page.locator("#variant input").click()
    page.get_by_role("option", name="FLUX.2 [klein] 4B", exact=True).click()
    set_number(page, "width", 128)
    set_number(page, "height", 96)
    set_number(page, "steps", 2)
    page.locator("#seed input").fill("8101")
    page.locator("#generate").click()
    wait_text(page, "info", "Seed 8101")
    page.locator("#gallery img").first.wait_for(state="visible", timeout=SLOW)
    size, params = saved(app_server[1], 8101)
    assert size == (128, 96) and params["Variant"] == "flux2-klein-4b"
    check_screenshot(page, tmp_path, "t2i")


def test_flux2_edit_with_two_references(page, app_server, pictures, tmp_path):
    open_tab(page, "FLUX.2 edit")
    for n, picture in enumerate(pictures, start=1):
        page.locator(f"#flux2-image-{n} input[type=file]").set_input_files(picture)
        page.locator(f"#flux2-image-{n} img").first.wait_for(state="visible", timeout=SLOW)
    page.locator("#flux2-instruction textarea").fill("the ball of image 2 on the table of image 1")
    set_number(page, "flux2-steps", 2)
    page.locator("#flux2-seed input").fill("8102")
    page.locator("#flux2-edit").click()
    wait_text(page, "flux2-info", "Seed 8102")
    page.locator("#flux2-gallery img").first.wait_for(state="visible", timeout=SLOW)
    size, params = saved(app_server[1], 8102)
    assert size[0] % 16 == 0 and size[1] % 16 == 0 and min(size) >= 64
    assert params["Variant"] == "flux2-klein-4b" and params["References"] == "2"
    assert params["Reference sizes"] == "128x96, 128x96"
    check_screenshot(page, tmp_path, "edit")


def test_flux2_inpaint_a_painted_mask(page, app_server, pictures, tmp_path):
    open_tab(page, "FLUX.2 inpaint")
    paint_a_stroke(page, "flux2-inpaint-editor", pictures[0])
    page.locator("#flux2-inpaint-prompt textarea").fill("a wooden door")
    set_number(page, "flux2-inpaint-steps", 2)
    page.locator("#flux2-inpaint-seed input").fill("8103")
    page.locator("#flux2-inpaint-run").click()
    wait_text(page, "flux2-inpaint-info", "Seed 8103")
    page.locator("#flux2-inpaint-gallery img").first.wait_for(state="visible", timeout=SLOW)
    size, params = saved(app_server[1], 8103)
    assert size == (128, 96) and params["Variant"] == "flux2-klein-4b"
    check_screenshot(page, tmp_path, "inpaint")
