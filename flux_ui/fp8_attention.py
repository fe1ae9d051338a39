"""Low-precision attention for FLUX on Hopper: Q K^T and P V on the 8-bit tensor cores, written in Triton.

PyTorch's SDPA runs attention in bf16 (FlashAttention-2 class). FlashAttention-3's float8 path would do
better on Hopper but has no wheel for the torch we use, and diffusers' 8-bit backends (SageAttention) need
their own CUDA builds; this module brings the same arithmetic through Triton, which ships with torch:

- `fp8_attention(q, k, v)`: non-causal, unmasked attention with softmax scale 1 / sqrt(head_dim), bf16 (or
  fp16) in and out, head dim 128. It quantises Q per token and K per 128-key block after subtracting its
  mean over the sequence (exact for softmax) to int8 by default (float8 e4m3 on request), V per channel to
  float8 around each channel's middle, and P to float8 as P * 448 (see fp8_attention_kernels).
- `torch.ops.flux_ui.fp8_attention`: the same as one opaque op on (batch, seq, heads, dim) tensors, the
  layout diffusers' processors hold, so torch.compile(fullgraph=True, dynamic=True) keeps it whole with a
  symbolic sequence length. Registering it runs at import (it only records the op's schema).
- `use_fp8_attention(transformer)`: makes every unmasked attention of a FluxTransformer2DModel use it.
- `fp8_attention_available()`: whether this machine can run it.

Measured on an H100 (torch 2.11, triton 3.6; bench/attention.py, device time through CUDA graphs), batch 1,
24 heads: the attention kernel alone runs at 713 TFLOP/s for 4608 tokens and 722-742 for 8704, against 605
and 594 for SDPA; the quantisation before it cost 0.11 ms (4608) and 0.20 ms (8704), which at 4608 ate
the whole gain (0.468 ms a call against SDPA's 0.431). Those quantisation figures are for statistics
computed by one program per head and 32 channels; the chunked statistics in place now spread that pass
over the whole GPU and have not been timed yet. L2 error against fp32 attention on FLUX-like
inputs: 3.4-3.8% with int8 Q/K codes, 5.7-9.4% with float8 ones, 0.17% for bf16 SDPA.

Importing this module needs neither triton nor CUDA; the kernels load on first use.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Callable

import torch
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor, _get_qkv_projections

log = logging.getLogger(__name__)

HEAD_DIM = 128  # the only head size tested (FLUX's); the kernel's tiles are sized for it
# Float8 tensor-core products need Ada (8.9) or Hopper (9.0); Hopper is the one measured.
MIN_CAPABILITY = (8, 9)


def fp8_attention_available() -> bool:
    """True where the kernel can run: a CUDA GPU of compute capability 8.9 or newer, and triton importable."""
    return (
        torch.cuda.is_available()
        and torch.cuda.get_device_capability() >= MIN_CAPABILITY
        and importlib.util.find_spec("triton") is not None
    )


# Codes for Q and K: float8 e4m3 (FlashAttention-3's choice) or int8 (SageAttention's: the same tensor-core
# rate on Hopper, 7 bits of precision against float8's 4 for the logits). On an H100 both ran within 3% of
# each other, and int8 halved the error (3.6% against 6-9% L2 on FLUX-like inputs), so it is the default.
# P and V are float8 either way.
QK_CODES = {"fp8": (torch.float8_e4m3fn, 448.0), "int8": (torch.int8, 127.0)}
DEFAULT_QK = "int8"


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _quantize(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, qk: str = DEFAULT_QK, pv_dtype: torch.dtype | None = None
) -> tuple:
    """Low-precision copies of q, k, v (batch, seq, heads, dim) and their fp32 scales, padded to whole blocks.

    `qk` picks Q and K's codes (QK_CODES); `pv_dtype` is V's (float8 e4m3 unless given: the interpreter test
    passes float16, as Triton's CPU interpreter rounds float8 wrongly). Returns (q8, k8, v8t, q_scale,
    k_scale, v_mid, v_half, qk_max, s_pad): q8, k8 (batch, heads, s_pad, dim), v8t (batch, heads, dim,
    s_pad), q_scale (batch, heads, s_pad), k_scale (batch, heads, s_pad / 128), v_mid, v_half (batch,
    heads, dim). Two Triton launches: partial per-channel statistics of K and V over chunks of the sequence
    (for K's mean and V's channel range), then one pass that reads each input once and writes the codes.
    """
    from flux_ui import fp8_attention_kernels as kern

    if qk not in QK_CODES:
        raise ValueError(f"fp8_attention: qk must be one of {', '.join(QK_CODES)}; got {qk!r}")
    qk_dtype, qk_max = QK_CODES[qk]
    pv_dtype = pv_dtype or torch.float8_e4m3fn
    b, s, h, d = q.shape
    s_pad = _cdiv(s, kern.QBLOCK) * kern.QBLOCK
    dev = q.device
    n_chunks = _cdiv(s, kern.STATS_CHUNK)
    part = torch.empty((3, b * h, n_chunks, d), device=dev, dtype=torch.float32)
    kern._stats_kernel[(b * h, n_chunks)](
        k, v, part, *k.stride()[:3], *v.stride()[:3], h, s, n_chunks,
        HEAD_DIM=d, CHUNK=kern.STATS_CHUNK, BLOCK_S=kern.STATS_BLOCK_S, num_warps=4,
    )  # fmt: skip
    v_mid, v_half = torch.empty((2, b, h, d), device=dev, dtype=torch.float32)
    q8, k8 = torch.empty((2, b, h, s_pad, d), device=dev, dtype=qk_dtype)
    v8t = torch.empty((b, h, d, s_pad), device=dev, dtype=pv_dtype)
    q_scale = torch.empty((b, h, s_pad), device=dev, dtype=torch.float32)
    k_scale = torch.empty((b, h, s_pad // kern.QBLOCK), device=dev, dtype=torch.float32)
    kern._quantize_kernel[(s_pad // kern.QBLOCK, b * h, 3)](
        q, k, v, part, v_mid, v_half, q8, k8, v8t, q_scale, k_scale,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
        h, s, s_pad, n_chunks, kern.LOG2E / math.sqrt(d),
        HEAD_DIM=d, BLOCK=kern.QBLOCK, QK_MAX=qk_max, FP8_MAX=kern.FP8_MAX, num_warps=8,
    )  # fmt: skip
    return q8, k8, v8t, q_scale, k_scale, v_mid, v_half, qk_max, s_pad


def _attention_quantized(quantized: tuple, out: torch.Tensor, config: dict | None = None) -> torch.Tensor:
    """The attention kernel alone, on `_quantize`'s output, into `out` (batch, seq, heads, dim).

    `config` ({"BLOCK_M", "BLOCK_N", "num_warps", "num_stages"}) skips the autotuner (benchmarks, the
    interpreter); without it the kernel tunes itself once per sequence-length bucket (power of two), which
    takes a few seconds the first time (the compiled kernels are cached on disk by Triton).
    """
    from flux_ui import fp8_attention_kernels as kern

    q8, k8, v8t, q_scale, k_scale, v_mid, v_half, qk_max, s_pad = quantized
    b, s, h, d = out.shape
    args = (q8, k8, v8t, q_scale, k_scale, v_mid, v_half, out, *out.stride()[:3], h, s, s_pad)
    bucket = 1 << max(s - 1, 1).bit_length()
    consts = {"HEAD_DIM": d, "QBLOCK": kern.QBLOCK, "QK_MAX": qk_max, "FP8_MAX": kern.FP8_MAX}
    if config is None and out.device.type == "cpu":
        config = kern.INTERPRETER_CONFIG  # Triton's CPU interpreter cannot time configs
    if config is None:
        kern._attn_fwd_tuned[lambda meta: (_cdiv(s, meta["BLOCK_M"]), b * h)](*args, bucket, **consts)
    else:
        kern._attn_fwd_kernel[(_cdiv(s, config["BLOCK_M"]), b * h)](*args, bucket, **consts, **config)
    return out


def attention_bshd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    qk: str = DEFAULT_QK,
    config: dict | None = None,
    pv_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Low-precision attention on (batch, seq, heads, dim) tensors of any strides; returns a new contiguous
    tensor of that shape and q's dtype. Eager; the op below wraps it for torch.compile. `qk`, `config`,
    `pv_dtype`: see `_quantize` and `_attention_quantized` (the defaults are the op's)."""
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    out = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    return _attention_quantized(_quantize(q, k, v, qk, pv_dtype), out, config)


@torch.library.custom_op("flux_ui::fp8_attention", mutates_args=())
def _fp8_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # custom_op rather than triton_op: the op stays one opaque call for dynamo and inductor (the autotuner
    # and the launch arithmetic need no tracing), at the cost of one Python call per attention: about
    # 0.3 ms of host time on the H100's machine, hidden inside a compiled step, where the host runs ahead.
    return attention_bshd(q, k, v)


@_fp8_attention_op.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return q.new_empty(q.shape)  # contiguous, like the real output; the sequence length stays symbolic


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"fp8_attention: q, k, v must share one 4-d shape; got {q.shape}, {k.shape}, {v.shape}")
    if q.shape[-1] != HEAD_DIM:
        raise ValueError(f"fp8_attention: head dim must be {HEAD_DIM}; got {q.shape[-1]}")
    if q.dtype not in (torch.bfloat16, torch.float16) or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"fp8_attention: dtype must be bfloat16 or float16; got {q.dtype}, {k.dtype}, {v.dtype}")


def fp8_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: str = "bhsd") -> torch.Tensor:
    """Softmax(q k^T / sqrt(128)) v, non-causal and unmasked, with Q K^T in int8 and P V in float8.

    q, k, v: bf16 or fp16 CUDA tensors of one shape, (batch, heads, seq, 128) for layout "bhsd" (SDPA's)
    or (batch, seq, heads, 128) for "bshd" (what diffusers' processors hold; no copy is made either way).
    Any sequence length >= 1. Returns q's dtype and layout ("bhsd" as a transposed view of a (batch, seq,
    heads, dim) tensor). L2 relative error against fp32 attention: about 4% on FLUX-like inputs (V and P
    keep float8's 3 mantissa bits).
    """
    if layout not in ("bhsd", "bshd"):
        raise ValueError(f"fp8_attention: layout must be 'bhsd' or 'bshd'; got {layout!r}")
    _check(q, k, v)
    if layout == "bshd":
        return torch.ops.flux_ui.fp8_attention(q, k, v)
    return torch.ops.flux_ui.fp8_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


class Fp8FluxAttnProcessor(FluxAttnProcessor):
    """diffusers' FluxAttnProcessor with `fp8_attention` wherever it gets no attention mask.

    A processor rather than a diffusers attention backend: backends are members of a closed enum
    (`AttentionBackendName`) that `dispatch_attention_fn` looks up, so adding one means patching diffusers
    globally; a processor changes only the model it is set on. Its body repeats FluxAttnProcessor's
    (diffusers 0.42.1, pinned) with the dispatch call swapped; tests check it against the original.
    Masked calls go to the original unchanged.
    """

    def __init__(self, attention: Callable[..., torch.Tensor] | None = None):
        super().__init__()
        # (batch, seq, heads, dim) attention; tests put a reference in, the default is the float8 op.
        self.attention = attention

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if attention_mask is not None or attn.head_dim != HEAD_DIM:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        query, key, value, encoder_query, encoder_key, encoder_value = _get_qkv_projections(
            attn, hidden_states, encoder_hidden_states
        )
        query = attn.norm_q(query.unflatten(-1, (-1, attn.head_dim)))
        key = attn.norm_k(key.unflatten(-1, (-1, attn.head_dim)))
        value = value.unflatten(-1, (-1, attn.head_dim))
        if attn.added_kv_proj_dim is not None:
            encoder_query = attn.norm_added_q(encoder_query.unflatten(-1, (-1, attn.head_dim)))
            encoder_key = attn.norm_added_k(encoder_key.unflatten(-1, (-1, attn.head_dim)))
            encoder_value = encoder_value.unflatten(-1, (-1, attn.head_dim))
            query = torch.cat([encoder_query, query], dim=1)
            key = torch.cat([encoder_key, key], dim=1)
            value = torch.cat([encoder_value, value], dim=1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        attention = self.attention or torch.ops.flux_ui.fp8_attention
        hidden_states = attention(query, key, value).flatten(2, 3).to(query.dtype)

        if encoder_hidden_states is not None:
            encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
                [encoder_hidden_states.shape[1], hidden_states.shape[1] - encoder_hidden_states.shape[1]], dim=1
            )
            hidden_states = attn.to_out[1](attn.to_out[0](hidden_states.contiguous()))
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states.contiguous())
            return hidden_states, encoder_hidden_states
        return hidden_states


def use_fp8_attention(model: torch.nn.Module, attention: Callable[..., torch.Tensor] | None = None) -> int:
    """Give every FluxAttnProcessor in `model` (a FluxTransformer2DModel, or any module holding FLUX
    blocks) float8 attention, in place; returns how many attention layers changed.

    Other processors (IP-Adapter's, say) stay. Keeps each processor's attention backend (used for masked
    calls). Call it before torch.compile (the speed profile's compile_repeated_blocks) so the compiled
    graphs hold the op. `attention` replaces the float8 op (tests only). Raises RuntimeError where
    `fp8_attention_available()` is False and no `attention` is given.
    """
    if attention is None and not fp8_attention_available():
        raise RuntimeError(
            "fp8_attention: needs a CUDA GPU of compute capability 8.9+ and triton; "
            f"cuda={torch.cuda.is_available()}, triton={importlib.util.find_spec('triton') is not None}"
        )
    replaced = 0
    for module in model.modules():
        proc = getattr(module, "processor", None)
        if type(proc) is FluxAttnProcessor:
            new = Fp8FluxAttnProcessor(attention)
            new._attention_backend = proc._attention_backend
            new._parallel_config = proc._parallel_config
            module.set_processor(new)
            replaced += 1
    log.info("float8 attention set on %d attention layers", replaced)
    return replaced
