"""An image made in fast mode says so in its parameters, and reading it back ticks the Fast mode checkbox:
Load parameters (the `/load_parameters` event) and History's "Back to text to image" hand-off, checked on
the built app's own event functions (no browser)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_fast_mode import t2i

from flux_ui.media.foreign_metadata import from_a1111, read_loaded
from flux_ui.media.metadata import FAST_MODE_KEY, format_parameters, parse_parameters, save_png
from flux_ui.media.uploads import upload_dir
from flux_ui.models import fast
from flux_ui.models.registry import Registry
from flux_ui.ui.app import build_ui
from flux_ui.ui.tabs.text_to_image import form_values

FORGE = (
    "a red fox\nSteps: 20, Sampler: Euler, Schedule type: Simple, CFG scale: 1, Distilled CFG Scale: 3.5, "
    "Seed: 7, Size: 896x1152, Model: flux1-dev-fp8, Version: f2.0.1"
)


@pytest.fixture
def made(registry, tmp_path):
    """Two PNGs written by the real text-to-image task, one in fast mode, in the upload folder (a form
    reads only uploads): {"fast": path, "exact": path}."""
    folder = upload_dir() / f"fast-load-{tmp_path.name}"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, on in (("fast", True), ("exact", False)):
        item = t2i(registry, fast=on, steps=28 if on else 2).images[0]
        out[name] = save_png(item.image, folder / f"{name}.png", item.meta)
    yield out
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()


def test_the_parameters_line_records_fast_mode_as_a_key_of_its_own(made):
    from PIL import Image

    from flux_ui.media.metadata import read_parameters

    with Image.open(made["fast"]) as img:
        text = read_parameters(img)
    assert f'{FAST_MODE_KEY}: "15 of 28 steps in full ({fast.METHOD})"' in text
    # The line still reads as A1111's: the other keys are where other tools look for them.
    fields = parse_parameters(text)
    assert (fields["Steps"], fields["Seed"], fields["Size"]) == ("28", "11", "96x64")
    assert fields[FAST_MODE_KEY] == fast.describe(28)


def test_reading_back_says_whether_it_was_fast(made):
    from PIL import Image

    for name, expected in (("fast", True), ("exact", False)):
        with Image.open(made[name]) as img:
            loaded = read_loaded(img)
        assert loaded.fast is expected, name
        assert not any(FAST_MODE_KEY in note for note in loaded.notes)  # carried over, so no note
    assert from_a1111(FORGE).fast is None  # another tool's image: the checkbox is left as it is


def event(demo, *, api_name: str | None = None, elem_id: str | None = None):
    """(fn, output elem_ids) of the event with `api_name`, or the click of the button with `elem_id`."""
    config = demo.config
    ids = {c["id"]: c["props"].get("elem_id") for c in config["components"]}
    for dep in config["dependencies"]:
        hit = dep.get("api_name") == api_name if api_name else any(ids.get(t[0]) == elem_id for t in dep["targets"])
        if hit and dep["backend_fn"]:
            return demo.fns[dep["id"]].fn, [ids.get(o) for o in dep["outputs"]]
    raise AssertionError(f"no event {api_name or elem_id}")


def test_load_parameters_and_history_reuse_tick_the_checkbox(settings, made):
    demo = build_ui(Registry(settings))
    load, outputs = event(demo, api_name="load_parameters")
    at = outputs.index("fast")
    assert load(str(made["fast"]))[at] is True
    assert load(str(made["exact"]))[at] is False
    send, outputs = event(demo, elem_id="send-history-to-t2i")  # History's "Back to text to image"
    at = outputs.index("fast")
    assert send([(str(made["fast"]), "a red fox")], 0)[at] is True
    assert send([(str(made["exact"]), "a red fox")], 0)[at] is False


def test_where_fast_mode_cannot_run_it_is_left_off_with_a_note(settings, made):
    offload = replace(settings, memory_policy="offload-12gb")
    values = form_values(str(made["fast"]), offload)
    assert values[-2] is False
    assert "It was made in fast mode, which is not available under the 'offload-12gb'" in values[-1]


def test_format_keeps_other_keys_in_place_with_fast_mode():
    """The key goes among the task's own keys, before Version, which other readers expect last."""
    from flux_ui.media.metadata import ImageMeta

    meta = ImageMeta("a fox", "dev", 1, 28, 3.5, 64, 64, extra={FAST_MODE_KEY: fast.describe(28)})
    line = format_parameters(meta).splitlines()[-1]
    assert line.startswith("Steps: 28, ") and line.endswith(", Version: flux-ui " + meta.version)
