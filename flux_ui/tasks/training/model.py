"""The model side of training: the frozen base transformer (bf16, float8 or 4-bit NF4 for small cards), the PEFT
LoRA on its attention and MLP projections, the optimizer, and the flow-matching loss of one batch.

The loss follows diffusers' `examples/dreambooth/train_dreambooth_lora_flux.py`: noise and clean latents are
mixed linearly at sigma, the transformer predicts the velocity (noise - latents), and the squared error is
weighted by `compute_loss_weighting_for_sd3`.
"""

from __future__ import annotations

import logging
import warnings

import torch

log = logging.getLogger(__name__)

ADAPTER = "flux_ui_train"  # the PEFT adapter's name while it trains
# Attention and MLP projections of both block types (PEFT full-matches a string against module names):
# double blocks' image and text attention, their feed-forwards; single blocks' q/k/v, MLP in and fused out.
# The list of diffusers' FLUX LoRA script, plus the single blocks' proj_mlp/proj_out (the issue's "MLP
# projections"; kohya's FLUX LoRAs train them too, as linear1/linear2). The model's own top-level
# proj_out (latents out) is left alone.
TARGET_MODULES = (
    r"(transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
    r"|ff\.net\.(0\.proj|2)|ff_context\.net\.(0\.proj|2))"
    r"|single_transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v)|proj_mlp|proj_out))"
)
# Timesteps are drawn logit-normal (sigma = sigmoid(N(0, 1))), the SD3 paper's best schedule for
# rectified flow ("rf/lognorm(0.00, 1.00)", Esser et al. 2024, table 1) and kohya's `sigmoid` sampling for
# FLUX: it spends the steps on middle noise levels, where the image's content is decided, rather than on
# the nearly clean or nearly pure-noise ends. (diffusers' script defaults to "none", uniform sigmas; it
# offers logit_normal as an option.) With this scheme the loss weighting is uniform.
WEIGHTING_SCHEME = "logit_normal"
LOGIT_MEAN, LOGIT_STD = 0.0, 1.0
GUIDANCE = 3.5  # the distilled guidance [dev] is trained at, as diffusers' script passes it (--guidance_scale)
WEIGHT_DECAY = 1e-4  # diffusers' script's AdamW default
MAX_GRAD_NORM = 1.0


def block_linears(model: torch.nn.Module) -> list[tuple[str, str]]:
    """(parent module name, attribute) of every Linear in the transformer blocks: 99% of the weights."""
    found = []
    for name, parent in model.named_modules():
        if name.startswith(("transformer_blocks.", "single_transformer_blocks.")):
            found += [(name, attr) for attr, child in parent.named_children() if type(child) is torch.nn.Linear]
    return found


def quantize_nf4(model: torch.nn.Module, device: str, compute_dtype: torch.dtype) -> int:
    """Replace the blocks' Linear layers by bitsandbytes' 4-bit NF4 layers, each quantised as it reaches
    `device` (so the device never holds the bf16 model), and move the rest there; return the layers done.

    diffusers quantises with bitsandbytes only while loading from a diffusers folder (`from_pretrained`
    with a BitsAndBytesConfig); the transformer here may come from a single file, so its layers are
    swapped one by one, as that loader does. Each bf16 layer is dropped as soon as its 4-bit one is in."""
    import bitsandbytes as bnb

    names = block_linears(model)
    for parent_name, attr in names:
        parent = model.get_submodule(parent_name)
        linear = getattr(parent, attr)
        q = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            compute_dtype=compute_dtype,
            quant_type="nf4",
            device="meta",
        )
        q.weight = bnb.nn.Params4bit(linear.weight.data.to(compute_dtype), requires_grad=False, quant_type="nf4")
        if linear.bias is not None:
            q.bias = torch.nn.Parameter(linear.bias.data.to(device, compute_dtype), requires_grad=False)
        del linear
        setattr(parent, attr, q.to(device))
    model.to(device)
    return len(names)


def quantize_float8(model: torch.nn.Module, device: str) -> int:
    """Replace the blocks' Linear layers by float8 ones (`Float8RowwiseLinear`, the fp8 speed profile's
    layer: weights scaled per output row, activations per token, multiplied by `torch._scaled_mm`), each
    moved to `device` and quantised there, and move the rest there; return the layers done. The layer
    passes gradients to its input, so LoRAs before it train; torchao, the library for this, is no
    dependency of the app."""
    from flux_ui.models.speed import Float8RowwiseLinear

    names = block_linears(model)
    for parent_name, attr in names:
        parent = model.get_submodule(parent_name)
        linear = getattr(parent, attr)
        bias = None if linear.bias is None else linear.bias.to(device)
        setattr(parent, attr, Float8RowwiseLinear(linear.weight.to(device), bias))
        del linear, bias  # the bf16 layer goes now, not at the end of the loop
    model.to(device)
    return len(names)


def add_lora(model: torch.nn.Module, rank: int) -> list[torch.nn.Parameter]:
    """A PEFT LoRA of `rank` (alpha = rank) on TARGET_MODULES, its parameters in float32 on the model's device
    (the base stays in its dtype); returns them. Gaussian init of A and zero B, as diffusers' script: the
    LoRA starts as a no-op."""
    from peft import LoraConfig
    from peft.tuners.lora.layer import Linear as LoraLinear

    from flux_ui.models.speed import Float8RowwiseLinear

    model.requires_grad_(False)
    device = next(model.parameters()).device
    config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=TARGET_MODULES)
    # PEFT wraps nn.Linear and the quantised layers it knows; a float8 layer (see quantize_float8) gets its
    # plain LoRA Linear through PEFT's custom-module dispatch, which reads in/out_features from the layer.
    config._register_custom_module({Float8RowwiseLinear: LoraLinear})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Unsupported layer type", category=UserWarning)
        model.add_adapter(config, adapter_name=ADAPTER)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.to(device, torch.float32)  # PEFT cannot tell a float8 layer's device; it is the model's
    return params


def compile_blocks(model: torch.nn.Module, backend: str = "inductor") -> None:
    """Regional torch.compile of the repeated blocks (diffusers' `compile_repeated_blocks`: one compile per
    block type, shared by its 57 instances), LoRA layers inside; the backward pass is compiled with them.
    Not fullgraph: a 4-bit base's bitsandbytes layers may break the graph. Compiles at the first step
    (about a minute for FLUX.1 at full size), again at the first step of a second bucket size (then for any
    size) and for the sample images (no gradients)."""
    model.compile_repeated_blocks(fullgraph=False, backend=backend)


def lora_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA's tensors in PEFT's naming ("transformer_blocks.0.attn.to_q.lora_A.weight"), on the CPU."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(model, adapter_name=ADAPTER)
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def load_lora_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, state, adapter_name=ADAPTER)
    missing = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if missing:
        raise ValueError(f"checkpoint: {len(missing)} LoRA tensors do not fit the model, e.g. {missing[0]}")


def optimizer(params: list[torch.nn.Parameter], kind: str, lr: float, device: str) -> torch.optim.Optimizer:
    """8-bit AdamW (bitsandbytes) where it runs, on CUDA; else torch's AdamW. Returns what it built."""
    if kind == "adamw8bit" and torch.device(device).type == "cuda":
        try:
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=WEIGHT_DECAY)
        except (ImportError, RuntimeError) as err:
            log.warning("8-bit AdamW unavailable (%s); using AdamW", err)
    return torch.optim.AdamW(params, lr=lr, weight_decay=WEIGHT_DECAY)


def flow_matching_loss(
    model: torch.nn.Module,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    pooled: torch.Tensor,
    sigmas_table: torch.Tensor,
    gen: torch.Generator,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The loss of one batch: `latents` (B, 16, h, w), embeddings (B, tokens, 4096) and (B, 768), all on the
    model's device; `sigmas_table` the scheduler's training sigmas (1000 of them, largest first); noise and
    timesteps from `gen`."""
    from diffusers import FluxPipeline
    from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

    b, c, h, w = latents.shape
    device = latents.device
    noise = torch.randn(latents.shape, generator=gen).to(device)
    u = compute_density_for_timestep_sampling(WEIGHTING_SCHEME, b, LOGIT_MEAN, LOGIT_STD, generator=gen)
    indices = (u * len(sigmas_table)).long().clamp(max=len(sigmas_table) - 1)
    sigmas = sigmas_table[indices].to(device, torch.float32).view(b, 1, 1, 1)
    noisy = (1.0 - sigmas) * latents + sigmas * noise
    packed = FluxPipeline._pack_latents(noisy, b, c, h, w)
    img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, device, dtype)
    txt_ids = torch.zeros(prompt_embeds.shape[1], 3, device=device, dtype=dtype)
    guidance = torch.full((b,), GUIDANCE, device=device) if model.config.guidance_embeds else None
    pred = model(
        hidden_states=packed.to(dtype),
        timestep=sigmas.flatten().to(dtype),  # the transformer takes t/1000 = sigma
        guidance=guidance,
        pooled_projections=pooled.to(dtype),
        encoder_hidden_states=prompt_embeds.to(dtype),
        txt_ids=txt_ids,
        img_ids=img_ids,
        return_dict=False,
    )[0]
    pred = FluxPipeline._unpack_latents(pred, h * 8, w * 8, 8)  # pixel sides, with the VAE's 8x
    weighting = compute_loss_weighting_for_sd3(WEIGHTING_SCHEME, sigmas)
    target = noise - latents
    return (weighting * (pred.float() - target) ** 2).reshape(b, -1).mean(1).mean()
