"""BFL's control-LoRA file layout, with the full-size FLUX.1 [dev] shapes (random values).

The tiny tests cannot use BFL's own key layout (diffusers' converter hard-codes the full model's block
counts and width), so this checks the real path: a file in BFL's layout is read and converted (on the
CPU, at a small rank), and on a GPU, at BFL's rank, applied to a full-size transformer and removed, the
transformer then bitwise as before.
"""

from __future__ import annotations

import logging
import time

import pytest
import torch

from flux_ui.models.loras import control as control_lora

log = logging.getLogger(__name__)


HIDDEN, MLP, HEAD = 3072, 12288, 128  # FLUX.1 width, MLP width, attention head size
RANK = 128  # as BFL's Canny/Depth LoRAs


def bfl_layout() -> dict[str, tuple[int, int]]:
    """(in, out) features of every Linear layer in BFL's naming, img_in widened to 128 inputs."""
    layers = {
        "time_in.in_layer": (256, HIDDEN),
        "time_in.out_layer": (HIDDEN, HIDDEN),
        "vector_in.in_layer": (768, HIDDEN),
        "vector_in.out_layer": (HIDDEN, HIDDEN),
        "guidance_in.in_layer": (256, HIDDEN),
        "guidance_in.out_layer": (HIDDEN, HIDDEN),
        "txt_in": (4096, HIDDEN),
        "img_in": (128, HIDDEN),
        "final_layer.linear": (HIDDEN, 64),
        "final_layer.adaLN_modulation.1": (HIDDEN, 2 * HIDDEN),
    }
    for i in range(19):
        for s in ("img", "txt"):
            layers[f"double_blocks.{i}.{s}_mod.lin"] = (HIDDEN, 6 * HIDDEN)
            layers[f"double_blocks.{i}.{s}_attn.qkv"] = (HIDDEN, 3 * HIDDEN)
            layers[f"double_blocks.{i}.{s}_attn.proj"] = (HIDDEN, HIDDEN)
            layers[f"double_blocks.{i}.{s}_mlp.0"] = (HIDDEN, MLP)
            layers[f"double_blocks.{i}.{s}_mlp.2"] = (MLP, HIDDEN)
    for i in range(38):
        layers[f"single_blocks.{i}.modulation.lin"] = (HIDDEN, 3 * HIDDEN)
        layers[f"single_blocks.{i}.linear1"] = (HIDDEN, 3 * HIDDEN + MLP)
        layers[f"single_blocks.{i}.linear2"] = (HIDDEN + MLP, HIDDEN)
    return layers


def bfl_lora_file(folder, name: str, rank: int = RANK, device: str = "cuda") -> None:
    from safetensors.torch import save_file

    g = torch.Generator(device).manual_seed(0)
    tensors = {}
    for layer, (fan_in, fan_out) in bfl_layout().items():
        tensors[f"{layer}.lora_A.weight"] = torch.randn(rank, fan_in, generator=g, device=device) / fan_in**0.5
        tensors[f"{layer}.lora_B.weight"] = torch.randn(fan_out, rank, generator=g, device=device) * 1e-3
        tensors[f"{layer}.lora_B.bias"] = torch.randn(fan_out, generator=g, device=device) * 1e-3
    norms = [
        f"double_blocks.{i}.{s}_attn.norm.{q}_norm.scale"
        for i in range(19)
        for s in ("img", "txt")
        for q in ("query", "key")
    ]
    norms += [f"single_blocks.{i}.norm.{q}_norm.scale" for i in range(38) for q in ("query", "key")]
    for key in norms:
        tensors[key] = 1 + 0.1 * torch.randn(HEAD, generator=g, device=device)
    save_file({k: v.to(torch.bfloat16).cpu() for k, v in tensors.items()}, folder / name)


def inputs(channels: int) -> dict[str, torch.Tensor]:
    g = torch.Generator("cuda").manual_seed(1)
    tokens = 32 * 32  # a 512x512 image
    return {
        "hidden_states": torch.randn(1, tokens, channels, generator=g, device="cuda", dtype=torch.bfloat16),
        "encoder_hidden_states": torch.randn(1, 64, 4096, generator=g, device="cuda", dtype=torch.bfloat16),
        "pooled_projections": torch.randn(1, 768, generator=g, device="cuda", dtype=torch.bfloat16),
        "timestep": torch.tensor([0.5], device="cuda", dtype=torch.bfloat16),
        "guidance": torch.tensor([30.0], device="cuda", dtype=torch.float32),
        "img_ids": torch.zeros(tokens, 3, device="cuda"),
        "txt_ids": torch.zeros(64, 3, device="cuda"),
    }


def test_bfl_layout_converts_to_every_layer_of_the_transformer(tmp_path):
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import load_file

    bfl_lora_file(tmp_path, "lora.safetensors", rank=2, device="cpu")
    raw = load_file(tmp_path / "lora.safetensors")
    state_dict = control_lora.read(str(tmp_path), "lora.safetensors")
    with torch.device("meta"):
        modules = dict(FluxTransformer2DModel(guidance_embeds=True).named_modules())
    linears = {name for name, m in modules.items() if isinstance(m, torch.nn.Linear)}
    covered = {k.removeprefix("transformer.").partition(".lora_")[0] for k in state_dict if ".lora_" in k}
    assert covered == linears
    assert sum(".norm_" in k and ".lora_" not in k for k in state_dict) == 19 * 4 + 38 * 2

    def delta(d: dict, prefix: str) -> torch.Tensor:
        return d[f"{prefix}.lora_B.weight"].float() @ d[f"{prefix}.lora_A.weight"].float()

    assert torch.equal(delta(state_dict, "transformer.x_embedder"), delta(raw, "img_in"))
    shift, scale = delta(raw, "final_layer.adaLN_modulation.1").chunk(2)  # BFL's order: (shift, scale)
    assert torch.allclose(delta(state_dict, "transformer.norm_out.linear"), torch.cat([scale, shift]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (full-size FLUX.1 transformer)")
def test_bfl_control_lora_on_the_full_size_transformer(tmp_path):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxControlPipeline, FluxTransformer2DModel

    bfl_lora_file(tmp_path, "flux1-canny-dev-lora.safetensors")
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            transformer = FluxTransformer2DModel(guidance_embeds=True).eval().requires_grad_(False)  # [dev] config
    finally:
        torch.set_default_dtype(torch.float32)
    pipe = FluxControlPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=None,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=transformer,
    )
    with torch.inference_mode():
        reference = transformer(**inputs(64), return_dict=False)[0]
    params_before = {k: v.clone() for k, v in transformer.state_dict().items()}

    t = time.perf_counter()
    state_dict = control_lora.read(str(tmp_path), "flux1-canny-dev-lora.safetensors")
    read_s = time.perf_counter() - t
    before = control_lora.snapshot(transformer, "canny-dev-lora")
    t = time.perf_counter()
    control_lora.apply(pipe, state_dict, "canny-dev-lora")
    torch.cuda.synchronize()
    apply_s = time.perf_counter() - t
    assert transformer.x_embedder.in_features == 128 and transformer.config.in_channels == 128
    with torch.inference_mode():
        controlled = transformer(**inputs(128), return_dict=False, joint_attention_kwargs={"scale": 0.85})[0]
    assert controlled.shape == reference.shape and torch.isfinite(controlled).all()

    t = time.perf_counter()
    assert control_lora.remove(transformer, before)
    torch.cuda.synchronize()
    remove_s = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() / 2**30
    log.info("BFL layout: read %.2f s, apply %.2f s, remove %.2f s, peak %.1f GiB", read_s, apply_s, remove_s, peak)

    params_after = transformer.state_dict()
    assert params_after.keys() == params_before.keys()
    assert all(torch.equal(params_before[k], params_after[k]) for k in params_before)
    with torch.inference_mode():
        assert torch.equal(transformer(**inputs(64), return_dict=False)[0], reference)
