"""An upscale without a refine pass keeps saying how its picture was made: it records the text-to-image
generation its input records (A1111's hires-fix layout: Size is the first pass, the Hires keys the rest),
so "Back to text to image" (and Load parameters) fill the form with it; where there is none to carry, the
hand-off says why in words rather than refusing a `Steps: 0`."""

from __future__ import annotations

import gradio as gr
import pytest
from PIL import Image
from test_fast_mode import t2i

from flux_ui.media.metadata import FAST_MODE_KEY, parse_parameters, read_parameters, save_png
from flux_ui.media.uploads import upload_dir
from flux_ui.models import fast
from flux_ui.output.history import _row
from flux_ui.tasks.upscale import UpscaleParams, upscale, validate_upscale
from flux_ui.ui.tabs.text_to_image import form_values


@pytest.fixture
def folder(tmp_path):
    """A folder in the upload folder (a form reads only uploads), emptied afterwards."""
    made = upload_dir() / f"upscale-carries-{tmp_path.name}"
    made.mkdir(parents=True, exist_ok=True)
    yield made
    for path in made.iterdir():
        path.unlink()
    made.rmdir()


def upscale_only(registry, path, name: str, scale: float = 2) -> tuple[str, object]:
    """Upscale the PNG at `path` (as an upload: its bytes) with Lanczos, strength 0; save the result next
    to it as `name`; return (its parameters text, its path)."""
    job = validate_upscale(
        UpscaleParams(path.read_bytes(), scale=scale, upscaler="lanczos", strength=0), registry.settings
    )
    item = upscale(registry, job).images[0]
    saved = save_png(item.image, path.parent / name, item.meta)
    with Image.open(saved) as img:
        return read_parameters(img), saved


def test_the_first_pass_is_carried_and_fills_the_form(registry, folder):
    item = t2i(registry, prompt="a harbour at noon", seed=41, steps=8, fast=True).images[0]
    source = save_png(item.image, folder / "source.png", item.meta)
    text, big = upscale_only(registry, source, "big.png")
    fields = parse_parameters(text)
    assert fields["Prompt"] == "a harbour at noon" and (fields["Seed"], fields["Steps"]) == ("41", "8")
    assert (fields["Size"], fields["Hires resize"], fields["Hires upscale"]) == ("96x64", "192x128", "2")
    assert fields["Hires upscaler"] == "lanczos" and fields["Denoising strength"] == "0"
    assert fields[FAST_MODE_KEY] == fast.describe(8)  # the first pass's own keys come along
    with Image.open(big) as img:
        assert img.size == (192, 128)

    values = form_values(str(big), registry.settings)  # what "Back to text to image" and Load parameters do
    prompt, variant, width, height, steps, _, seed = values[:7]
    assert (prompt, variant, width, height, steps, seed) == ("a harbour at noon", "dev", 96, 64, 8, 41)
    assert values[-2] is True  # fast mode, as the first pass was made
    assert "Hires fix (" in values[-1] and "the form gets the first pass" in values[-1]
    row = _row("big.png", 0.0, text, None, "upscale")
    assert (row["width"], row["height"]) == (192, 128)  # History lists the picture's own size

    # A second upscale of the first: still the same first pass, the scale counted from it.
    again, _ = upscale_only(registry, big, "bigger.png")
    fields = parse_parameters(again)
    assert (fields["Size"], fields["Hires resize"], fields["Hires upscale"], fields["Seed"]) == (
        "96x64",
        "384x256",
        "4",
        "41",
    )


def test_a_picture_with_transparency_keeps_its_parameters(registry, folder):
    item = t2i(registry, prompt="a lantern", seed=5, steps=2).images[0]
    source = save_png(item.image.convert("RGBA"), folder / "rgba.png", item.meta)
    text, _ = upscale_only(registry, source, "rgba-big.png")
    assert parse_parameters(text)["Prompt"] == "a lantern"


def test_an_upscale_with_nothing_to_carry_says_why(registry, folder):
    photo = folder / "photo.png"
    Image.radial_gradient("L").convert("RGB").resize((96, 64)).save(photo)
    text, big = upscale_only(registry, photo, "photo-big.png")
    assert parse_parameters(text)["Steps"] == "0"  # no generation to record
    with pytest.raises(gr.Error, match="upscale without a refine pass .* no prompt, seed or steps to fill the form"):
        form_values(str(big), registry.settings)


def test_an_edit_is_not_carried_as_a_first_pass(registry, folder):
    from flux_ui.media.metadata import ImageMeta

    meta = ImageMeta("make it night", "kontext-dev", 3, 28, 2.5, 96, 64, extra={"Source hash": "abc"})
    edit = save_png(Image.new("RGB", (96, 64), (20, 20, 60)), folder / "edit.png", meta)
    text, _ = upscale_only(registry, edit, "edit-big.png")
    assert parse_parameters(text)["Steps"] == "0"
