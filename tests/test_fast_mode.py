"""Fast mode on tiny models: it skips exactly the block evaluations its fixed mask says (counted with
forward hooks on the real transformer blocks), leaves no trace once a request ends (exact mode stays
bit-exact), records itself in the metadata, composes with LoRAs, and is refused where it cannot run."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from flux_ui.core.errors import InvalidInput
from flux_ui.models import fast
from flux_ui.models.registry import Registry
from flux_ui.tasks.image_to_image import ImageToImageParams, image_to_image, validate_image_to_image
from flux_ui.tasks.kontext import KontextParams, kontext_edit, validate_kontext
from flux_ui.tasks.text_to_image import TextToImageParams, text_to_image, validate_text_to_image

STEPS = 8


def t2i(registry, **kw):
    base = {"prompt": "a red fox", "width": 96, "height": 64, "steps": STEPS, "seed": 11}
    return text_to_image(
        registry, validate_text_to_image(TextToImageParams(**{**base, **kw}), registry.settings, registry.loras)
    )


def pixels(result, i=0) -> np.ndarray:
    return np.asarray(result.images[i].image)


@contextmanager
def counting(registry, variant="dev"):
    """Calls of each transformer block of `variant` during the block: {"double": [n per block], "single": ...}."""
    transformer = registry.transformer(variant)
    counts = {
        "double": [0] * len(transformer.transformer_blocks),
        "single": [0] * len(transformer.single_transformer_blocks),
    }
    handles = []
    for kind, blocks in (("double", transformer.transformer_blocks), ("single", transformer.single_transformer_blocks)):
        for i, block in enumerate(blocks):

            def hook(module, args, output, kind=kind, i=i):
                counts[kind][i] += 1

            handles.append(block.register_forward_hook(hook))
    try:
        yield counts
    finally:
        for h in handles:
            h.remove()


def state(registry, variant="dev"):
    """What fast mode must leave as it found: the pipeline class's call, and the transformer's own attributes."""
    import diffusers

    transformer = registry.transformer(variant)
    modules = [transformer, transformer.transformer_blocks, transformer.single_transformer_blocks]
    hooks = getattr(transformer, "_diffusers_hook", None)  # diffusers' hook registry, made on first use
    return (
        diffusers.FluxPipeline.__dict__["__call__"],
        [{k: id(v) for k, v in vars(m).items()} for m in modules],
        [dict(m._modules) for m in modules],
        None if hooks is None else list(hooks.hooks),
    )


def test_the_mask_is_fixed_and_computes_about_half_of_28_steps():
    mask = fast.computed_steps(28)
    assert len(mask) == 28 and sum(mask) == 15 and mask[0] == 1 and mask[-1] == 1
    assert fast.computed_steps(28) == mask  # the same every time: no dependence on weights or prompt
    assert fast.computed_steps(2) == [1, 1]  # too few steps to cache any
    assert "15 of 28 steps in full" in fast.describe(28)


def test_fast_mode_skips_exactly_the_blocks_its_mask_says(registry):
    mask = fast.computed_steps(STEPS)
    assert 0 < sum(mask) < STEPS
    with counting(registry) as exact:
        t2i(registry)
    with counting(registry) as quick:
        result = t2i(registry, fast=True, num_images=2)
    assert exact == {"double": [STEPS], "single": [STEPS]}
    # Per image: the first block (Fn = 1) runs at every step; the others only on the steps the mask computes.
    assert quick == {"double": [2 * STEPS], "single": [2 * sum(mask)]}
    assert result.images[1].meta.extra["Fast mode"] == fast.describe(STEPS)


def test_off_is_bit_exact_and_fast_mode_leaves_no_trace(registry):
    a = t2i(registry)
    before = state(registry)  # after a first run, which sets up what diffusers makes on first use
    quick = t2i(registry, fast=True)
    assert state(registry) == before
    b = t2i(registry)
    np.testing.assert_array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(quick))  # the cached steps do change the result
    assert "Fast mode" not in b.images[0].meta.extra
    with counting(registry) as counts:
        t2i(registry)
    assert counts == {"double": [STEPS], "single": [STEPS]}


def test_fast_mode_leaves_no_trace_when_a_step_fails(registry):
    t2i(registry, steps=1)
    before = state(registry)

    def stop():
        return True

    from flux_ui.core.errors import Cancelled

    job = validate_text_to_image(
        TextToImageParams("a fox", width=96, height=64, steps=STEPS, fast=True), registry.settings
    )
    with pytest.raises(Cancelled):
        text_to_image(registry, job, should_stop=stop)
    assert state(registry) == before


def test_image_to_image_masks_the_steps_that_run(registry):
    picture = Image.radial_gradient("L").convert("RGB").resize((96, 64))
    job = validate_image_to_image(
        ImageToImageParams(picture, "a fox", strength=0.75, steps=16, seed=3, fast=True), registry.settings
    )
    assert job.steps_run == 12
    with counting(registry) as counts:
        result = image_to_image(registry, job)
    assert counts == {"double": [12], "single": [sum(fast.computed_steps(12))]}
    assert result.images[0].meta.extra["Fast mode"] == fast.describe(12)


def test_kontext_fast_mode(registry):
    picture = Image.new("RGB", (96, 64), (200, 30, 30))
    params = KontextParams(picture, "make it blue", size="96x64", steps=STEPS, seed=5)
    exact = kontext_edit(registry, validate_kontext(params, registry.settings))
    with counting(registry, "kontext-dev") as counts:
        quick = kontext_edit(registry, validate_kontext(replace(params, fast=True), registry.settings))
    assert counts == {"double": [STEPS], "single": [sum(fast.computed_steps(STEPS))]}
    again = kontext_edit(registry, validate_kontext(params, registry.settings))
    np.testing.assert_array_equal(pixels(exact), pixels(again))
    assert not np.array_equal(pixels(exact), pixels(quick))


def test_fast_mode_with_a_lora(settings, tiny_lora_dir):
    registry = Registry(replace(settings, lora_dirs=(tiny_lora_dir,)))
    name = registry.loras.entries()[0].name
    plain = t2i(registry, fast=True)
    with counting(registry) as counts:
        styled = t2i(registry, fast=True, prompt=f"a red fox <lora:{name}:1>")
    assert counts == {"double": [STEPS], "single": [sum(fast.computed_steps(STEPS))]}
    assert not np.array_equal(pixels(plain), pixels(styled))  # the LoRA is active under the cache
    assert pixels(t2i(registry, fast=True)).tobytes() == pixels(plain).tobytes()  # and gone after


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_fast_must_be_a_bool(settings, value):
    with pytest.raises(InvalidInput, match=r"^fast: expected true or false"):
        validate_text_to_image(TextToImageParams("a fox", fast=value), settings)


def test_fast_mode_is_refused_under_group_offloading(settings):
    offload = replace(settings, memory_policy="offload-12gb")
    with pytest.raises(InvalidInput, match=r"^fast: is not available under the 'offload-12gb' memory policy"):
        validate_text_to_image(TextToImageParams("a fox", fast=True), offload)
    assert validate_text_to_image(TextToImageParams("a fox"), offload).fast is False


def test_installing_cache_dit_changes_nothing_until_asked(tiny_dir, tmp_path):
    """An image made before cache_dit is imported is the one made after (in a fresh process: here other
    tests have imported it already)."""
    import subprocess
    import sys

    script = f"""
import sys
import numpy as np
from pathlib import Path
from flux_ui.core.settings import Settings
from flux_ui.models.registry import Registry
from flux_ui.tasks.text_to_image import TextToImageParams, text_to_image, validate_text_to_image

registry = Registry(Settings(tiny=True, tiny_dir=Path({str(tiny_dir)!r}), model_root=Path({str(tiny_dir)!r}),
                             outputs_dir=Path({str(tmp_path)!r})))
job = validate_text_to_image(TextToImageParams("a fox", width=64, height=64, steps=4, seed=3), registry.settings)
before = np.asarray(text_to_image(registry, job).images[0].image)
assert "cache_dit" not in sys.modules
import cache_dit
after = np.asarray(text_to_image(registry, job).images[0].image)
print("same" if np.array_equal(before, after) else "different")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.stdout.strip().endswith("same"), done.stderr[-2000:]


def test_fast_mode_is_refused_for_flux2_by_field(settings):
    from flux_ui.tasks.text_to_image import TextToImageParams, validate_text_to_image

    with pytest.raises(InvalidInput) as err:
        validate_text_to_image(
            TextToImageParams("a fox", "flux2-klein-4b", 64, 64, 2, None, 1, 1, fast=True), settings, None
        )
    assert err.value.field == "fast" and "FLUX.1" in str(err.value)
