"""A real browser (Debian's Chromium, driven by Playwright) on image to image and Upscale: a text-to-image
result handed on with the gallery's buttons, redrawn, then upscaled with its own prompt brought along."""

from __future__ import annotations

from conftest import open_tab, set_number

SLOW = 120_000  # ms: generous, the CPU is shared


def wait_text(page, elem_id: str, text: str) -> None:
    page.wait_for_function(
        "([id, text]) => document.querySelector('#' + id)?.innerText.includes(text)", arg=[elem_id, text], timeout=SLOW
    )


def make_image(page, seed: int) -> None:
    open_tab(page, "Text to image")
    page.locator("#prompt textarea").fill("a quiet harbour at noon")
    set_number(page, "width", 128)
    set_number(page, "height", 96)
    set_number(page, "steps", 1)
    page.locator("#seed input").fill(str(seed))
    page.locator("#generate").click()
    wait_text(page, "info", f"Seed {seed}")


def test_image_to_image_from_a_text_to_image_result(page, app_server):
    make_image(page, 7101)
    page.locator("#send-t2i-to-i2i").click()
    page.locator("#i2i-image img").wait_for(state="visible", timeout=SLOW)
    page.locator("#i2i-prompt textarea").fill("the same harbour at night")
    set_number(page, "i2i-strength", 0.5)
    set_number(page, "i2i-steps", 2)
    page.locator("#i2i-seed input").fill("7102")
    page.locator("#i2i-generate").click()
    wait_text(page, "i2i-info", "strength 0.5")
    assert "Output 128×96 from the 128x96 input" in page.locator("#i2i-info").inner_text()
    page.locator("#i2i-gallery img").first.wait_for(state="visible", timeout=SLOW)
    assert list(app_server[1].rglob("*-7102.png"))


def test_upscale_a_result_with_its_own_prompt(page, app_server):
    make_image(page, 7201)
    page.locator("#send-t2i-to-upscale").click()
    page.locator("#upscale-image img").wait_for(state="visible", timeout=SLOW)
    # The hand-off brings the picture's prompt; the note says the size before anything runs.
    page.wait_for_function(
        "() => document.querySelector('#upscale-prompt textarea').value === 'a quiet harbour at noon'", timeout=SLOW
    )
    wait_text(page, "upscale-size-note", "Output 256×192 from the 128×96 input")
    set_number(page, "upscale-scale", 1.5)
    wait_text(page, "upscale-size-note", "Output 192×144")
    page.locator("#upscale-upscaler input").click()
    page.get_by_role("option", name="4x-tiny-ESRGAN").click()
    set_number(page, "upscale-steps", 2)
    page.locator("#upscale-seed input").fill("7202")
    page.locator("#upscale-run").click()
    wait_text(page, "upscale-info", "Output 192×144 from the 128x96 input")
    info = page.locator("#upscale-info").inner_text()
    assert "4x-tiny-ESRGAN" in info and "strength 0.3" in info
    page.locator("#upscale-gallery img").first.wait_for(state="visible", timeout=SLOW)
    assert list(app_server[1].rglob("*-7202.png"))
    # A refine pass without a prompt is refused with the field named; strength 0 upscales without one.
    page.locator("#upscale-prompt textarea").fill("")
    page.locator("#upscale-run").click()
    page.get_by_text("prompt: is empty").first.wait_for(timeout=SLOW)
    set_number(page, "upscale-strength", 0)
    page.locator("#upscale-seed input").fill("7203")
    page.locator("#upscale-run").click()
    wait_text(page, "upscale-info", "no refine pass")
