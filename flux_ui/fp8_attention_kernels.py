"""Triton kernels behind `flux_ui.fp8_attention`: quantisation and an 8-bit flash-attention forward.

Imported only when the op runs (it needs triton); `flux_ui.fp8_attention` is the interface.

Statistics (`_stats_kernel`): per-channel sums of K and ranges of V over chunks of the sequence.
Quantisation (`_quantize_kernel`, one launch for Q, K and V), per (batch, head):
- Q: one scale per token (row amax / QK_MAX). The softmax scale and log2(e) live in that fp32 scale, so
  the attention kernel turns a logit into an exp2 argument with one FMA.
- K: minus its mean over the sequence first (SageAttention's smoothing: it adds the same q.mean to every
  logit of a query row, which softmax cancels exactly, and it removes the large shared offsets that K
  channels carry, so the code range goes to what differs between keys), then one scale per QBLOCK keys.
  Q and K codes are int8 (QK_MAX 127) or float8 e4m3 (QK_MAX 448).
- V: float8, minus the middle of each channel's range and scaled by half that range (exact: the middle
  comes back after normalisation, since each row of P sums to 1), so an outlier channel costs only its
  own precision; stored transposed (batch, head, dim, seq) because Hopper's 8-bit tensor-core products
  read their second operand along the reduction axis (here: keys) from contiguous memory.
Each output is padded with zeros to a multiple of QBLOCK tokens, so the attention kernel loads whole tiles.

Attention (`_attn_fwd_kernel`), FlashAttention-2 loop in Triton: S = Q8 K8^T (int32 or fp32 accumulation)
and O += P8 V8 (fp32 accumulation), both on the 8-bit tensor cores (IGMMA / QGMMA in the SASS); P (in
[0, 1] after the running max) goes to float8 as P * 448, the factor taken inside exp2 (as FlashAttention-3
keeps P in float8 with a fixed scale). Keys past the sequence end are masked in a separate last
iteration, so full tiles pay nothing.
"""

from __future__ import annotations

import triton
import triton.language as tl

FP8_MAX = 448.0  # largest finite float8_e4m3fn value
LOG2_FP8_MAX = tl.constexpr(8.807354922057604)  # log2(448), read inside kernels
LOG2E = 1.4426950408889634
# Tokens per quantisation block (K's scale granularity, and the padding unit). Every BLOCK_M and BLOCK_N
# of the attention kernel divides it.
QBLOCK = 128
STATS_CHUNK, STATS_BLOCK_S = 256, 128  # _stats_kernel: tokens per program, tokens per step


@triton.jit
def _to_codes(x, QK_MAX: tl.constexpr, out_ty: tl.constexpr):
    """x (already in [-QK_MAX, QK_MAX]) to the code type: round to nearest for int8 (a plain cast truncates)."""
    if QK_MAX == 127.0:
        x = tl.math.floor(x + 0.5)
    return x.to(out_ty)


@triton.jit
def _stats_kernel(
    K,
    V,
    PART,  # fp32 (3, B * H, N_CHUNKS, D) out: per chunk of the sequence, K's sum, V's max, V's min
    stride_kb,
    stride_ks,
    stride_kh,
    stride_vb,
    stride_vs,
    stride_vh,
    H,
    S,
    N_CHUNKS,
    HEAD_DIM: tl.constexpr,
    CHUNK: tl.constexpr,  # tokens per program
    BLOCK_S: tl.constexpr,  # tokens per step
):
    """Per-channel partial statistics of K and V over one chunk of the sequence; `_quantize_kernel` sums
    them up. Chunks rather than one program per head: 24 heads would leave most of the GPU idle."""
    bh = tl.program_id(0)
    chunk = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_d = tl.arange(0, HEAD_DIM)
    k_base = K + b.to(tl.int64) * stride_kb + h * stride_kh + offs_d[None, :]
    v_base = V + b.to(tl.int64) * stride_vb + h * stride_vh + offs_d[None, :]
    k_sum = tl.zeros([HEAD_DIM], dtype=tl.float32)
    v_max = tl.full([HEAD_DIM], float("-inf"), dtype=tl.float32)
    v_min = tl.full([HEAD_DIM], float("inf"), dtype=tl.float32)
    for s0 in range(chunk * CHUNK, chunk * CHUNK + CHUNK, BLOCK_S):
        offs_s = (s0 + tl.arange(0, BLOCK_S))[:, None]
        in_seq = offs_s < S
        k = tl.load(k_base + offs_s.to(tl.int64) * stride_ks, mask=in_seq, other=0.0).to(tl.float32)
        v = tl.load(v_base + offs_s.to(tl.int64) * stride_vs, mask=in_seq, other=0.0).to(tl.float32)
        k_sum += tl.sum(k, axis=0)
        v_max = tl.maximum(v_max, tl.max(tl.where(in_seq, v, float("-inf")), axis=0))
        v_min = tl.minimum(v_min, tl.min(tl.where(in_seq, v, float("inf")), axis=0))
    out = (bh.to(tl.int64) * N_CHUNKS + chunk) * HEAD_DIM + offs_d
    plane = tl.num_programs(0).to(tl.int64) * N_CHUNKS * HEAD_DIM
    tl.store(PART + out, k_sum)
    tl.store(PART + plane + out, v_max)
    tl.store(PART + 2 * plane + out, v_min)


@triton.jit
def _quantize_kernel(
    Q,
    K,
    V,
    PART,  # fp32 (3, B * H, N_CHUNKS, D): `_stats_kernel`'s partial sums, maxima and minima
    V_MID,  # fp32 (B, H, D) out: the middle of each V channel's range over the sequence, (max + min) / 2
    V_HALF,  # fp32 (B, H, D) out: half that range, (max - min) / 2 (the attention kernel reads both)
    Q8,  # (B, H, S_PAD, D)
    K8,  # (B, H, S_PAD, D)
    V8T,  # (B, H, D, S_PAD)
    Q_SCALE,  # fp32 (B, H, S_PAD)
    K_SCALE,  # fp32 (B, H, S_PAD // QBLOCK)
    stride_qb,
    stride_qs,
    stride_qh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_vb,
    stride_vs,
    stride_vh,  # (batch, seq, head) strides of Q, K, V; their dim stride is 1
    H,
    S,
    S_PAD,
    N_CHUNKS,
    qk_scale,  # softmax scale * log2(e)
    HEAD_DIM: tl.constexpr,
    BLOCK: tl.constexpr,
    QK_MAX: tl.constexpr,  # largest code of Q8 and K8: 448.0 (float8 e4m3) or 127.0 (int8)
    FP8_MAX: tl.constexpr,
):
    blk = tl.program_id(0)
    bh = tl.program_id(1)
    which = tl.program_id(2)  # 0: Q, 1: K, 2: V
    b = bh // H
    h = bh % H
    offs_s = blk * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    in_seq = offs_s[:, None] < S
    b64 = b.to(tl.int64)
    s64 = offs_s[:, None].to(tl.int64)
    dst = bh.to(tl.int64) * S_PAD * HEAD_DIM + offs_s[:, None] * HEAD_DIM + offs_d[None, :]
    # Each branch names its own values: Triton requires a name bound in several branches to keep one type.
    if which == 0:
        xq = tl.load(Q + b64 * stride_qb + h * stride_qh + s64 * stride_qs + offs_d[None, :], mask=in_seq, other=0.0)
        xq = xq.to(tl.float32)
        q_sc = tl.maximum(tl.max(tl.abs(xq), axis=1), 1e-12) / QK_MAX  # one per token
        tl.store(Q8 + dst, _to_codes(xq / q_sc[:, None], QK_MAX, Q8.dtype.element_ty))
        tl.store(Q_SCALE + bh.to(tl.int64) * S_PAD + offs_s, q_sc * qk_scale)
    elif which == 1:
        k_sum = tl.zeros([HEAD_DIM], dtype=tl.float32)
        for c in range(0, N_CHUNKS):
            k_sum += tl.load(PART + (bh.to(tl.int64) * N_CHUNKS + c) * HEAD_DIM + offs_d)
        mean = k_sum / S
        xk = tl.load(K + b64 * stride_kb + h * stride_kh + s64 * stride_ks + offs_d[None, :], mask=in_seq, other=0.0)
        xk = tl.where(in_seq, xk.to(tl.float32) - mean[None, :], 0.0)
        k_sc = tl.maximum(tl.max(tl.abs(xk)), 1e-12) / QK_MAX  # one per block
        tl.store(K8 + dst, _to_codes(xk / k_sc, QK_MAX, K8.dtype.element_ty))
        tl.store(K_SCALE + bh * (S_PAD // BLOCK) + blk, k_sc)
    else:
        plane = tl.num_programs(1).to(tl.int64) * N_CHUNKS * HEAD_DIM
        v_max = tl.full([HEAD_DIM], float("-inf"), dtype=tl.float32)
        v_min = tl.full([HEAD_DIM], float("inf"), dtype=tl.float32)
        for c in range(0, N_CHUNKS):
            part = PART + (bh.to(tl.int64) * N_CHUNKS + c) * HEAD_DIM + offs_d
            v_max = tl.maximum(v_max, tl.load(part + plane))
            v_min = tl.minimum(v_min, tl.load(part + 2 * plane))
        mid = (v_max + v_min) * 0.5
        half = (v_max - v_min) * 0.5
        if blk == 0:
            tl.store(V_MID + bh * HEAD_DIM + offs_d, mid)
            tl.store(V_HALF + bh * HEAD_DIM + offs_d, half)
        v_sc = tl.maximum(half, 1e-12) / FP8_MAX  # one per channel
        xv = tl.load(V + b64 * stride_vb + h * stride_vh + s64 * stride_vs + offs_d[None, :], mask=in_seq, other=0.0)
        xv = tl.where(in_seq, (xv.to(tl.float32) - mid[None, :]) / v_sc[None, :], 0.0)
        dst_t = bh.to(tl.int64) * HEAD_DIM * S_PAD + offs_d[:, None] * S_PAD + offs_s[None, :]
        tl.store(V8T + dst_t, tl.trans(xv.to(V8T.dtype.element_ty)))


@triton.jit
def _attn_tile(
    acc,
    l_i,
    m_i,
    q,
    q_scale,
    K8_bh,
    K_SCALE_bh,
    V8T_bh,
    start_n,
    S,
    S_PAD,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    QBLOCK: tl.constexpr,
    QK_MAX: tl.constexpr,
    FP8_MAX: tl.constexpr,
    MASK: tl.constexpr,
):
    """One key tile of the online softmax; MASK only for the tile that runs past the sequence end."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    k = tl.load(K8_bh + offs_n[:, None] * HEAD_DIM + offs_d[None, :])
    k_scale = tl.load(K_SCALE_bh + start_n // QBLOCK)
    c = q_scale * k_scale  # > 0: turns qk into log2-scaled logits
    if QK_MAX == 127.0:
        # int32 to fp32 by the 1.5 * 2^23 trick (exact for |qk| < 2^22; 128 * 127^2 is under that): an
        # integer add instead of a conversion instruction, which shares its unit with exp2, the loop's
        # bottleneck. The offset comes off inside the FMA below, as part of its per-row bias.
        qk = (tl.dot(q, tl.trans(k), out_dtype=tl.int32) + 0x4B400000).to(tl.float32, bitcast=True)
        bias = 12582912.0 * c
    else:
        qk = tl.dot(q, tl.trans(k))  # fp32 accumulation
        bias = tl.zeros_like(c)
    if MASK:
        qk = tl.where(offs_n[None, :] < S, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, axis=1) * c - bias)
    # p comes out already scaled to float8's range, P * 448 (log2(448) joins the per-row bias): one FMA and
    # one exp2 per logit. l_i sums the same scaled p, so the factor cancels in acc / l_i.
    x = qk * c[:, None] - (bias + m_new - LOG2_FP8_MAX)[:, None]
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(x)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None]
    vt = tl.load(V8T_bh + offs_d[:, None] * S_PAD + offs_n[None, :])  # (HEAD_DIM, BLOCK_N)
    acc = tl.dot(p.to(vt.dtype), tl.trans(vt), acc)
    return acc, l_i, m_new


@triton.jit
def _attn_fwd_kernel(
    Q8,
    K8,
    V8T,
    Q_SCALE,
    K_SCALE,
    V_MID,
    V_HALF,
    Out,  # (B, S, H, D), any strides with dim stride 1
    stride_ob,
    stride_os,
    stride_oh,
    H,
    S,
    S_PAD,
    SEQ_BUCKET,  # unused by the code: the autotuner's key (S rounded up to a power of two)
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    QBLOCK: tl.constexpr,
    QK_MAX: tl.constexpr,
    FP8_MAX: tl.constexpr,
):
    start_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    base = bh.to(tl.int64) * S_PAD * HEAD_DIM
    q = tl.load(Q8 + base + offs_m[:, None] * HEAD_DIM + offs_d[None, :])
    q_scale = tl.load(Q_SCALE + bh.to(tl.int64) * S_PAD + offs_m)
    K8_bh = K8 + base
    V8T_bh = V8T + base
    K_SCALE_bh = K_SCALE + bh * (S_PAD // QBLOCK)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    s_full = (S // BLOCK_N) * BLOCK_N
    for start_n in range(0, s_full, BLOCK_N):
        acc, l_i, m_i = _attn_tile(
            acc, l_i, m_i, q, q_scale, K8_bh, K_SCALE_bh, V8T_bh, start_n, S, S_PAD,
            HEAD_DIM, BLOCK_N, QBLOCK, QK_MAX, FP8_MAX, False,
        )  # fmt: skip
    if s_full < S:
        acc, l_i, m_i = _attn_tile(
            acc, l_i, m_i, q, q_scale, K8_bh, K_SCALE_bh, V8T_bh, s_full, S, S_PAD,
            HEAD_DIM, BLOCK_N, QBLOCK, QK_MAX, FP8_MAX, True,
        )  # fmt: skip

    # acc / l_i carries V's factor 1 / (half / FP8_MAX); V's middle comes back last, exactly, because the
    # normalised probabilities of a row sum to 1.
    v_mid = tl.load(V_MID + bh * HEAD_DIM + offs_d)
    v_half = tl.maximum(tl.load(V_HALF + bh * HEAD_DIM + offs_d), 1e-12)
    out = acc * (v_half / FP8_MAX)[None, :] / l_i[:, None] + v_mid[None, :]
    o_ptr = Out + b.to(tl.int64) * stride_ob + h * stride_oh + offs_m[:, None].to(tl.int64) * stride_os
    tl.store(o_ptr + offs_d[None, :], out.to(Out.dtype.element_ty), mask=offs_m[:, None] < S)


def autotune_configs() -> list[triton.Config]:
    """The block shapes, warps and pipeline depths tried on first use (per sequence-length bucket): the
    five best of an H100 sweep (bench/attention.py, 2026-11-22) over either Q/K code at 4608 and 8704
    tokens. 3 stages beat 2 and 4 nearly everywhere; 64 x 128 tiles on 4 warps led for int8 codes."""
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=3)
        for bm, bn, w in [(64, 128, 4), (128, 64, 4), (64, 64, 4), (128, 128, 4), (128, 128, 8)]
    ]


INTERPRETER_CONFIG = {"BLOCK_M": 64, "BLOCK_N": 64}
_attn_fwd_tuned = triton.autotune(configs=autotune_configs(), key=["HEAD_DIM", "SEQ_BUCKET"])(_attn_fwd_kernel)
