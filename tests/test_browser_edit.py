"""A real browser (Debian's Chromium, driven by Playwright) through Kontext, Redux and the hand-offs between
tabs: text to image -> Kontext (edit, edit again, undo) -> Redux -> back to text to image."""

from __future__ import annotations

from conftest import set_number

SLOW = 120_000  # ms: generous, the CPU is shared


def wait_text(page, elem_id: str, text: str) -> None:
    page.wait_for_function(
        "([id, text]) => document.querySelector('#' + id)?.innerText.includes(text)", arg=[elem_id, text], timeout=SLOW
    )


def thumbnails(page, elem_id: str) -> int:
    return page.locator(f"#{elem_id} .thumbnail-item").count()


def test_generate_edit_again_undo_vary_and_return(page):
    # Text to image: a small picture to start from.
    page.locator("#prompt textarea").fill("a red chair")
    set_number(page, "width", 128)
    set_number(page, "height", 128)
    set_number(page, "steps", 1)
    page.locator("#seed input").fill("777")
    page.locator("#generate").click()
    wait_text(page, "info", "Seed 777")

    # Hand-off to Kontext: the tab opens with the picture as its input and the output size is stated.
    page.locator("#send-t2i-to-kontext").click()
    page.locator("#kontext-image img").first.wait_for(state="visible", timeout=SLOW)
    wait_text(page, "kontext-size-note", "The 128×128 input is resized to 1024×1024")
    assert thumbnails(page, "kontext-history") == 1

    # An empty instruction is refused with a message naming the field.
    page.locator("#kontext-edit").click()
    page.get_by_text("instruction: is empty").first.wait_for(timeout=30_000)

    page.locator("#instruction textarea").fill("make it blue")
    size = page.locator("#kontext-size input")
    size.fill("128x96")
    size.press("Enter")
    wait_text(page, "kontext-size-note", "Output 128×96")
    set_number(page, "kontext-steps", 1)
    page.locator("#kontext-seed input").fill("5")
    page.locator("#kontext-edit").click()
    wait_text(page, "kontext-info", "Seed 5")
    page.locator("#kontext-gallery img").first.wait_for(state="visible", timeout=SLOW)

    # Edit again: the result becomes the input and joins the chain; undo takes it back out.
    page.locator("#kontext-again").click()
    page.wait_for_function("() => document.querySelectorAll('#kontext-history .thumbnail-item').length === 2")
    wait_text(page, "kontext-size-note", "The 128×96 input is resized to 1184×880")
    page.locator("#kontext-undo").click()
    page.wait_for_function("() => document.querySelectorAll('#kontext-history .thumbnail-item').length === 1")
    wait_text(page, "kontext-size-note", "The 128×128 input")

    # Hand-off to Redux, a variation with a prompt, then back to text to image with its parameters.
    page.locator("#send-kontext-to-redux").click()
    page.locator("#redux-image-1 img").first.wait_for(state="visible", timeout=SLOW)
    page.locator("#redux-prompt textarea").fill("a small fox")
    set_number(page, "redux-width", 64)
    set_number(page, "redux-height", 64)
    set_number(page, "redux-steps", 1)
    page.locator("#redux-seed input").fill("6")
    page.locator("#redux-generate").click()
    wait_text(page, "redux-info", "Seed 6")
    page.locator("#redux-gallery img").first.wait_for(state="visible", timeout=SLOW)

    page.locator("#send-redux-to-t2i").click()
    page.wait_for_function("() => document.querySelector('#prompt textarea').value === 'a small fox'", timeout=SLOW)
    assert page.locator("#seed input").input_value() == "6"
    assert page.locator("#width input[type=number]").input_value() == "64"
