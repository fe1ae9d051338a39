"""A real browser (Debian's Chromium, driven by Playwright) generating an image through the UI."""

from __future__ import annotations

from conftest import open_tab, set_number


def test_tiny_mode_is_announced(page):
    assert "random weights" in page.locator("#tiny-banner").inner_text()


def test_type_a_prompt_click_generate_and_see_the_image(page, app_server):
    page.locator("#prompt textarea").fill("a red fox in the snow")
    set_number(page, "width", 256)
    set_number(page, "height", 256)
    set_number(page, "steps", 2)
    page.locator("#seed input").fill("4321")
    page.locator("#generate").click()
    image = page.locator("#gallery img").first
    image.wait_for(state="visible", timeout=120_000)
    page.wait_for_function(
        "() => document.querySelector('#info') && document.querySelector('#info').innerText.includes('Seed 4321')",
        timeout=120_000,
    )
    assert page.locator("#gallery img").count() >= 1
    _, outputs = app_server
    assert list(outputs.rglob("*-4321.png"))


def test_bad_size_shows_an_error_and_the_page_keeps_working(page):
    page.locator("#prompt textarea").fill("")
    page.locator("#generate").click()
    page.get_by_text("prompt: is empty").first.wait_for(timeout=30_000)
    page.locator("#prompt textarea").fill("a cat")
    page.locator("#seed input").fill("55")
    page.locator("#generate").click()
    page.wait_for_function("() => document.querySelector('#info').innerText.includes('Seed 55')", timeout=120_000)


def test_picking_a_lora_tags_the_prompt_and_shows_its_trigger_words(page):
    page.locator("#prompt textarea").fill("a red fox")
    page.locator("#loras input").click()
    page.get_by_role("option", name="kohya-fox  ·  foxy, tree").click()
    page.wait_for_function(
        "() => document.querySelector('#prompt textarea').value === 'a red fox <lora:kohya-fox:1>'", timeout=30_000
    )
    page.locator("#lora-info").get_by_text("foxy").first.wait_for(timeout=30_000)
    # Typing a tag selects it in the picker; removing it there takes the tag out of the prompt.
    page.locator("#prompt textarea").fill("a red fox <lora:kohya-fox:1> <lora:bfl-neon:0.5>")
    page.locator("#lora-info").get_by_text("neon").first.wait_for(timeout=30_000)
    page.locator("#loras .token", has_text="kohya-fox").locator(".token-remove").click()
    page.wait_for_function(
        "() => document.querySelector('#prompt textarea').value === 'a red fox <lora:bfl-neon:0.5>'", timeout=30_000
    )


def test_models_tab_shows_residency_and_frees_memory(page):
    open_tab(page, "Models")
    panel = page.locator("#residency")
    panel.get_by_text("transformer dev (active)").wait_for(timeout=30_000)
    assert "Memory policy" in panel.inner_text() and "T5-XXL text encoder" in panel.inner_text()
    assert "cpu" in page.locator("#memory-policy").inner_text()
    page.get_by_role("button", name="Free memory").click()
    page.wait_for_function(
        "() => !document.querySelector('#residency').innerText.includes('transformer dev')", timeout=30_000
    )
    open_tab(page, "Text to image")
