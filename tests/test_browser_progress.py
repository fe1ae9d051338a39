"""A real browser (Debian's Chromium, driven by Playwright) watching a run: the live preview is in view and
not covered while it runs, Cancel leaves no half-made image behind (nothing of it can be handed on), and a
closed page gives the GPU up at once."""

from __future__ import annotations

import time

from conftest import open_tab, set_number

SLOW = 120_000  # ms: generous, the CPU is shared
LONG_STEPS = 100  # the most steps a run may have: long enough to watch and cancel


def wait_text(page, elem_id: str, text: str, timeout: int = SLOW) -> None:
    page.wait_for_function(
        "([id, text]) => document.querySelector('#' + id)?.innerText.includes(text)",
        arg=[elem_id, text],
        timeout=timeout,
    )


def start_long_run(page, seed: int) -> None:
    page.locator("#prompt textarea").fill("a lighthouse at dusk")
    set_number(page, "width", 512)
    set_number(page, "height", 512)
    set_number(page, "steps", LONG_STEPS)
    page.locator("#seed input").fill(str(seed))
    page.locator("#generate").click()


def preview_in_view(page) -> dict:
    """Wait for a live preview in the gallery; return whether its picture is what the browser shows at its
    centre (nothing drawn over it) and inside the window."""
    page.locator("#gallery", has_text="preview").wait_for(timeout=SLOW)
    page.locator("#gallery img").first.wait_for(state="visible", timeout=SLOW)
    return page.evaluate(
        """() => {
            const img = document.querySelector('#gallery img');
            const r = img.getBoundingClientRect();
            const x = r.left + r.width / 2, y = r.top + r.height / 2;
            const top = document.elementFromPoint(x, y);
            return {
                uncovered: top === img || img.contains(top) || top.contains(img),
                inView: r.width > 0 && r.height > 0 && y > 0 && y < window.innerHeight,
                topElement: top ? top.outerHTML.slice(0, 200) : null,
            };
        }"""
    )


def test_the_preview_is_visible_mid_run_and_cancel_leaves_nothing_half_made(browser, app_server):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(app_server[0])
    page.wait_for_selector("#prompt textarea", timeout=60_000)
    start_long_run(page, seed=901)

    seen = preview_in_view(page)
    assert seen["inView"] and seen["uncovered"], seen
    assert "step" in page.locator("#info").inner_text()  # the one progress line says how far it is

    # A preview is not an image: the hand-off refuses it and the target stays empty.
    page.locator("#send-t2i-to-i2i").click()
    page.get_by_text("preview of an unfinished run").first.wait_for(timeout=30_000)
    assert page.locator("#i2i-image img").count() == 0

    page.locator("#cancel").click()
    wait_text(page, "info", "Cancelled at step")
    assert page.locator("#gallery img").count() == 0, "the gallery still shows the cancelled run's preview"
    assert "preview" not in page.locator("#gallery").inner_text()
    _, outputs = app_server
    assert not list(outputs.rglob("*-901.png"))

    # Nothing of the cancelled run can be handed on.
    page.locator("#send-t2i-to-i2i").click()
    page.get_by_text("The gallery is empty").first.wait_for(timeout=30_000)
    assert page.locator("#i2i-image img").count() == 0
    open_tab(page, "Text to image")

    # With an image from a finished run, Cancel shows that image again.
    page.locator("#prompt textarea").fill("a small boat")
    set_number(page, "width", 128)
    set_number(page, "height", 128)
    set_number(page, "steps", 1)
    page.locator("#seed input").fill("902")
    page.locator("#generate").click()
    wait_text(page, "info", "Seed 902")
    start_long_run(page, seed=903)
    page.locator("#gallery", has_text="preview").wait_for(timeout=SLOW)
    page.locator("#cancel").click()
    wait_text(page, "info", "Cancelled at step")
    page.locator("#gallery", has_text="seed 902").wait_for(timeout=30_000)
    assert "preview" not in page.locator("#gallery").inner_text()
    page.close()


def test_closing_the_page_cancels_its_job(browser, app_server):
    first = browser.new_page(viewport={"width": 1400, "height": 1000})
    first.goto(app_server[0])
    first.wait_for_selector("#prompt textarea", timeout=60_000)
    start_long_run(first, seed=904)
    set_number(first, "steps", LONG_STEPS)
    first.locator("#gallery", has_text="preview").wait_for(timeout=SLOW)
    started = time.monotonic()
    first.close()

    second = browser.new_page(viewport={"width": 1400, "height": 1000})
    second.goto(app_server[0])
    second.wait_for_selector("#prompt textarea", timeout=60_000)
    second.locator("#prompt textarea").fill("a small boat")
    set_number(second, "width", 64)
    set_number(second, "height", 64)
    set_number(second, "steps", 1)
    second.locator("#seed input").fill("905")
    second.locator("#generate").click()
    wait_text(second, "info", "Seed 905")
    waited = time.monotonic() - started
    second.close()
    _, outputs = app_server
    assert not list(outputs.rglob("*-904.png")), "the closed page's job ran to the end"
    assert waited < 60, waited
