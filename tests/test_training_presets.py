"""Training presets as data, the float8 base (it trains on the CPU, where PyTorch has float8 matmuls, and is
refused naming the fix where the GPU has none), and the compiled training step as an option."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from flux_ui.core.errors import InvalidInput
from flux_ui.core.settings import Settings
from flux_ui.models.registry import Registry
from flux_ui.models.speed import Float8RowwiseLinear
from flux_ui.tasks.training import presets
from flux_ui.tasks.training.params import MAX_RANK, MAX_RESOLUTION, TrainParams, validate_training
from flux_ui.tasks.training.presets import PRESETS, check_preset, float8_problem

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny models' matrices are too small to share between threads
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def work(tiny_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("training-presets")
    settings = Settings(
        tiny=True, tiny_dir=tiny_dir, model_root=tiny_dir, outputs_dir=folder / "outputs", lora_dirs=(folder / "loras",)
    )
    return settings, Registry(settings)


def images() -> list[Image.Image]:
    out = []
    for i in range(4):
        img = Image.new("RGB", (256, 256 + 32 * (i % 2)), (210, 40 + 10 * i, 30))
        ImageDraw.Draw(img).ellipse((60, 60, 180, 180), fill=(30, 40, 200))
        out.append(img)
    return out


def validate(work, name: str, **kw):
    settings, reg = work
    p = TrainParams(
        **{
            "images": images(),
            "captions": ["a red photo with a blue circle"] * 4,
            "trigger": "ohwx",
            "name": name,
            "resolution": 64,
            "rank": 8,
            "learning_rate": 2e-2,
            "sample_prompts": "",
            "checkpoint_every": 0,
            **kw,
        }
    )
    return validate_training(p, settings, reg.loras, reg.tokenizers())


def test_every_preset_is_well_formed_and_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    for p in PRESETS.values():
        assert p.base in ("bf16", "float8", "nf4") and p.optimizer in ("adamw", "adamw8bit")
        assert p.resolution % 16 == 0 and p.resolution <= MAX_RESOLUTION and 1 <= p.rank <= MAX_RANK
        assert p.memory_gib > 0 and p.batch >= 1 and p.summary
        row = re.search(rf"^\| {re.escape(p.name)} \|(.*)$", readme, re.M)
        assert row, f"README's preset table has no row for {p.name!r}"
        cells = [c.strip() for c in row.group(1).split("|")]
        assert str(p.rank) in cells and str(p.resolution) in cells, (p.name, cells)
    assert [p.memory_gib for p in PRESETS.values()] == sorted(p.memory_gib for p in PRESETS.values())


def test_float8_base_trains_on_the_cpu(work, monkeypatch):
    """PyTorch has float8 matmuls on the CPU: the float8 preset runs there as on an Ada or Hopper GPU (the
    forward matmul in float8, the gradient through the frozen layers in the compute dtype)."""
    from flux_ui.tasks.training import run

    assert float8_problem("cpu") is None
    settings, reg = work
    seen = {}
    place = run._transformer

    def spy(registry, job):
        seen["model"] = place(registry, job)
        return seen["model"]

    monkeypatch.setattr(run, "_transformer", spy)
    job = validate(work, "float8-base", preset="24 GB float8", steps=30)
    result = run.train_lora(reg, job)
    layers = [m for m in seen["model"].modules() if isinstance(m, Float8RowwiseLinear)]
    assert len(layers) >= 10 and seen["model"].transformer_blocks[0].ff.net[2].base_layer in layers
    assert layers[0].weight_fp8.dtype == torch.float8_e4m3fn and seen["model"].is_gradient_checkpointing
    lora = seen["model"].transformer_blocks[0].attn.to_q
    assert lora.lora_A[lora.active_adapters[0]].weight.dtype == torch.float32  # LoRA kept in float32
    first, last = sum(result.losses[:6]) / 6, sum(result.losses[-6:]) / 6
    assert last < 0.9 * first, (first, last)
    assert result.path.is_file()


def test_float8_base_is_refused_where_there_are_no_float8_matmuls():
    with pytest.raises(InvalidInput) as err:
        check_preset("24 GB float8", "cuda", gib=23.6, capability=(8, 6))  # an RTX 3090
    assert err.value.field == "preset"
    assert "compute capability 8.6" in str(err.value) and "choose '24 GB'" in str(err.value)
    check_preset("24 GB float8", "cuda", gib=23.6, capability=(8, 9))  # an RTX 4090: fine
    with pytest.raises(InvalidInput, match="not on mps"):
        check_preset("24 GB float8", "mps")
    assert presets.fitting(23.6, float8=False)[-1] == "24 GB" and presets.fitting(23.6)[-1] == "24 GB float8"


def test_the_compiled_step_is_the_80gb_presets_default_on_cuda_only(work):
    settings, reg = work
    cuda = Settings(**{**settings.__dict__, "device": "cuda"})  # validation only: nothing runs on it

    def job(s, **kw):
        p = TrainParams(images=images(), trigger="ohwx", name="compiled", resolution=64, **kw)
        return validate_training(p, s, reg.loras, reg.tokenizers(), gpu_gib=80)

    assert PRESETS["80+ GB"].compile and "compiled on CUDA" in PRESETS["80+ GB"].summary
    assert job(cuda, preset="80+ GB").compile and not job(cuda, preset="80+ GB", compile=False).compile
    assert not job(cuda, preset="24 GB").compile and job(cuda, preset="24 GB", compile=True).compile
    assert PRESETS["24 GB float8"].compile  # the float8 base is fast only compiled (docs/PERFORMANCE.md)
    assert not job(settings, preset="80+ GB").compile  # the CPU keeps the eager step
    with pytest.raises(InvalidInput) as err:
        job(settings, preset="80+ GB", compile=True)
    assert err.value.field == "compile" and "CUDA GPUs only, not on cpu; turn it off" in str(err.value)
    with pytest.raises(InvalidInput, match="compile: expected true or false"):
        job(cuda, compile="yes")


def test_a_compiled_step_trains_as_the_eager_one(work, monkeypatch):
    """The run compiles the blocks when the job says so. Inductor needs a GPU to be worth it, so here the
    blocks go through torch.compile's graph capture and AOT autograd without code generation
    (`aot_eager`): the same losses as the eager step."""
    from dataclasses import replace

    from flux_ui.tasks.training import model, run

    settings, reg = work
    calls = []
    compile_blocks = model.compile_blocks

    def traced(transformer, backend="inductor"):
        calls.append(backend)
        compile_blocks(transformer, backend="aot_eager")

    eager = run.train_lora(reg, validate(work, "eager-step", preset="80+ GB", steps=3))
    monkeypatch.setattr(model, "compile_blocks", traced)
    job = replace(validate(work, "compiled-step", preset="80+ GB", steps=3), compile=True)
    torch._dynamo.reset()
    try:
        compiled = run.train_lora(reg, job)
    finally:
        torch._dynamo.reset()
    assert calls == ["inductor"]  # the run asked for the real compiler
    torch.testing.assert_close(torch.tensor(compiled.losses), torch.tensor(eager.losses), atol=1e-4, rtol=1e-4)
    assert '"compile": true' in (job.run_dir / "run.json").read_text()


def test_a_float8_layer_passes_the_gradient_to_its_input():
    """PyTorch's `_scaled_mm` has no backward; the layer's own gives the input's gradient against the
    dequantised weights, close to the bf16 layer's (float8 keeps 3 mantissa bits)."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 128)
    layer = Float8RowwiseLinear.from_linear(linear)
    x = torch.randn(8, 256, requires_grad=True)
    layer(x).square().sum().backward()
    ours, x.grad = x.grad, None
    linear(x).square().sum().backward()
    assert (ours - x.grad).norm() < 0.08 * x.grad.norm()
    # A bf16 model (as on the GPU) hands on float32 from its LayerNorms under autocast: bf16 out, as a Linear.
    bf16 = Float8RowwiseLinear.from_linear(torch.nn.Linear(256, 128, dtype=torch.bfloat16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert bf16(torch.randn(4, 256)).dtype == torch.bfloat16


def test_a_zero_gpu_space_does_not_train(work, monkeypatch):
    from flux_ui.core.settings import settings_from_args
    from flux_ui.tasks.training import run

    settings, reg = work
    zero = Settings(**{**settings.__dict__, "zero_gpu": True})
    with pytest.raises(InvalidInput) as err:
        validate_training(TrainParams(images=images(), trigger="ohwx", name="z"), zero, reg.loras, reg.tokenizers())
    assert err.value.field == "preset" and "not offered on a ZeroGPU Space" in str(err.value)
    assert "dedicated GPU" in str(err.value)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")  # what the spaces package reads
    assert settings_from_args(["--device", "cpu"]).zero_gpu
    monkeypatch.delenv("SPACES_ZERO_GPU")
    assert not settings_from_args(["--device", "cpu"]).zero_gpu
    # Not decorated with spaces.GPU, unlike the other tasks (README, "Hugging Face Space", says why).
    assert "@on_gpu" not in Path(run.__file__).read_text()
