"""The hand-off wiring between tabs, checked on the built app's layout (no models run here)."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
import pytest

from flux_ui.ui.app import build_ui
from flux_ui.ui.handoff import Target, pick, track_selection, wire


def layout(demo: gr.Blocks) -> tuple[dict, dict]:
    cfg = demo.get_config_file()
    return cfg["layout"], {c["id"]: c for c in cfg["components"]}


def walk(node: dict):
    yield node
    for child in node.get("children", []):
        yield from walk(child)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from flux_ui.core.settings import Settings
    from flux_ui.models.registry import Registry

    return build_ui(Registry(Settings(tiny=True, outputs_dir=tmp_path_factory.mktemp("out"))))


def test_every_child_of_the_tab_bar_is_a_tab(app):
    # Anything else there (a gr.State made after a tab's block, say) shifts the tab bar's labels in the browser.
    root, comps = layout(app)
    tabs = next(n for n in walk(root) if comps.get(n["id"], {}).get("type") == "tabs")
    kinds = [comps[c["id"]]["type"] for c in tabs["children"]]
    assert kinds == ["tabitem"] * len(kinds)
    ids = [comps[c["id"]]["props"]["id"] for c in tabs["children"]]
    assert ids[:5] == ["t2i", "i2i", "upscale", "kontext", "redux"]


def test_each_gallery_can_send_to_the_other_tabs_present(app):
    _, comps = layout(app)
    sends = {c["props"]["elem_id"] for c in comps.values() if str(c["props"].get("elem_id")).startswith("send-")}
    sources, targets = (
        # History sends its images on too
        ("t2i", "i2i", "upscale", "kontext", "redux", "fill", "control", "flux2_edit", "flux2_inpaint", "history"),
        ("t2i", "i2i", "upscale", "kontext", "redux", "vqa", "fill", "control", "flux2_edit", "flux2_inpaint"),
    )
    expected = {f"send-{s}-to-{t}" for s in sources for t in targets if s != t}
    assert sends == expected  # every gallery can reach every other tab present, VQA included


def test_a_new_tab_becomes_a_target_by_its_handles_alone():
    with gr.Blocks(), gr.Tabs() as tabs:
        with gr.Tab("Source", id="src"):
            gallery = gr.Gallery()
            source = SimpleNamespace(gallery=gallery, selected=track_selection(gallery), send_row=gr.Row())
        with gr.Tab("Ask", id="vqa"):
            target = SimpleNamespace(image=gr.Image())
        made = wire(
            SimpleNamespace(tabs={"src": source, "vqa": target}),
            tabs,
            (Target("vqa", "Ask"), Target("fill", "Fill")),  # no fill tab: skipped
        )
    assert made == ["send-src-to-vqa"]


def test_pick_takes_the_selected_item_in_either_form(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))  # the gallery's files are in the upload folder
    a, b, c = (tmp_path / f"{n}.png" for n in "abc")
    for f in (a, b, c):
        f.write_bytes(b"png")
    items = [(str(a), "seed 1"), (str(b), "seed 2")]
    assert pick(items, 1) == str(b)
    assert pick(items, 7) == str(a) and pick(items, None) == str(a)
    assert pick([{"image": {"path": str(c)}, "caption": None}], 0) == str(c)
    with pytest.raises(gr.Error):
        pick([], 0)
    with pytest.raises(gr.Error):
        pick(None, 0)
    with pytest.raises(gr.Error, match="not a file uploaded to this server"):  # a path sent by hand
        pick([("/etc/hostname", "seed 1")], 0)
