"""Memory policies, tier budgets and the residency panel, on tiny models and the CPU."""

import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from flux_ui.core.errors import InvalidInput
from flux_ui.core.memory import module_bytes
from flux_ui.core.policies import POLICIES, select_policy
from flux_ui.core.settings import default_gpu_transformers, default_ram_budget, settings_from_args
from flux_ui.models import speed
from flux_ui.models.placement import is_group_offloaded
from flux_ui.models.registry import Registry
from flux_ui.models.speed import Float8RowwiseLinear
from flux_ui.tasks.text_to_image import TextToImageParams, text_to_image, validate_text_to_image
from flux_ui.ui import residency

GIB = 2**30


def run(registry, variant="dev", seed=3, prompt="a red fox"):
    params = TextToImageParams(prompt=prompt, variant=variant, width=64, height=64, steps=2, seed=seed)
    params = validate_text_to_image(params, registry.settings, registry.loras)
    return np.asarray(text_to_image(registry, params).images[0].image)


@pytest.mark.parametrize(
    ("card", "reported_gib", "expected"),
    [
        ("8 GB", 7.6, "offload-12gb"),
        ("12 GB", 11.6, "offload-12gb"),
        ("16 GB", 15.6, "offload-12gb"),
        ("24 GB", 23.6, "fp8-24gb"),
        ("40 GB", 39.4, "resident"),
        ("80 GB", 79.1, "resident"),
    ],
)
def test_policy_follows_the_gpus_memory(card, reported_gib, expected):
    policy, why = select_policy("cuda", int(reported_gib * GIB))
    assert policy.name == expected, card
    assert f"{reported_gib:.1f} GiB GPU" in why


def test_small_and_old_gpus_are_told_why():
    assert "below the 12 GB class" in select_policy("cuda", int(7.6 * GIB))[1]
    policy, why = select_policy("cuda", int(23.6 * GIB), fp8_capable=False)  # an RTX 3090: no float8
    assert policy.name == "offload-12gb" and "without float8 support" in why


def test_cpu_gets_the_cpu_policy():
    assert select_policy("cpu", None)[0].name == "cpu"
    assert select_policy("cpu", 64 * GIB)[0].name == "cpu"
    assert select_policy("mps", None)[0].name == "resident"
    s = settings_from_args(["--device", "cpu"])
    assert (s.memory_policy, s.policy_reason, s.gpu_transformers) == ("cpu", "device cpu", 1)


def test_invalid_policy_names_the_flag_and_the_choices(monkeypatch):
    with pytest.raises(ValueError, match="--memory-policy: unknown policy 'huge'; choose one of: auto, resident, "):
        settings_from_args(["--device", "cpu", "--memory-policy", "huge"])
    monkeypatch.setenv("FLUX_UI_MEMORY_POLICY", "fp8-24gb")
    with pytest.raises(ValueError, match="--memory-policy: 'fp8-24gb' needs a CUDA GPU; use 'cpu'"):
        settings_from_args(["--device", "cpu"])


def test_budgets_default_from_free_memory_and_can_be_set():
    assert default_ram_budget(100 * GIB) == 70 * GIB
    assert default_gpu_transformers("resident", int(78 * GIB)) == 2  # an idle 80 GB card keeps two
    assert default_gpu_transformers("resident", int(39 * GIB)) == 1
    assert default_gpu_transformers("fp8-24gb", int(78 * GIB)) == 1
    s = settings_from_args(["--device", "cpu", "--ram-budget-gb", "1.5", "--gpu-transformers", "2"])
    assert (s.ram_budget_bytes, s.gpu_transformers) == (int(1.5 * GIB), 2)
    with pytest.raises(ValueError, match="--ram-budget-gb: expected auto or a number of GiB >= 0, got 'lots'"):
        settings_from_args(["--device", "cpu", "--ram-budget-gb", "lots"])
    with pytest.raises(ValueError, match="--gpu-transformers: expected auto or a whole number >= 1, got '0'"):
        settings_from_args(["--device", "cpu", "--gpu-transformers", "0"])


def test_group_offloading_gives_the_same_image(settings):
    """offload-12gb on the CPU: the hooks onload to the CPU (no copies), so the output must not change."""
    reference = run(Registry(settings))
    registry = Registry(replace(settings, memory_policy="offload-12gb"))
    image = run(registry)
    np.testing.assert_array_equal(image, reference)
    st = registry.status()
    assert st["shared"]["text_encoder_2"] == "offloaded" and st["transformers"][0]["device"] == "offloaded"
    assert st["shared"]["text_encoder"] == "cpu"  # CLIP and the VAE stay resident
    offloaded = {"text_encoder_2", "transformer:dev"}
    assert not [m for m in registry.moves if m[0] in offloaded]  # the registry never moved them
    assert is_group_offloaded(registry.transformer("dev"))
    with registry.pipeline("schnell"):  # switching leaves the offloaded transformer where it is
        pass
    assert run(registry, "dev").tobytes() == reference.tobytes()


def test_fp8_policy_quantises_at_load_and_merges_loras(settings, tiny_lora_dir, monkeypatch):
    # The tiny models' layers are 32 wide; real FLUX layers are 3072 and up.
    monkeypatch.setattr(speed, "FP8_MIN_FEATURES", 16)
    registry = Registry(replace(settings, memory_policy="fp8-24gb", lora_dirs=(tiny_lora_dir,)))
    image = run(registry)
    assert image.shape == (64, 64, 3)
    transformer, t5 = registry.transformer("dev"), registry.shared().text_encoder_2
    for model in (transformer, t5):
        layers = [m for m in model.modules() if isinstance(m, Float8RowwiseLinear)]
        assert layers and all(m.weight_fp8.dtype == torch.float8_e4m3fn for m in layers)
    assert not any(isinstance(m, Float8RowwiseLinear) for m in registry.shared().text_encoder.modules())
    assert registry.status()["policy"] == "fp8-24gb"
    before = {k: v.clone() for k, v in transformer.state_dict().items()}
    with_lora = run(registry, prompt="a fox <lora:kohya-fox:1>")
    assert np.abs(with_lora.astype(int) - image.astype(int)).mean() > 1  # merged into the float8 weights
    np.testing.assert_array_equal(run(registry), image)
    after = transformer.state_dict()
    assert all(torch.equal(before[k].view(torch.uint8), after[k].view(torch.uint8)) for k in before)


def test_ram_budget_drops_the_least_recently_used_warm_transformer(settings):
    probe = Registry(settings)
    size = module_bytes(probe.transformer("dev"))
    registry = Registry(replace(settings, transformer_cache=4, ram_budget_bytes=int(1.5 * size)))
    for name in ("dev", "schnell", "dev"):  # dev is the most recent: schnell is the warm one
        registry.transformer(name)
    registry.transformer("krea-dev")  # warm: schnell + dev = 2 transformers > 1.5: schnell goes
    assert [t["variant"] for t in registry.status()["transformers"]] == ["dev", "krea-dev"]
    assert registry.status()["memory"]["warm_tier_mib"] == round(size / 2**20, 1)
    registry.transformer("schnell")
    assert registry.load_counts["transformer:schnell"] == 2 and registry.load_counts["transformer:dev"] == 1


def test_panel_lists_what_is_loaded_and_the_policy(settings, tiny_lora_dir):
    registry = Registry(replace(settings, lora_dirs=(tiny_lora_dir,), ram_budget_bytes=8 * GIB))
    registry.transformer("schnell")
    run(registry, prompt="a fox <lora:kohya-fox:0.8>")
    registry.aux("probe", "probe model", "tiny", "--probe", lambda: torch.nn.Linear(4, 4))
    st = registry.status()
    assert st["sizes_mib"]["transformer:dev"] > 0 and st["memory"]["ram"]["total_gib"] > 0
    text = residency.markdown(st)
    for words in (
        "`resident`",
        "transformer `dev` (active)",
        "transformer `schnell`",
        "T5-XXL text encoder",
        "CLIP-L text encoder",
        "VAE",
        "auxiliary `probe`",
        "kohya-fox",
        "budget 8.00 GiB",
        "**RAM:**",
    ):
        assert words in text, words
    registry.free_memory()
    assert "transformer `" not in residency.markdown(registry.status())
    assert set(POLICIES) == {"resident", "fp8-24gb", "offload-12gb", "cpu"}


def test_loras_under_group_offloading_give_the_resident_output(settings, tiny_lora_dir):
    """diffusers takes its offloading hooks off while it loads an adapter and puts them back."""
    lora = replace(settings, lora_dirs=(tiny_lora_dir,))
    prompt = "a fox <lora:kohya-fox:0.8>"
    reference = run(Registry(lora), prompt=prompt)
    registry = Registry(replace(lora, memory_policy="offload-12gb"))
    np.testing.assert_array_equal(run(registry, prompt=prompt), reference)
    assert is_group_offloaded(registry.transformer("dev"))
    np.testing.assert_array_equal(run(registry), run(Registry(settings)))  # and off again: the base output


@pytest.mark.parametrize(
    ("change", "blocker"),
    [
        ({"memory_policy": "fp8-24gb"}, "--memory-policy fp8-24gb"),
        ({"memory_policy": "offload-12gb"}, "--memory-policy offload-12gb"),
        ({"speed": "fp8"}, "the float8 layers of --speed fp8 (use --speed compile for this route)"),
    ],
)
def test_control_loras_are_refused_where_they_cannot_work(settings, change, blocker):
    from PIL import Image

    from flux_ui.tasks.control import ControlParams, control, validate_control

    params = ControlParams(prompt="a robot", image=Image.new("RGB", (64, 64)), steps=2, route="lora")
    registry = Registry(replace(settings, **change))
    with pytest.raises(InvalidInput, match=re.escape(f"route: BFL's control LoRAs do not work with {blocker}")):
        control(registry, validate_control(params, registry.settings))
    assert registry.status()["transformers"] == []  # refused before anything was loaded


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_cuda
def test_on_a_gpu_two_transformers_stay_and_the_least_recent_leaves(settings):
    registry = Registry(replace(settings, device="cuda", dtype=torch.bfloat16, gpu_transformers=2, transformer_cache=3))
    for name in ("dev", "schnell", "dev", "krea-dev"):  # krea-dev takes schnell's place, not dev's
        registry.transformer(name)
    where = {t["variant"]: t["device"] for t in registry.status()["transformers"]}
    assert where["schnell"] == "cpu" and where["dev"].startswith("cuda") and where["krea-dev"].startswith("cuda")
    size = module_bytes(registry.transformer("krea-dev"))
    tight = Registry(replace(registry.settings, gpu_transformers=1, ram_budget_bytes=size // 2))
    tight.transformer("dev")
    tight.transformer("schnell")  # dev exceeds the whole budget: dropped, never pinned
    assert [t["variant"] for t in tight.status()["transformers"]] == ["schnell"]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("policy", ["offload-12gb", "fp8-24gb"])
def test_on_a_gpu_each_policy_serves_an_image_close_to_resident(settings, policy, monkeypatch):
    monkeypatch.setattr(speed, "FP8_MIN_FEATURES", 16)
    gpu = replace(settings, device="cuda", dtype=torch.bfloat16)
    reference = run(Registry(gpu)).astype(float)
    registry = Registry(replace(gpu, memory_policy=policy))
    image = run(registry).astype(float)
    assert np.abs(image - reference).mean() < (1.0 if policy == "offload-12gb" else 12.0)
    devices = [t["device"] for t in registry.status()["transformers"]]
    assert devices == (["offloaded"] if policy == "offload-12gb" else ["cuda:0"])
