"""LoRAs merged into compiled and float8 transformers (the speed profiles and the fp8-24gb policy).

The tiny [dev] transformer's blocks are compiled with torch.compile (dynamo with the eager backend: the
guards and recompiles are dynamo's, the same as with inductor on a GPU), or its linear layers quantised to
float8 with the app's own `quantize_fp8`, and LoRAs of every layout go through the real registry.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from flux_ui.core.errors import InvalidInput
from flux_ui.models import speed
from flux_ui.models.loras import merge as lora_merge
from flux_ui.models.registry import Registry
from flux_ui.tasks.text_to_image import TextToImageParams, text_to_image, validate_text_to_image

LAYOUTS = ["diffusers-ink", "kohya-fox", "kohya-clip", "styles/comfy-dusk", "xlabs-glow", "bfl-neon"]


@pytest.fixture
def lora_settings(settings, lora_dir, tiny_lora_dir):
    return replace(settings, lora_dirs=(lora_dir, tiny_lora_dir))


def run(registry: Registry, prompt: str = "a red fox", variant: str = "dev") -> np.ndarray:
    params = TextToImageParams(prompt=prompt, variant=variant, width=64, height=64, steps=2, seed=3)
    result = text_to_image(registry, validate_text_to_image(params, registry.settings, registry.loras))
    return np.asarray(result.images[0].image).astype(np.int16)


def compiled(settings, variant: str = "dev") -> Registry:
    registry = Registry(settings)
    registry.transformer(variant).compile_repeated_blocks(backend="eager", fullgraph=True, dynamic=True)
    return registry


def quantized(settings, monkeypatch, variant: str = "dev") -> Registry:
    monkeypatch.setattr(speed, "FP8_MIN_FEATURES", 16)  # the tiny model's layers are 32 to 128 wide
    registry = Registry(settings)
    assert speed.quantize_fp8(registry.transformer(variant)) > 0
    return registry


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_state(before: dict[str, torch.Tensor], module: torch.nn.Module) -> None:
    after = module.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(before[k].view(torch.uint8), after[k].view(torch.uint8)) for k in before)


def test_compiled_transformer_gets_loras_merged_and_matching_peft(lora_settings):
    peft = Registry(lora_settings)  # eager: PEFT layers, the reference
    fast = compiled(lora_settings)
    transformer = fast.transformer("dev")
    assert lora_merge.needs_merge(transformer) and not lora_merge.needs_merge(peft.transformer("dev"))
    base, before = run(fast), state(transformer)
    np.testing.assert_array_equal(base, run(peft))
    for name in LAYOUTS:
        prompt = f"a red fox <lora:{name}:0.8>"
        merged, reference = run(fast, prompt), run(peft, prompt)
        assert np.abs(merged - base).mean() > 1, f"{name} changed nothing"
        # The same LoRA, merged into bf16 weights vs added beside them: bf16 rounding apart, the same image.
        assert np.abs(merged - reference).mean() < 0.25 * np.abs(reference - base).mean(), name
        assert not any("lora" in n for n, _ in transformer.named_modules())  # no PEFT layers
        np.testing.assert_array_equal(run(fast), base)
        assert_state(before, transformer)  # without LoRAs the base weights are back, bit for bit


def test_switching_loras_on_a_compiled_transformer_never_recompiles(lora_settings):
    fast = compiled(lora_settings)
    run(fast)  # the first call compiles
    with torch._dynamo.config.patch(error_on_recompile=True):
        images = [
            run(fast, p)
            for p in (
                "a red fox <lora:kohya-fox:1>",
                "a red fox <lora:kohya-fox:0.3> <lora:xlabs-glow:1>",
                "a red fox <lora:bfl-neon:-1>",
                "a red fox",
                "a red fox <lora:diffusers-ink:1.5>",
            )
        ]
    assert len({i.tobytes() for i in images}) == len(images)


def test_float8_transformer_takes_loras(lora_settings, monkeypatch):
    bf16 = Registry(lora_settings)
    fp8 = quantized(lora_settings, monkeypatch)
    transformer = fp8.transformer("dev")
    base, before = run(fp8), state(transformer)
    prompt = "a red fox <lora:kohya-fox:1> <lora:xlabs-glow:0.7>"
    with_loras = run(fp8, prompt)
    np.testing.assert_array_equal(run(fp8), base)
    assert_state(before, transformer)
    np.testing.assert_array_equal(run(fp8, prompt), with_loras)  # seeded rounding: the same image again
    reference = run(bf16, prompt)
    # The LoRAs move the float8 model's image towards what they do to the bf16 model.
    assert np.abs(with_loras - reference).mean() < 0.6 * np.abs(base - reference).mean()


def test_misfit_on_a_compiled_transformer_changes_nothing(lora_settings):
    fast = compiled(lora_settings, "schnell")
    transformer = fast.transformer("schnell")
    base, before = run(fast, variant="schnell"), state(transformer)
    with pytest.raises(InvalidInput, match="does not fit FLUX.1 \\[schnell\\]: 2 of the 18 layers"):
        run(fast, "a red fox <lora:kohya-fox:1> <lora:guided:1>", variant="schnell")
    with pytest.raises(InvalidInput, match="size mismatch"):
        run(fast, "a red fox <lora:misfit/wide:1>", variant="schnell")
    assert_state(before, transformer)
    np.testing.assert_array_equal(run(fast, variant="schnell"), base)


def test_merged_float8_layer_holds_the_sum():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 96, dtype=torch.bfloat16)
    layer = speed.Float8RowwiseLinear.from_linear(linear)
    model = torch.nn.Sequential(layer)
    delta = lora_merge.Delta(torch.randn(4, 64) * 0.05, torch.randn(96, 4) * 0.05, scale=0.5)
    wanted = layer.weight_fp8.float() * layer.weight_scale.t() + 0.8 * 0.5 * delta.up @ delta.down
    fp8, scale = layer.weight_fp8.clone(), layer.weight_scale.clone()
    merged = lora_merge.merge(model, [({"0": delta}, 0.8)], seed=1)
    got = layer.weight_fp8.float() * layer.weight_scale.t()
    change = wanted - fp8.float() * scale.t()
    # Each weight lands on one of its two neighbours on the float8 grid, so the error is below one step
    # (12.5 % relative), and the LoRA's change survives: the merged weights moved along it.
    assert ((got - wanted).abs() <= wanted.abs() * 0.13 + 1e-6).all()
    moved = got - fp8.float() * scale.t()
    assert torch.nn.functional.cosine_similarity(moved.flatten(), change.flatten(), dim=0) > 0.5
    lora_merge.restore(model, merged)
    assert torch.equal(layer.weight_fp8.view(torch.uint8), fp8.view(torch.uint8))
    assert torch.equal(layer.weight_scale, scale)


def test_stochastic_rounding_keeps_small_changes_on_average():
    grid = torch.tensor([1.0, 1.125, -2.0, 0.5, 288.0])  # float8 e4m3 values; their steps are 1/8 relative
    step = torch.tensor([0.125, 0.125, -0.25, 0.0625, 32.0])
    x = (grid + 0.2 * step).repeat(20000, 1)  # a fifth of a step: rounding to nearest gives `grid` every time
    assert torch.equal(x.to(torch.float8_e4m3fn).float()[0], grid)
    rounded = lora_merge.onto_fp8_grid_(x.clone(), torch.Generator().manual_seed(0))
    assert torch.equal(rounded, rounded.to(torch.float8_e4m3fn).float())  # values float8 holds exactly
    assert ((rounded == grid) | (rounded == grid + step)).all()  # always a neighbour on the grid
    torch.testing.assert_close(rounded.mean(dim=0), grid + 0.2 * step, rtol=0, atol=0.01 * step.abs().max())


def test_scales_are_read_as_peft_reads_them(lora_settings):
    from flux_ui.models.loras.adapters import _read
    from flux_ui.models.loras.library import LoraLibrary

    registry = Registry(lora_settings)
    library = LoraLibrary(lora_settings.lora_dirs)
    with registry.pipeline("dev") as pipe:
        sd, alphas, meta = _read(pipe, library.fetch("diffusers-ink"), registry.load_counts)
    deltas = lora_merge.parse(sd, alphas, meta)
    assert deltas["transformer_blocks.0.attn.to_q"].scale == pytest.approx(2 / 4)  # alpha / rank in its header


def test_peft_layers_would_recompile_a_compiled_transformer(lora_settings, monkeypatch):
    """Why merging exists: the same LoRA added as PEFT layers changes the compiled blocks' modules."""
    monkeypatch.setattr(lora_merge, "needs_merge", lambda transformer: False)
    fast = compiled(lora_settings)
    run(fast)
    with torch._dynamo.config.patch(error_on_recompile=True), pytest.raises(torch._dynamo.exc.RecompileError):
        run(fast, "a red fox <lora:kohya-fox:1>")


def test_the_same_loras_again_are_not_merged_again(lora_settings, monkeypatch):
    fast = compiled(lora_settings)
    merges = []
    real = lora_merge.merge
    monkeypatch.setattr(lora_merge, "merge", lambda *a: merges.append(a[1]) or real(*a))
    base = run(fast)
    fox = run(fast, "a red fox <lora:kohya-fox:1>")
    np.testing.assert_array_equal(run(fast, "a red fox <lora:kohya-fox:1>"), fox)
    np.testing.assert_array_equal(run(fast, "a red fox <lora:kohya-fox:1> <lora:xlabs-glow:0>"), fox)
    assert len(merges) == 1  # kept merged between requests (a zero weight adds nothing)
    half = run(fast, "a red fox <lora:kohya-fox:0.5>")
    assert len(merges) == 2 and not np.array_equal(half, fox)
    np.testing.assert_array_equal(run(fast), base)
    np.testing.assert_array_equal(run(fast, "a red fox <lora:kohya-fox:1>"), fox)
    assert len(merges) == 3


def test_memory_pressure_takes_merged_loras_out_first(lora_settings):
    fast = compiled(lora_settings)
    transformer = fast.transformer("dev")
    before = state(transformer)
    run(fast, "a red fox <lora:kohya-fox:1>")
    assert not all(torch.equal(before[k], v) for k, v in transformer.state_dict().items())  # merged
    fast._free_bytes = lambda: 0  # the device is full
    assert fast.make_room(1)[0] == "merged LoRAs restored"
    assert_state(before, transformer)


def test_a_weak_lora_moves_few_float8_weights_and_keeps_the_scales():
    torch.manual_seed(0)
    layer = speed.Float8RowwiseLinear.from_linear(torch.nn.Linear(256, 128, dtype=torch.bfloat16))
    model = torch.nn.Sequential(layer)
    fp8, scale = layer.weight_fp8.clone(), layer.weight_scale.clone()
    weight = fp8.float() * scale.t()
    delta = lora_merge.Delta(torch.randn(4, 256), torch.randn(128, 4), scale=1.0)
    strength = 0.005 * weight.std() / (delta.up @ delta.down).std()  # changes of 0.5 % of a typical weight
    lora_merge.merge(model, [({"0": delta}, float(strength))], seed=3)
    moved = (layer.weight_fp8.view(torch.uint8) != fp8.view(torch.uint8)).float().mean()
    assert 0 < moved < 0.2  # each weight moves one step with a chance of its change / the step (~0.1 here)
    assert torch.equal(layer.weight_scale, scale)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_merging_on_the_gpu_is_repeatable_and_restores_bitwise():
    torch.manual_seed(0)
    linear = torch.nn.Linear(3072, 12288, dtype=torch.bfloat16, device="cuda").requires_grad_(False)
    model = torch.nn.Sequential(speed.Float8RowwiseLinear.from_linear(linear))
    layer = model[0]
    fp8, scale = layer.weight_fp8.clone(), layer.weight_scale.clone()
    delta = lora_merge.pin(
        {"0": lora_merge.Delta(torch.randn(64, 3072) * 0.01, torch.randn(12288, 64) * 0.01, scale=1.0)}
    )["0"]
    x = torch.randn(4096, 3072, device="cuda", dtype=torch.bfloat16)
    base_out = model(x)
    outputs = []
    for _ in range(2):
        merged = lora_merge.merge(model, [({"0": delta}, 1.0)], seed=11)
        assert merged.saved["0"]["weight_fp8"].device.type == "cuda"  # room on the GPU for the originals
        outputs.append(model(x))
        lora_merge.restore(model, merged)
        assert torch.equal(layer.weight_fp8.view(torch.uint8), fp8.view(torch.uint8))
        assert torch.equal(layer.weight_scale, scale)
    assert torch.equal(outputs[0], outputs[1])  # the same seed, the same merged weights

    def rel_err(out, weight):
        exact = x.float() @ weight.t() + linear.bias.float()
        return float((out.float() - exact).norm() / exact.norm())

    # Merged, the float8 layer stays close to the exact bf16 layer with the LoRA: a little further than the
    # base is from the bf16 base (the weights are rounded twice: when quantised, and when merged; measured on
    # an H100: 4.7 % vs 3.7 %), far from the 8 % or more of a layer that lost the LoRA.
    base_err = rel_err(base_out, linear.weight.float())
    lost = rel_err(base_out, linear.weight.float() + delta.up.cuda() @ delta.down.cuda())
    merged_err = rel_err(outputs[0], linear.weight.float() + delta.up.cuda() @ delta.down.cuda())
    assert merged_err < 1.4 * base_err < lost
