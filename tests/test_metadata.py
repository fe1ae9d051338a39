from PIL import Image

from flux_ui import __version__
from flux_ui.media.metadata import ImageMeta, format_parameters, meta_from_parameters, parse_parameters, read_parameters
from flux_ui.output.files import save_image


def meta(**kw):
    base = {"prompt": "a fox, in snow: at night", "variant": "dev", "seed": 42, "steps": 28, "guidance": 3.5}
    base |= {"width": 1024, "height": 768}
    return ImageMeta(**{**base, **kw})


def test_round_trip():
    m = meta(loras=(("watercolor", 0.8), ("ink", 1.0)))
    assert meta_from_parameters(format_parameters(m)) == m


def test_round_trip_multiline_prompt_and_schnell():
    m = meta(prompt="line one\nline two", variant="schnell", guidance=None, steps=4)
    assert meta_from_parameters(format_parameters(m)) == m


def test_layout_other_uis_read():
    text = format_parameters(meta())
    prompt, settings = text.split("\n")
    assert prompt == "a fox, in snow: at night"
    assert settings.startswith("Steps: 28, Sampler: Euler")
    assert "Distilled CFG Scale: 3.5" in settings and "Seed: 42" in settings and "Size: 1024x768" in settings
    assert f"Version: flux-ui {__version__}" in settings


def test_parses_text_written_by_another_ui():
    text = (
        "masterpiece, a castle\nNegative prompt: blurry\n"
        "Steps: 20, Sampler: Euler, CFG scale: 1, Distilled CFG Scale: 3.5, Seed: 7, Size: 896x1152, "
        'Model: flux1-dev, Lora hashes: "a: 123, b: 456", Version: f2.0.1'
    )
    p = parse_parameters(text)
    assert p["Prompt"] == "masterpiece, a castle"
    assert p["Negative prompt"] == "blurry"
    assert p["Lora hashes"] == "a: 123, b: 456"
    m = meta_from_parameters(text)
    assert (m.seed, m.steps, m.width, m.height, m.guidance, m.variant) == (7, 20, 896, 1152, 3.5, "dev")


def test_png_keeps_parameters(tmp_path):
    m = meta()
    path = save_image(Image.new("RGB", (64, 48), "red"), m, tmp_path)
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert meta_from_parameters(read_parameters(img)) == m


def test_saving_never_overwrites(tmp_path):
    img = Image.new("RGB", (8, 8))
    paths = [save_image(img, meta(seed=1), tmp_path) for _ in range(3)]
    assert len(set(paths)) == 3
    assert [p.name for p in paths] == ["00001-1.png", "00002-1.png", "00003-1.png"]


def test_text_without_settings_is_all_prompt():
    assert parse_parameters("just a prompt") == {"Prompt": "just a prompt"}
