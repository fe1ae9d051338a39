"""A real browser on the VQA tab: upload an image, ask, watch the answer stream in; the quick actions."""

from __future__ import annotations

import pytest
from conftest import open_tab
from PIL import Image

# Records the text of the newest answer bubble on every change of the chat, to see it grow.
WATCH_CHAT = """() => {
    window.vqaSnapshots = [];
    const chat = document.querySelector('#vqa-chat');
    new MutationObserver(() => {
        const bots = chat.querySelectorAll('[data-testid="bot"]');
        if (bots.length) window.vqaSnapshots.push(bots[bots.length - 1].innerText.trim());
    }).observe(chat, {subtree: true, childList: true, characterData: true});
}"""


@pytest.fixture(scope="module")
def page(page, tmp_path_factory):
    """The shared page, on the VQA tab with an image uploaded."""
    image = tmp_path_factory.mktemp("vqa-browser") / "sign.png"
    Image.new("RGB", (200, 120), (240, 200, 40)).save(image)
    open_tab(page, "Ask about an image")
    page.locator("#vqa-image input[type=file]").set_input_files(str(image))
    page.locator("#vqa-image img").first.wait_for(state="visible", timeout=60_000)
    return page


def test_the_answer_streams_into_the_chat(page):
    page.evaluate(WATCH_CHAT)
    tokens = page.locator("#vqa-max-tokens input[type=number]")
    tokens.fill("128")
    tokens.press("Enter")
    page.locator("#vqa-question textarea").fill("What is written on the sign?")
    page.locator("#vqa-ask").click()
    page.locator("#vqa-chat [data-testid='user']").first.wait_for(timeout=60_000)
    # The question box is cleared once the answer is complete.
    page.wait_for_function("() => document.querySelector('#vqa-question textarea').value === ''", timeout=120_000)
    final = page.locator("#vqa-chat [data-testid='bot']").last.inner_text().strip()
    assert final and final != "…"
    lengths = sorted({len(s) for s in page.evaluate("window.vqaSnapshots") if s and s != "…"})
    assert len(lengths) >= 3, f"the answer did not stream: {lengths}"
    assert lengths[0] < lengths[-1]


def test_describe_as_a_prompt_fills_the_text_to_image_prompt(page):
    page.locator("#vqa-describe").click()
    page.wait_for_function("() => document.querySelector('#prompt textarea').value.trim().length > 0", timeout=120_000)


def test_suggest_an_edit_fills_the_suggestion(page):
    page.locator("#vqa-suggest").click()
    page.wait_for_function(
        "() => document.querySelector('#vqa-suggested-edit textarea').value.trim().length > 0", timeout=120_000
    )
    assert page.locator("#vqa-chat [data-testid='user']").count() >= 2  # the quick action joined the chat
