"""LoRAs on tiny models: prompt tags, the library, every file layout, caching, misfits, and concurrency."""

from __future__ import annotations

import os
import shutil
import threading
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from flux_ui.core.errors import InvalidInput, ModelUnavailableError
from flux_ui.core.settings import settings_from_args
from flux_ui.media.metadata import meta_from_parameters, read_parameters
from flux_ui.models.loras.adapters import adapter_name
from flux_ui.models.loras.library import LoraLibrary, parse_prompt, tagged_names, trigger_words, with_tags
from flux_ui.models.registry import Registry
from flux_ui.output.files import save_image
from flux_ui.tasks.text_to_image import TextToImageParams, text_to_image, validate_text_to_image
from flux_ui.tiny.loras import kohya_state, save

TINY_LORAS = ["diffusers-ink", "kohya-fox", "kohya-clip", "styles/comfy-dusk", "xlabs-glow", "bfl-neon"]


@pytest.fixture
def lora_settings(settings, lora_dir, tiny_lora_dir):
    return replace(settings, lora_dirs=(lora_dir, tiny_lora_dir))


@pytest.fixture
def reg(lora_settings) -> Registry:
    return Registry(lora_settings)


@pytest.fixture
def file_reads(monkeypatch) -> Counter[str]:
    """Counts the tensor reads of each LoRA file, by file name (model weights are not counted)."""
    import safetensors.torch

    real, reads = safetensors.torch.load_file, Counter()

    def counting(filename, *args, **kwargs):
        if Path(filename).name not in ("diffusion_pytorch_model.safetensors", "model.safetensors"):
            reads[Path(filename).name] += 1
        return real(filename, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "load_file", counting)
    return reads


def run(registry: Registry, prompt: str = "a red fox", variant: str = "dev", seed: int = 3):
    params = TextToImageParams(prompt=prompt, variant=variant, width=64, height=64, steps=2, seed=seed)
    return text_to_image(registry, validate_text_to_image(params, registry.settings, registry.loras))


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].image)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_module(before: dict[str, torch.Tensor], module: torch.nn.Module) -> None:
    after = module.state_dict()
    assert list(after) == list(before), "the module's structure changed"
    assert all(torch.equal(before[k], after[k]) for k in before), "the module's weights changed"


# -- prompt syntax -------------------------------------------------------------------------------------


def test_tags_are_parsed_and_stripped():
    text, loras = parse_prompt("a fox, <lora:kohya-fox:0.5> in snow\nsecond line <LORA:styles/comfy-dusk>")
    assert text == "a fox, in snow\nsecond line"
    assert loras == (("kohya-fox", 0.5), ("styles/comfy-dusk", 1.0))
    assert parse_prompt("  no tags\n here ") == ("  no tags\n here ", ())  # untouched without tags


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("a <lora:x:abc>", "weight 'abc' is not a number"),
        ("a <lora:x:1:2>", "malformed LoRA tag"),
        ("a <lora::1>", "has no name"),
        ("a <lora:x:9>", "weight 9 is out of range"),
        ("a <lora:x:1> <lora:x:0.5>", "named more than once"),
        ("a " + " ".join(f"<lora:l{i}>" for i in range(9)), "use at most 8"),
    ],
)
def test_bad_tags_name_the_prompt(prompt, message):
    with pytest.raises(InvalidInput) as err:
        parse_prompt(prompt)
    assert err.value.field == "prompt" and message in str(err.value)


def test_prompt_of_tags_only_is_refused(lora_settings):
    with pytest.raises(InvalidInput, match="prompt: has only LoRA tags"):
        validate_text_to_image(TextToImageParams(prompt="<lora:kohya-fox:1>"), lora_settings)


def test_picker_rewrites_tags_keeping_weights():
    assert with_tags("a fox <lora:a:0.3> <lora:b:2>", ["b", "c"], {"c": 0.7}) == "a fox <lora:b:2> <lora:c:0.7>"
    assert tagged_names("x <lora:a> <lora: b :1> <lora:a:2>") == ["a", "b"]


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "styles/../../x", "~root/x", "..\\..\\x"])
def test_path_traversal_is_refused(reg, name, file_reads):
    with pytest.raises(InvalidInput, match="is not allowed"):
        parse_prompt(f"a fox <lora:{name}:1>")
    with pytest.raises(InvalidInput, match="is not allowed"), reg.pipeline("dev", loras=((name, 1.0),)):
        pass
    assert not file_reads


# -- the library -----------------------------------------------------------------------------------------


def test_library_lists_names_and_trigger_words(reg):
    entries = {e.name: e for e in reg.loras.entries()}
    assert set(TINY_LORAS) | {"guided", "misfit/wide", "misfit/control", "misfit/sd15"} == set(entries)
    assert entries["kohya-fox"].trigger_words == ("foxy", "tree")  # the most frequent caption tags
    assert entries["bfl-neon"].trigger_words == ("neon", "night city")  # modelspec.trigger_phrase
    assert entries["bfl-neon"].label == "bfl-neon  ·  neon, night city"
    assert entries["xlabs-glow"].trigger_words == ()


def test_trigger_words_from_headers():
    assert trigger_words({"trigger_words": "ohwx, red hat"}) == ("ohwx", "red hat")
    assert trigger_words({"ss_tag_frequency": '{"5_a": {"ohwx": 9, "dog": 3}, "5_b": {"ohwx": 2}}'}) == ("ohwx",)
    assert trigger_words({"ss_tag_frequency": "not json"}) == ()


def test_first_folder_wins_and_refresh_finds_new_files(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    save(a / "style.safetensors", kohya_state(1), {"trigger_words": "from-a"})
    save(b / "style.safetensors", kohya_state(2), {"trigger_words": "from-b"})
    library = LoraLibrary((a, b))
    assert [(e.name, e.trigger_words) for e in library.entries()] == [("style", ("from-a",))]
    save(b / "new/one.safetensors", kohya_state(3))
    assert [e.name for e in library.entries()] == ["style"]  # scanned once...
    assert [e.name for e in library.refresh()] == ["new/one", "style"]  # ...until refreshed


def test_unknown_name_names_the_prompt_and_lists_the_loras(reg, file_reads):
    for call in (
        lambda: run(reg, "a fox <lora:nope:1>"),
        lambda: reg.pipeline("dev", loras=(("nope", 1.0),)).__enter__(),
    ):
        with pytest.raises(InvalidInput) as err:
            call()
        assert err.value.field == "prompt"
        assert "no LoRA named 'nope'; available: bfl-neon, diffusers-ink, guided, kohya-clip" in str(err.value)
    assert not file_reads


def test_pickle_is_refused_before_it_is_read(reg, file_reads):
    for name in ("old-style", "old-style.ckpt"):
        with pytest.raises(InvalidInput) as err:
            run(reg, f"a fox <lora:{name}:1>")
        assert err.value.field == "prompt"
        assert "is a pickle file (old-style.ckpt)" in str(err.value) and "only .safetensors" in str(err.value)
    assert "old-style" not in [e.name for e in reg.loras.entries()]
    assert not file_reads


def test_files_that_are_not_loras_are_refused(settings, tmp_path):
    folder = tmp_path / "loras"
    folder.mkdir()
    torch.save(kohya_state(1), folder / "renamed-pickle.safetensors")
    save(folder / "full-model.safetensors", {"transformer_blocks.0.attn.to_q.weight": torch.zeros(4, 4)})
    registry = Registry(replace(settings, lora_dirs=(folder,)))
    with pytest.raises(InvalidInput, match="renamed-pickle.safetensors is not a valid .safetensors file"):
        run(registry, "a fox <lora:renamed-pickle:1>")
    with pytest.raises(InvalidInput, match="holds no LoRA weights"):
        run(registry, "a fox <lora:full-model:1>")


# -- applying LoRAs --------------------------------------------------------------------------------------


def test_every_layout_applies_and_off_restores_the_base_bitwise(reg, file_reads):
    base = pixels(run(reg))
    seen = {base.tobytes()}
    for name in TINY_LORAS:  # diffusers/PEFT, Kohya (+ CLIP part), ComfyUI, XLabs, BFL
        with_lora = pixels(run(reg, f"a red fox <lora:{name}:1>"))
        assert with_lora.tobytes() not in seen, f"{name} changed nothing"
        seen.add(with_lora.tobytes())
        np.testing.assert_array_equal(pixels(run(reg)), base)
        np.testing.assert_array_equal(pixels(run(reg, f"a red fox <lora:{name}:1>")), with_lora)
        assert file_reads[f"{Path(name).name}.safetensors"] == 1
        assert reg.load_counts[f"lora:{name}"] == 1


def test_weight_zero_and_stripped_tag_give_the_base_image(reg):
    # Equal only if the tag never reached the encoders and a zero weight adds nothing.
    np.testing.assert_array_equal(pixels(run(reg, "a red fox <lora:kohya-fox:0>")), pixels(run(reg)))


def test_kohya_layers_outside_the_blocks_are_applied(reg):
    run(reg, "a red fox <lora:guided:1>")
    transformer = reg.transformer("dev")
    layer = transformer.time_text_embed.guidance_embedder.linear_1
    assert adapter_name("guided") in layer.lora_A  # diffusers alone would drop this part silently


def test_diffusers_layout_keeps_its_alpha(reg):
    run(reg, "a red fox <lora:diffusers-ink:0.5>")
    to_q = reg.transformer("dev").transformer_blocks[0].attn.to_q
    assert to_q.scaling[adapter_name("diffusers-ink")] == pytest.approx(0.5 * 2 / 4)  # weight x alpha / rank


def test_a_lora_is_read_once_however_often_it_is_activated_or_reweighted(reg, file_reads):
    fox = pixels(run(reg, "a red fox <lora:kohya-fox:1>"))
    half = pixels(run(reg, "a red fox <lora:kohya-fox:0.5>"))
    both = pixels(run(reg, "a red fox <lora:kohya-fox:0.5> <lora:xlabs-glow:0.8>"))
    glow = pixels(run(reg, "a red fox <lora:xlabs-glow:0.8>"))
    base = pixels(run(reg))
    assert len({a.tobytes() for a in (fox, half, both, glow, base)}) == 5
    np.testing.assert_array_equal(pixels(run(reg, "a red fox <lora:kohya-fox:1>")), fox)
    np.testing.assert_array_equal(pixels(run(reg, "a red fox <lora:xlabs-glow:0.8> <lora:kohya-fox:0.5>")), both)
    assert file_reads == Counter({"kohya-fox.safetensors": 1, "xlabs-glow.safetensors": 1})
    run(reg, "a red fox <lora:kohya-fox:1>", variant="schnell")  # another transformer: a load of its own
    assert file_reads["kohya-fox.safetensors"] == 2 and reg.load_counts["lora:kohya-fox"] == 2
    loaded = reg.status()["loras"]
    assert loaded == {"transformer:dev": ["xlabs-glow", "kohya-fox"], "transformer:schnell": ["kohya-fox"]}


def test_tags_are_recorded_in_the_png(reg, tmp_path):
    item = run(reg, "a red fox <lora:kohya-fox:0.5> <lora:styles/comfy-dusk:1>").images[0]
    assert item.meta.loras == (("kohya-fox", 0.5), ("styles/comfy-dusk", 1.0))
    assert item.meta.prompt == "a red fox <lora:kohya-fox:0.5> <lora:styles/comfy-dusk:1>"
    from PIL import Image

    with Image.open(save_image(item.image, item.meta, tmp_path)) as img:
        text = read_parameters(img)
    assert 'LoRAs: "kohya-fox:0.5, styles/comfy-dusk:1"' in text
    assert meta_from_parameters(text).loras == item.meta.loras


def test_clip_part_is_active_only_for_requests_that_name_it(reg):
    def pooled(variant, loras=()):
        with reg.pipeline(variant, loras=loras) as pipe, torch.inference_mode():
            return pipe.encode_prompt(prompt="a red fox", prompt_2=None, device="cpu", max_sequence_length=64)[1]

    base = pooled("dev")
    with_clip = pooled("dev", (("kohya-clip", 1.0),))
    assert not torch.equal(base, with_clip)
    assert torch.equal(pooled("schnell"), base)  # the shared CLIP is plain again for everyone else
    assert torch.equal(pooled("schnell", (("kohya-clip", 1.0),)), with_clip)
    assert reg.status()["loras"]["text_encoder"] == ["kohya-clip"]  # its CLIP part was loaded once
    with reg.pipeline("dev") as pipe:
        assert pipe.text_encoder is reg.shared().text_encoder


# -- LoRAs that do not fit ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "variant", "message"),
    [
        ("guided", "schnell", "does not fit FLUX.1 [schnell]: 2 of the 18 layers it changes are not in it"),
        ("misfit/wide", "dev", "does not fit FLUX.1 [dev]: size mismatch"),
        ("misfit/sd15", "dev", "is in no FLUX LoRA layout diffusers can read"),
        ("misfit/control", "dev", "is a Control LoRA"),
    ],
)
def test_a_lora_that_does_not_fit_leaves_the_pipeline_as_it_was(reg, name, variant, message):
    base = pixels(run(reg, variant=variant))
    transformer, clip = reg.transformer(variant), reg.shared().text_encoder
    t_before, c_before = snapshot(transformer), snapshot(clip)
    with pytest.raises(InvalidInput) as err:
        run(reg, f"a red fox <lora:{name}:1>", variant=variant)
    assert err.value.field == "prompt" and message in str(err.value)
    assert_same_module(t_before, transformer)
    assert_same_module(c_before, clip)
    np.testing.assert_array_equal(pixels(run(reg, variant=variant)), base)
    assert reg.status()["loras"] == {}

    # With LoRAs already loaded, they stay loaded and unchanged.
    good = "a red fox <lora:kohya-fox:1> <lora:kohya-clip:0.5>"
    fox = pixels(run(reg, good, variant=variant))
    with pytest.raises(InvalidInput, match="prompt: LoRA"):
        run(reg, f"a red fox <lora:kohya-fox:1> <lora:{name}:1>", variant=variant)
    np.testing.assert_array_equal(pixels(run(reg, good, variant=variant)), fox)
    np.testing.assert_array_equal(pixels(run(reg, variant=variant)), base)
    assert reg.load_counts["lora:kohya-fox"] == 1


def test_the_same_lora_fits_dev(reg):
    assert not np.array_equal(pixels(run(reg, "a red fox <lora:guided:1>")), pixels(run(reg)))


# -- caching -----------------------------------------------------------------------------------------------


def test_least_recently_used_adapters_are_dropped_beyond_the_cache(lora_settings, file_reads):
    registry = Registry(replace(lora_settings, lora_cache=2))
    for name in ("kohya-fox", "xlabs-glow", "bfl-neon"):
        run(registry, f"a red fox <lora:{name}:1>")
    assert registry.status()["loras"] == {"transformer:dev": ["xlabs-glow", "bfl-neon"]}
    run(registry, "a red fox <lora:kohya-fox:1>")
    assert file_reads["kohya-fox.safetensors"] == 2


def test_a_changed_file_is_read_again(settings, tmp_path, file_reads):
    folder = tmp_path / "loras"
    save(folder / "mine.safetensors", kohya_state(2))
    registry = Registry(replace(settings, lora_dirs=(folder,)))
    first = pixels(run(registry, "a red fox <lora:mine:1>"))
    save(folder / "mine.safetensors", kohya_state(12))
    stat = (folder / "mine.safetensors").stat()
    os.utime(folder / "mine.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = pixels(run(registry, "a red fox <lora:mine:1>"))
    assert file_reads["mine.safetensors"] == 2 and not np.array_equal(first, second)
    assert registry.status()["loras"] == {"transformer:dev": ["mine"]}


# -- hub LoRAs ---------------------------------------------------------------------------------------------


@pytest.fixture
def offline_hub(monkeypatch, tmp_path) -> Path:
    """An empty hub cache with downloads switched off."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_hub_lora_not_in_the_cache_is_explained(lora_settings, offline_hub):
    spec = "flux-ui-tests/no-such-lora/lora.safetensors"
    registry = Registry(replace(lora_settings, hub_loras=(spec,)))
    assert spec in [e.name for e in registry.loras.entries()]
    with pytest.raises(ModelUnavailableError) as err:
        run(registry, f"a red fox <lora:{spec}:1>")
    assert "not in the local hub cache" in str(err.value) and "--lora" in str(err.value)


def test_cached_hub_lora_loads_offline(lora_settings, offline_hub, tiny_lora_dir):
    snapshot_dir = offline_hub / "models--flux-ui-tests--tiny-fox" / "snapshots" / ("0" * 40)
    snapshot_dir.mkdir(parents=True)
    shutil.copy(tiny_lora_dir / "kohya-fox.safetensors", snapshot_dir / "fox.safetensors")
    (offline_hub / "models--flux-ui-tests--tiny-fox" / "refs").mkdir()
    (offline_hub / "models--flux-ui-tests--tiny-fox" / "refs" / "main").write_text("0" * 40)
    spec = "flux-ui-tests/tiny-fox/fox.safetensors"
    registry = Registry(replace(lora_settings, hub_loras=(spec,)))
    entry = next(e for e in registry.loras.entries() if e.name == spec)
    assert entry.trigger_words == ("foxy", "tree")
    hub = pixels(run(registry, f"a red fox <lora:{spec}:1>"))
    np.testing.assert_array_equal(hub, pixels(run(registry, "a red fox <lora:kohya-fox:1>")))


def test_hub_specs_are_checked(lora_settings):
    with pytest.raises(ValueError, match="--lora: expected OWNER/REPO"):
        Registry(replace(lora_settings, hub_loras=("not a repo",)))
    registry = Registry(replace(lora_settings, hub_loras=("someone/old/old.ckpt",)))
    with pytest.raises(InvalidInput, match="is a pickle file"):
        run(registry, "a red fox <lora:someone/old/old.ckpt:1>")


def test_lora_settings_from_flags_and_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("FLUX_UI_LORA_DIRS", raising=False)
    assert settings_from_args([]).lora_dirs == (Path("models/loras"),)
    s = settings_from_args(["--lora-dir", "a", "--lora-dir", "b", "--lora", "o/r", "--lora-cache", "3"])
    assert (s.lora_dirs, s.hub_loras, s.lora_cache) == ((Path("a"), Path("b")), ("o/r",), 3)
    monkeypatch.setenv("FLUX_UI_LORA_DIRS", os.pathsep.join(["x", "y"]))
    tiny = settings_from_args(["--tiny", "--tiny-dir", str(tmp_path)])
    assert tiny.lora_dirs == (Path("x"), Path("y"), tmp_path / "loras")


# -- concurrency -------------------------------------------------------------------------------------------

CASES = [
    ("dev", ""),
    ("dev", "<lora:kohya-fox:0.8>"),
    ("schnell", "<lora:xlabs-glow:1>"),
    ("krea-dev", "<lora:bfl-neon:0.5> <lora:kohya-clip:1>"),
    ("schnell", ""),
    ("dev", "<lora:diffusers-ink:1> <lora:kohya-fox:0.3>"),
]


def test_concurrent_requests_with_different_lora_sets_get_what_they_asked_for(lora_settings):
    reference = Registry(lora_settings)
    expected = {case: pixels(run(reference, f"a red fox {case[1]}", case[0])) for case in CASES}
    assert len({a.tobytes() for a in expected.values()}) == len(CASES)

    registry = Registry(replace(lora_settings, transformer_cache=1))  # every switch swaps transformers
    results, errors = {}, []

    def worker(case, i):
        try:
            results[(case, i)] = run(registry, f"a red fox {case[1]}", case[0]).images[0]
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(case, i)) for i in range(2) for case in CASES]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for ((variant, tags), _), item in results.items():
        np.testing.assert_array_equal(np.asarray(item.image), expected[(variant, tags)])
        assert item.meta.variant == variant and item.meta.loras == parse_prompt(f"x {tags}")[1]
