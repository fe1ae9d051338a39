from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from flux_ui.core.errors import Cancelled, InvalidInput
from flux_ui.models.loras import control as control_lora
from flux_ui.models.registry import Registry
from flux_ui.tasks.control import ControlParams, control, control_lora_pipeline, validate_control
from flux_ui.tasks.text_to_image import TextToImageParams, text_to_image, validate_text_to_image


@pytest.fixture(scope="module")
def source() -> Image.Image:
    img = Image.new("RGB", (128, 96), (0, 0, 128))
    draw = ImageDraw.Draw(img)
    draw.ellipse((30, 20, 100, 80), fill="orange")  # strong edges
    draw.rectangle((4, 4, 20, 90), fill=(0, 60, 128))  # medium edges: Sobel gradient 4 * 60 = 240
    return img


def params(settings, source, **kw) -> ControlParams:
    base = {"prompt": "a robot made of gold", "image": source, "steps": 2, "seed": 9}
    return validate_control(ControlParams(**{**base, **kw}), settings)


def pixels(result, i=0):
    return np.asarray(result.images[i].image)


def dev_image(registry) -> np.ndarray:
    p = TextToImageParams(prompt="a red fox", variant="dev", width=64, height=64, steps=2, seed=21)
    return np.asarray(text_to_image(registry, validate_text_to_image(p, registry.settings)).images[0].image)


def transformer_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize(("mode", "guidance"), [("canny", 30.0), ("depth", 10.0)])
def test_defaults_are_the_published_ones(settings, source, mode, guidance):
    p = validate_control(ControlParams("a robot", source, mode=mode), settings)
    assert (p.steps, p.guidance, p.lora_scale, p.route) == (50, guidance, 0.85, "full")
    assert (p.low_threshold, p.high_threshold) == (50, 200)


@pytest.mark.parametrize(("mode", "variant"), [("canny", "canny-dev"), ("depth", "depth-dev")])
def test_full_route_follows_the_computed_map(registry, settings, source, mode, variant):
    result = control(registry, params(settings, source, mode=mode))
    assert result.images[0].image.size == result.control_image.size == (128, 96)
    meta = result.images[0].meta
    assert (meta.variant, meta.guidance, meta.loras) == (variant, 30.0 if mode == "canny" else 10.0, ())
    assert meta.extra["Control"] == mode and meta.extra["Control route"] == "full"
    assert ("Canny thresholds" in meta.extra) == (mode == "canny")
    assert registry.load_counts["transformer:dev"] == 0


def test_canny_thresholds_change_the_map_and_the_image(registry, settings, source):
    a = control(registry, params(settings, source))
    b = control(registry, params(settings, source, low_threshold=400, high_threshold=900))
    assert not np.array_equal(np.asarray(a.control_image), np.asarray(b.control_image))
    assert not np.array_equal(pixels(a), pixels(b))


def test_an_uploaded_map_replaces_the_computed_one(registry, settings, source):
    computed = control(registry, params(settings, source))
    uploaded = control(registry, params(settings, None, control_image=computed.control_image))
    np.testing.assert_array_equal(pixels(computed), pixels(uploaded))  # same map, same seed, same image
    assert uploaded.images[0].meta.extra["Control map"] == "uploaded"
    other = Image.new("RGB", (128, 96), "white")
    assert not np.array_equal(pixels(computed), pixels(control(registry, params(settings, None, control_image=other))))


@pytest.mark.parametrize("mode", ["canny", "depth"])
def test_lora_route_leaves_the_dev_transformer_exactly_as_it_was(registry, settings, source, mode):
    before_image = dev_image(registry)
    transformer = registry.transformer("dev")
    before_state = transformer_state(transformer)
    before_modules = [n for n, _ in transformer.named_modules()]

    result = control(registry, params(settings, source, mode=mode, route="lora"))
    assert result.images[0].image.size == (128, 96)
    meta = result.images[0].meta
    assert meta.variant == "dev" and meta.loras == ((f"{mode}-dev-lora", 0.85),)

    assert registry.transformer("dev") is transformer  # borrowed, not swapped or reloaded
    assert registry.load_counts["transformer:dev"] == 1
    assert registry.load_counts[f"transformer:{mode}-dev"] == 0
    assert [n for n, _ in transformer.named_modules()] == before_modules
    after_state = transformer.state_dict()
    assert after_state.keys() == before_state.keys()
    assert all(torch.equal(before_state[k], after_state[k]) for k in before_state)
    assert transformer.config.in_channels == transformer.config["in_channels"] == 64
    assert not hasattr(transformer, "peft_config")
    np.testing.assert_array_equal(dev_image(registry), before_image)  # bitwise identical


def test_lora_route_is_deterministic_and_the_scale_matters(registry, settings, source):
    a = control(registry, params(settings, source, route="lora"))
    b = control(registry, params(settings, source, route="lora"))
    c = control(registry, params(settings, source, route="lora", lora_scale=0.3))
    np.testing.assert_array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))
    assert registry.load_counts["lora:canny-dev-lora"] == 1  # the file is read once


def test_cancel_on_the_lora_route_still_restores(registry, settings, source):
    before_image = dev_image(registry)
    seen = []
    with pytest.raises(Cancelled):
        control(registry, params(settings, source, route="lora", steps=4), seen.append, lambda: len(seen) >= 1)
    np.testing.assert_array_equal(dev_image(registry), before_image)
    assert registry.load_counts["transformer:dev"] == 1


def test_a_transformer_that_cannot_be_restored_is_reloaded(registry, settings, source, monkeypatch):
    before_image = dev_image(registry)
    monkeypatch.setattr(control_lora, "remove", lambda transformer, before: False)
    control(registry, params(settings, source, route="lora"))
    assert [t["variant"] for t in registry.status()["transformers"]] == []
    monkeypatch.undo()
    np.testing.assert_array_equal(dev_image(registry), before_image)
    assert registry.load_counts["transformer:dev"] == 2


def test_shared_parts_are_shared_by_the_tool_variants(settings):
    registry = Registry(replace(settings, transformer_cache=3))  # keep [dev] cached throughout
    with registry.pipeline("dev") as dev:
        pass
    for name, cls in (("fill-dev", "FluxFillPipeline"), ("canny-dev", "FluxControlPipeline")):
        with registry.pipeline(name) as pipe:
            assert type(pipe).__name__ == cls
            for part in ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae"):
                assert getattr(pipe, part) is getattr(dev, part)
    with control_lora_pipeline(registry, "depth") as pipe:
        assert type(pipe).__name__ == "FluxControlPipeline"
        assert pipe.transformer is dev.transformer and pipe.vae is dev.vae
        assert pipe.transformer.config.in_channels == 128  # widened while the LoRA is on
    assert dev.transformer.config.in_channels == 64


def test_the_size_follows_the_source_within_the_limit(registry, settings):
    big = Image.new("RGB", (400, 300), "gray")
    small = replace(settings, max_megapixels=0.02)
    p = validate_control(ControlParams("a robot", big, steps=1, seed=1), small)
    result = control(Registry(small), p)
    w, h = result.images[0].image.size
    assert w * h <= 20_000 and (w, h) == result.control_image.size and w % 16 == h % 16 == 0


@pytest.mark.parametrize(
    ("kw", "field", "message"),
    [
        ({"prompt": ""}, "prompt", "is empty"),
        ({"image": None}, "image", "is missing"),
        ({"image": b"nope"}, "image", "is not an image"),
        ({"control_image": Image.new("RGB", (40, 40))}, "control_image", "at least 64 pixels"),
        ({"mode": "pose"}, "mode", "unknown mode 'pose'; choose one of: canny, depth"),
        ({"route": "controlnet"}, "route", "choose one of: full, lora"),
        ({"low_threshold": 300, "high_threshold": 200}, "low_threshold", "above high_threshold"),
        ({"high_threshold": 5000}, "high_threshold", "out of range"),
        ({"lora_scale": 5}, "lora_scale", "out of range"),
        ({"steps": 101}, "steps", "out of range"),
        ({"guidance": float("nan")}, "guidance", "expected a number"),
    ],
)
def test_bad_input_names_the_field(settings, source, kw, field, message):
    with pytest.raises(InvalidInput, match=message) as err:
        params(settings, source, **kw)
    assert err.value.field == field
