"""New Gradio sessions build component configurations on demand (flux_ui.serving.sessions): the same
entries as Gradio's eager build, and a new session costs a fraction of it."""

from __future__ import annotations

import time
from copy import copy

import gradio as gr
import pytest
from gradio.state_holder import SessionState

from flux_ui.serving.sessions import PATCHED_FOR, lazy_session_configs


@pytest.mark.skipif(gr.__version__ != PATCHED_FOR, reason="written against the pinned Gradio")
def test_lazy_configs_match_gradios_and_cost_less():
    with gr.Blocks() as demo:
        boxes = [gr.Textbox(value=f"box {i}", label=f"b{i}") for i in range(300)]
        gr.Number(5)
    # What Gradio's own SessionState.__init__ builds up front (the patch may already be on: other tests
    # build the app in this process).
    t0 = time.perf_counter()
    config = copy(demo.default_config)
    expected = {k: config.config_for_block(k, [], v) for k, v in config.blocks.items() if k in demo.blocks}
    eager_s = time.perf_counter() - t0
    lazy_session_configs()
    t0 = time.perf_counter()
    lazy = SessionState(demo)
    lazy_s = time.perf_counter() - t0
    assert lazy_s < eager_s / 5, (lazy_s, eager_s)
    assert boxes[3]._id in lazy.config_values
    assert lazy.config_values[boxes[3]._id] == expected[boxes[3]._id]  # built on first read
    lazy._update_value_in_config(boxes[4]._id, "changed")
    assert lazy.config_values[boxes[4]._id]["props"]["value"] == "changed"
    built = dict(lazy.config_values.items())  # a deep link reads them all
    assert built.keys() == expected.keys()
    assert {k: v for k, v in built.items() if k != boxes[4]._id} == {
        k: v for k, v in expected.items() if k != boxes[4]._id
    }
