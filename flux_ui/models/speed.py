"""Speed profiles: which diffusers / torch / torchao features make the FLUX transformer and VAE fast.

A profile is a named configuration, chosen once at start-up from the device and applied by the registry
to every model it loads:

- `off`: plain eager diffusers (the CPU default; also for debugging).
- `compile`: a channels-last VAE with fused attention projections, and regional
  `torch.compile` of the repeated transformer blocks (one compile per block type, so the first image
  costs seconds to tens of seconds instead of minutes, and the inductor cache makes restarts cheap).
- `fp8`: `compile` plus float8 row-wise dynamic quantisation of the transformer's large linear layers
  (weights and activations in float8 on the tensor cores, bf16 out). Needs compute capability 8.9+
  (Ada, Hopper).

With either compiled profile, LoRAs are merged into the weights per request (`lora_merge`), so changing
LoRAs never recompiles.

Every piece but the float8 linear layer is a library feature (see Float8RowwiseLinear for why that one
is not); this module decides which ones and in what order (quantise before compiling, so the compiled
graph sees the float8 layers).
"""

from __future__ import annotations

import logging
import time

import torch

from flux_ui.models import quantized

log = logging.getLogger(__name__)

# PyTorch SDPA as dispatched by default (flash attention on Hopper). On an H100 (torch 2.11) its cuDNN
# backend was slower for FLUX's shapes: 0.199 vs 0.190 s per step eager, 4.07 vs 4.02 s per image compiled.
ATTENTION_BACKEND = "native"
# Linear layers smaller than this (in either dimension) stay in bf16: float8 scaling costs more than it
# saves on them, and the time/guidance embedders are among them.
FP8_MIN_FEATURES = 1024


def _fp8_filter(module: torch.nn.Module, fqn: str) -> bool:
    return (
        isinstance(module, torch.nn.Linear)
        # T5 keeps its feed-forward output projections ("wo") in float32 and reads their weight dtype.
        and not fqn.endswith(".wo")
        and module.in_features >= FP8_MIN_FEATURES
        and module.out_features >= FP8_MIN_FEATURES
        and module.in_features % 16 == 0
        and module.out_features % 16 == 0
        # Weights held quantised by a file's format (GGUF blocks, NF4) are bytes, not floats to convert.
        and module.weight.dtype.is_floating_point
    )


FP8_MAX = 448.0  # largest finite float8_e4m3fn value


def _rowwise_fp8_matmul(x2: torch.Tensor, weight_fp8: torch.Tensor, weight_scale: torch.Tensor) -> torch.Tensor:
    """(tokens, in) @ W.T in float8: each token scaled to float8 by its largest value, into x2's dtype."""
    scale = x2.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX  # (tokens, 1)
    x8 = (x2 / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return torch._scaled_mm(x8, weight_fp8.t(), scale_a=scale, scale_b=weight_scale, out_dtype=x2.dtype)


class _Float8MatmulInputGrad(torch.autograd.Function):
    """The float8 matmul with a backward pass for its input (the weights are frozen): training a LoRA on
    the layers before a float8 layer needs the gradient through it. PyTorch has no derivative for
    `torch._scaled_mm`; the input's gradient is grad @ W with W dequantised to the gradient's dtype (bf16
    under autocast), one layer's worth at a time."""

    @staticmethod
    def forward(ctx, x2: torch.Tensor, weight_fp8: torch.Tensor, weight_scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weight_fp8, weight_scale)
        return _rowwise_fp8_matmul(x2, weight_fp8, weight_scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight_fp8, weight_scale = ctx.saved_tensors
        weight = weight_fp8.to(grad.dtype) * weight_scale.reshape(-1, 1).to(grad.dtype)  # (out, in)
        return grad @ weight, None, None


class Float8RowwiseLinear(torch.nn.Module):
    """A linear layer with float8 (e4m3) weights scaled per output row and activations scaled per token
    on the fly, multiplied by `torch._scaled_mm` into bf16.

    This is the arithmetic of torchao's `Float8DynamicActivationFloat8WeightConfig(PerRow())`, on plain
    tensors. torchao keeps its weights in tensor subclasses, which regional torch.compile traced for 227 s
    on an H100 (and 110 s again with a warm cache) against 15 s for bf16; plain float8 buffers compile as
    fast as bf16 and can live in the pinned warm tier like any other weights.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        w = weight.detach().float()
        scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / FP8_MAX  # (out, 1)
        self._hold((w / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale, bias)

    def _hold(self, weight_fp8: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        torch.nn.Module.__init__(self)
        self.in_features, self.out_features = weight_fp8.shape[1], weight_fp8.shape[0]
        self.register_buffer("weight_fp8", weight_fp8)
        self.register_buffer("weight_scale", scale.float().reshape(1, -1).contiguous())  # (1, out), for _scaled_mm
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear) -> Float8RowwiseLinear:
        return cls(linear.weight, linear.bias)

    @classmethod
    def from_float8(cls, weight_fp8: torch.Tensor, row_scale: torch.Tensor, bias: torch.Tensor | None):
        """A layer holding float8_e4m3fn weights as they are (a file's), weight = value x its row's scale
        (`row_scale`: one per output row, or per-tensor scales repeated): nothing is requantised."""
        layer = cls.__new__(cls)
        layer._hold(weight_fp8, row_scale, bias)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):
            # As autocast casts a Linear's input; training's LayerNorms hand float32 on, and row-wise scaled
            # `_scaled_mm` writes only bf16 on CUDA.
            x = x.to(torch.get_autocast_dtype(x.device.type))
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if x2.requires_grad and torch.is_grad_enabled():  # training a LoRA around it: see the Function
            out = _Float8MatmulInputGrad.apply(x2, self.weight_fp8, self.weight_scale)
        else:
            out = _rowwise_fp8_matmul(x2, self.weight_fp8, self.weight_scale)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*shape[:-1], self.out_features)


def quantize_fp8(model: torch.nn.Module, device: str | None = None) -> int:
    """Replace the model's large linear layers by Float8RowwiseLinear, in place; returns how many.

    With `device`, each layer is moved there before it is quantised (and the float8 layer stays there), so
    a model loaded into RAM reaches the GPU with at most one of its layers in its original dtype at a time.
    """
    # Names, not modules: a list of the layers would keep every original-dtype weight alive to the end of the
    # loop, the whole model beside its float8 copy (FLUX.2 [dev]: 64 + 32 GB, more than beside its encoder fits).
    targets = [name for name, m in model.named_modules() if _fp8_filter(m, name)]
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear = getattr(parent, child)
        weight, bias = linear.weight, linear.bias
        if device is not None:
            # Copies, not `linear.to(device)`: that would move the module itself.
            weight = weight.to(device)
            bias = None if bias is None else bias.to(device)
        setattr(parent, child, Float8RowwiseLinear(weight, bias))
        del weight, bias, linear  # the original layer goes now, not at the end of the loop
    return len(targets)


def optimize_transformer(
    transformer: torch.nn.Module, profile: str, dynamic: bool | None = True, fuse_qkv: bool = False
) -> torch.nn.Module:
    """Apply `profile` to a FluxTransformer2DModel already on its GPU; returns it (changed in place).

    `dynamic=True` compiles for any sequence length at once, so switching among resolutions (or to
    Kontext's longer sequences) never recompiles; None lets torch specialise on the first shape and
    recompile once, dynamically, at the first different one. `fuse_qkv` is off: on an H100 with the fp8
    profile it changed nothing (3.23 s per image either way) but kept 2 GiB of unfused weights besides.
    """
    if profile == "off":
        return transformer
    if quantized.is_prequantized(transformer):
        # A GGUF file's layers dequantise their weights on every call: float8 would need a second copy, and
        # regional compile of those layers is unmeasured; the attention backend still applies.
        transformer.set_attention_backend(ATTENTION_BACKEND)
        log.info("speed profile %s: the transformer is kept as its quantised file holds it (no float8, no "
                 "compile)", profile)  # fmt: skip
        return transformer
    start = time.perf_counter()
    if fuse_qkv:
        transformer.fuse_qkv_projections()
    transformer.set_attention_backend(ATTENTION_BACKEND)
    if profile == "fp8":
        quantize_fp8(transformer)
    # Python floats reaching the blocks stay symbolic by default; inductor's scalar pass then gives up on
    # one and dynamo starts the whole trace over with floats specialised ("Restarting analysis due to
    # _tensorify_python_scalars"), so each block type was traced and lowered twice, on every start, even
    # with a warm compile cache. Specialising at once skips the wasted attempt (measured on the tiny
    # [dev] blocks: 32 s of compile-time work down to 19 s with a warm cache, the images bit-identical,
    # no recompiles between steps: the floats are the same on every call). Global, but read only when
    # something is traced, and the blocks are the only thing the app compiles for inference.
    import torch._dynamo.config as dynamo_config

    dynamo_config.specialize_float = True
    # Regional compilation: each repeated block type is compiled once and reused by all its instances.
    transformer.compile_repeated_blocks(fullgraph=True, dynamic=dynamic)
    log.info(
        "speed profile %s applied to the transformer in %.1f s (compiles on first use)",
        profile,
        time.perf_counter() - start,
    )
    return transformer


def optimize_vae(vae: torch.nn.Module, profile: str) -> torch.nn.Module:
    """Channels-last memory format and fused attention projections for the VAE (its convolutions dominate)."""
    if profile == "off":
        return vae
    vae.fuse_qkv_projections()
    vae.to(memory_format=torch.channels_last)
    return vae
