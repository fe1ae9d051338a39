"""Examples: every tab's example rows name files that exist, and in a real browser a clicked example
fills the form and runs (the example's image is accepted as the user's input, not refused as a foreign
file); "Seed used" stays hidden until a run has finished (Gradio would draw it as 0)."""

from __future__ import annotations

from conftest import open_tab, set_number
from PIL import Image

from flux_ui.ui import examples

SLOW = 120_000  # ms: generous, the CPU is shared


def test_every_example_file_exists_and_is_an_image():
    rows = [
        *examples.IMAGE_TO_IMAGE,
        *examples.UPSCALE,
        *examples.KONTEXT,
        *examples.REDUX,
        *examples.CONTROL,
        *examples.VQA,
    ]
    files = {cell for row in rows for cell in row if isinstance(cell, str) and cell.endswith(".png")}
    assert files == {"cottage.png", "still_life.png", "shapes.png"}
    for name in files:
        with Image.open(examples.FOLDER / name) as im:
            assert im.size == (768, 768), name


def test_a_clicked_example_fills_the_form_and_runs(page):
    open_tab(page, "Image to image")
    page.locator("#i2i-generate").wait_for(state="visible", timeout=30_000)
    assert page.locator("#i2i-seed-used").count() == 0 or not page.locator("#i2i-seed-used").is_visible()
    page.get_by_text("An oil painting of a cottage").first.click()
    page.wait_for_function(
        "() => document.querySelector('#i2i-prompt textarea').value.startsWith('An oil painting')", timeout=30_000
    )
    page.locator("#i2i-image img").first.wait_for(state="visible", timeout=30_000)
    page.locator("#i2i-size input").fill("128x128")
    page.locator("#i2i-size input").press("Enter")
    set_number(page, "i2i-steps", 2)
    page.locator("#i2i-seed input").fill("515")
    page.locator("#i2i-generate").click()
    page.wait_for_function("() => document.querySelector('#i2i-info')?.innerText.includes('Seed 515')", timeout=SLOW)
    seed_used = page.locator("#i2i-seed-used input")
    seed_used.wait_for(state="visible", timeout=30_000)
    assert seed_used.input_value() == "515"
