"""FLUX.2 as a second model family, on tiny random-weight models in the real repos' layout: every variant
generates, shared parts are shared by identity within the family and kept apart from FLUX.1's, and a
family switch keeps each family's parts."""

from __future__ import annotations

import pytest

from flux_ui.core.errors import InvalidInput
from flux_ui.core.variants import FLUX2, family_variants, get_variant
from flux_ui.tasks.text_to_image import TextToImageParams, text_to_image, validate_text_to_image

FLUX2_NAMES = [v.name for v in family_variants(FLUX2)]


def generate(registry, variant: str, seed: int = 5, **kw):
    params = TextToImageParams("a red fox", variant, width=64, height=64, steps=2, seed=seed, **kw)
    return text_to_image(registry, validate_text_to_image(params, registry.settings))


def test_the_flux2_variants_are_data_with_their_licenses():
    assert FLUX2_NAMES == [
        "flux2-dev",
        "flux2-klein-4b",
        "flux2-klein-9b",
        "flux2-klein-base-4b",
        "flux2-klein-base-9b",
    ]
    assert get_variant("flux2-klein-4b").commercial_use
    assert get_variant("flux2-klein-base-4b").commercial_use
    assert not get_variant("flux2-klein-9b").commercial_use
    assert not get_variant("flux2-dev").commercial_use
    assert get_variant("flux2-klein-4b").default_steps == 4 and get_variant("flux2-klein-4b").distilled
    assert get_variant("flux2-klein-base-9b").default_guidance == 4.0


@pytest.mark.parametrize("name", FLUX2_NAMES)
def test_every_flux2_variant_generates(registry, name):
    result = generate(registry, name)
    (image,) = result.images
    assert image.image.size == (64, 64)
    assert image.meta.variant == name
    assert image.meta.guidance == get_variant(name).default_guidance
    assert image.image.getextrema() != ((0, 0), (0, 0), (0, 0))  # decoded, not an empty canvas


def test_flux2_parts_are_shared_by_identity_within_the_family(registry):
    seen = {}
    for name in ("flux2-klein-4b", "flux2-klein-base-4b", "flux2-klein-9b", "flux2-dev"):
        with registry.pipeline(name) as pipe:
            seen[name] = pipe
    small, base, nine, dev = seen.values()
    assert base.text_encoder is small.text_encoder and base.tokenizer is small.tokenizer  # one Qwen3-4B
    assert nine.text_encoder is not small.text_encoder  # Qwen3-8B is its own
    assert type(dev.text_encoder).__name__ == "Mistral3ForConditionalGeneration"
    assert small.vae is base.vae is nine.vae is dev.vae  # one FLUX.2 VAE
    assert len({id(p.transformer) for p in seen.values()}) == 4
    assert small.config.is_distilled and not base.config.is_distilled
    counts = registry.load_counts
    assert counts["flux2:vae"] == 1
    assert counts["flux2:text_encoder:qwen3-4b"] == counts["flux2:text_encoder:qwen3-8b"] == 1
    assert counts["flux2:text_encoder:mistral-small-3.2"] == 1
    assert "text_encoder_2" not in counts  # FLUX.1's T5 was never needed


def test_a_family_switch_keeps_each_familys_parts(registry):
    with registry.pipeline("dev") as flux1:
        t5, clip, vae1 = flux1.text_encoder_2, flux1.text_encoder, flux1.vae
    with registry.pipeline("flux2-klein-4b") as flux2:
        qwen, vae2 = flux2.text_encoder, flux2.vae
    with registry.pipeline("dev") as again:
        assert again.text_encoder_2 is t5 and again.text_encoder is clip and again.vae is vae1
    with registry.pipeline("flux2-klein-4b") as again2:
        assert again2.text_encoder is qwen and again2.vae is vae2
    shared = registry.status()["shared"]
    assert {"text_encoder", "text_encoder_2", "vae", "flux2:vae", "flux2:text_encoder:qwen3-4b"} <= set(shared)
    assert registry.load_counts["text_encoder_2"] == registry.load_counts["flux2:text_encoder:qwen3-4b"] == 1
    assert registry.load_counts["transformer:dev"] == registry.load_counts["transformer:flux2-klein-4b"] == 1


def test_make_room_moves_the_other_familys_parts_and_keeps_this_ones(registry):
    with registry.pipeline("dev"):
        pass
    with registry.pipeline("flux2-klein-4b"):
        pass
    order = [name for name, _ in registry._shared_eviction_order()]
    # FLUX.2's text encoder leaves first, FLUX.2's VAE last; a run keeps its own family's parts (keep=).
    assert order[0] == "flux2:text_encoder:qwen3-4b" and order[-1] == "flux2:vae"
    assert order[1:4] == ["text_encoder_2", "text_encoder", "vae"]
    assert registry._part_names(get_variant("flux2-klein-4b")) == ("flux2:text_encoder:qwen3-4b", "flux2:vae")


def test_flux2_refuses_flux1_tasks_and_unknown_loras_before_any_work(registry):
    with pytest.raises(InvalidInput, match="prompt: .*no-such-lora"):
        validate_text_to_image(
            TextToImageParams("a fox <lora:no-such-lora:1>", "flux2-dev"), registry.settings, registry.loras
        )
    from flux_ui.tasks.image_to_image import ImageToImageParams, validate_image_to_image

    with pytest.raises(InvalidInput, match="variant: image to image runs FLUX.1"):
        validate_image_to_image(ImageToImageParams(image=None, prompt="a fox", variant="flux2-dev"), registry.settings)
    assert registry.load_counts == {}


@pytest.mark.parametrize(
    ("policy", "variant", "gpu_gib", "advice"),
    [
        ("resident", "flux2-dev", 139.8, None),  # an H200 holds [dev] in bf16
        ("resident", "flux2-dev", 79.2, "fp8-24gb"),  # an 80 GB card: float8
        ("resident", "flux2-dev", 39.4, "offload-12gb"),  # a 40 GB card: offloading
        ("fp8-24gb", "flux2-dev", 23.6, "offload-12gb"),
        ("offload-12gb", "flux2-dev", 11.6, None),  # streamed block by block: fits (RAM holds the weights)
        ("resident", "flux2-klein-9b", 39.4, None),
        ("fp8-24gb", "flux2-klein-9b", 23.6, None),
        ("fp8-24gb", "flux2-klein-4b", 23.6, None),
    ],
)
def test_the_memory_policies_say_what_runs(policy, variant, gpu_gib, advice):
    from flux_ui.core.policies import POLICIES, misfit

    v = get_variant(variant)
    why = misfit(POLICIES[policy], v.label, v.weights_gib, gpu_gib)
    if advice is None:
        assert why is None
    else:
        assert why.endswith(f"start with --memory-policy {advice}") and v.label in why


def test_a_flux2_lora_loads_as_for_flux1_and_leaves_no_trace(tiny_dir, tmp_path):
    import numpy as np

    from flux_ui.core.settings import Settings
    from flux_ui.models.registry import Registry
    from flux_ui.tiny.flux2 import flux2_lora_state
    from flux_ui.tiny.loras import kohya_state, save

    folder = tmp_path / "loras"
    save(folder / "klein-ink.safetensors", flux2_lora_state(1))
    save(folder / "flux1-fox.safetensors", kohya_state(2))
    settings = Settings(
        tiny=True, tiny_dir=tiny_dir, model_root=tiny_dir, outputs_dir=tmp_path / "out", lora_dirs=(folder,)
    )
    registry = Registry(settings)

    def image(prompt: str):
        params = TextToImageParams(prompt, "flux2-klein-4b", width=64, height=64, steps=2, seed=5)
        job = validate_text_to_image(params, settings, registry.loras)
        return np.asarray(text_to_image(registry, job).images[0].image)

    base = image("a red fox")
    styled = image("a red fox <lora:klein-ink:1>")
    assert not np.array_equal(base, styled)
    assert np.array_equal(image("a red fox"), base)  # off again: the base model's image, bit for bit
    assert registry.status()["loras"] == {"transformer:flux2-klein-4b": ["klein-ink"]}
    with pytest.raises(InvalidInput, match="flux1-fox' does not fit FLUX.2 \\[klein\\] 4B"):
        image("a red fox <lora:flux1-fox:1>")
    assert np.array_equal(image("a red fox"), base)


@pytest.mark.parametrize("name", ["flux2-klein-4b", "flux2-dev"])
def test_flux2_runs_show_live_previews(registry, name):
    events = []
    params = TextToImageParams("a red fox", name, width=96, height=64, steps=3, seed=2)
    text_to_image(registry, validate_text_to_image(params, registry.settings), on_step=events.append)
    assert [e.step for e in events] == [1, 2, 3]
    previews = [e.preview for e in events if e.preview is not None]
    assert len(previews) == 2 and all(p.size == (96, 64) for p in previews)  # every step but the last
    assert registry.previewer("flux2").vae is registry.flux2_parts(get_variant(name))[2]
