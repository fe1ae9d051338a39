"""Fast mode: fewer full transformer evaluations per image, through cache-dit's block cache.

On the steps a fixed mask marks as cached, only the first transformer block runs; the other 56 blocks'
residual is predicted from the last computed steps by a first-order Taylor expansion (cache-dit's
DBCache, F1B0, with its TaylorSeer calibrator). The mask is cache-dit's predefined "medium" steps
computation mask (for 28 steps: 15 computed in full, 13 cached), used with the "static" policy: which steps
are computed is fixed in advance and does not depend on the weights or the prompt, so the speed measured
with random weights is the speed users get.

cache-dit's published FLUX.1 [dev] DrawBench results (bench/cache/README.md of github.com/vipshop/cache-dit;
50 steps, its dynamic thresholds rather than a fixed mask): baseline ImageReward 0.9898, CLIP score 32.404;
DBCache(S)+TaylorSeer 3.23x fewer TFLOPs, ImageReward 1.0221, CLIP 32.819; DBCache(F)+TaylorSeer 5.72x,
ImageReward 0.9526, CLIP 32.568. For a fixed mask it publishes images only (docs/user_guide/CACHE_API.md,
"SCM", FLUX.1 [dev] 28 steps on an L20: 24.85 s baseline, 15.4 s with the static "slow" mask, which it
notes looks softer than its dynamic masks). So fast mode trades some detail for speed; exact mode (the
default) is untouched.

The cache is applied to the lent pipeline for one request and removed after it (`fast_mode`), so a request
without fast mode runs the very same code and weights as if cache-dit were not installed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from flux_ui.core.settings import Settings

log = logging.getLogger(__name__)

MASK_POLICY = "medium"  # cache-dit's predefined steps computation mask (slow, medium, fast, ultra)
FN_BLOCKS = 1  # transformer blocks computed on cached steps (the first ones); cache-dit's Fn
TAYLOR_ORDER = 1  # order of the TaylorSeer calibrator's expansion
METHOD = f"cache-dit DBCache F{FN_BLOCKS}B0, {MASK_POLICY} step mask, TaylorSeer order {TAYLOR_ORDER}"
SOURCE = "https://github.com/vipshop/cache-dit/blob/main/bench/cache/README.md"
# Shown next to the fast-mode checkbox and in the README: the published figures, their source and scope.
HELP = (
    "Computes about half the denoising steps in full (15 of 28) and predicts the rest with cache-dit's "
    "block cache (DBCache + TaylorSeer): about 1.8x fewer transformer evaluations, somewhat softer detail. cache-dit's "
    "published FLUX.1 [dev] DrawBench scores for its DBCache + TaylorSeer settings: ImageReward 1.02 at "
    "3.2x and 0.95 at 5.7x fewer operations (baseline 0.99), CLIP score 32.8 / 32.6 (baseline 32.4); "
    f"source: {SOURCE}."
)
MIN_STEPS = 4  # fewer steps leave nothing to cache (the mask computes the first steps in full)


def computed_steps(steps: int) -> list[int]:
    """The fixed mask for `steps` denoising steps run: 1 = computed in full, 0 = cached (only the first
    FN_BLOCKS blocks run). Deterministic: cache-dit's predefined policy, stretched or cut to `steps`."""
    if steps < MIN_STEPS:
        return [1] * steps
    return list(_cache_dit().steps_mask(total_steps=steps, mask_policy=MASK_POLICY))


def describe(steps: int) -> str:
    """What fast mode does for `steps` steps, for the metadata and the summary ("15 of 28 steps in full")."""
    mask = computed_steps(steps)
    return f"{sum(mask)} of {len(mask)} steps in full ({METHOD})"


def unavailable(settings: Settings) -> str | None:
    """Why fast mode cannot run with these settings (a message naming the fix), or None if it can."""
    if settings.policy.group_offload:
        # Group offloading prefetches blocks in the order it recorded on the first run; the cache skips
        # blocks on cached steps, which breaks that order (cache-dit says it is not fully compatible).
        return (
            f"is not available under the {settings.memory_policy!r} memory policy (group offloading moves "
            "blocks in a fixed order that the step cache breaks); turn it off, or use a GPU that fits the "
            "fp8-24gb or resident policy"
        )
    try:
        _cache_dit()
    except ImportError:
        return "needs the cache-dit package; install it with: pip install cache-dit==1.5.3"
    return None


def _cache_dit():
    """The cache_dit package, imported on first use (it is only needed once a request asks for fast mode)."""
    os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "error")  # else it logs every enable and disable
    import cache_dit

    return cache_dit


def _own_attributes(modules: list[torch.nn.Module]) -> list[tuple[dict, dict]]:
    """Each module's instance attributes and child modules, as they are now."""
    return [(dict(vars(m)), dict(m._modules)) for m in modules]


@contextmanager
def fast_mode(pipe, steps: int) -> Iterator[None]:
    """Run `pipe` (a FLUX pipeline of diffusers, lent by the registry) with the step cache while the block
    is active; `steps` is the number of denoising steps each call runs (image to image runs fewer than it
    is asked for). Every attribute cache-dit set on the pipeline class, the transformer and its block lists
    is removed afterwards, so later calls run the unchanged model."""
    cache_dit = _cache_dit()
    from cache_dit import DBCacheConfig, TaylorSeerCalibratorConfig

    transformer = pipe.transformer
    watched = [transformer, transformer.transformer_blocks, transformer.single_transformer_blocks]
    before = _own_attributes(watched)
    cls = type(pipe)
    call = cls.__dict__.get("__call__")
    cache_dit.enable_cache(
        pipe,
        cache_config=DBCacheConfig(
            Fn_compute_blocks=FN_BLOCKS,
            Bn_compute_blocks=0,
            num_inference_steps=steps,
            steps_computation_mask=computed_steps(steps),
            steps_computation_policy="static",  # a fixed schedule: the speed does not depend on the weights
        ),
        calibrator_config=TaylorSeerCalibratorConfig(taylorseer_order=TAYLOR_ORDER),
    )
    try:
        yield
    finally:
        cache_dit.disable_cache(pipe)
        # cache-dit's release restores the forward it found when the cache was enabled, and by then its
        # FLUX patch had already replaced the transformer's forward; its release also leaves marks such as
        # `_is_patched`. Putting back each module's own attributes as they were removes all of it.
        for module, (attributes, children) in zip(watched, before, strict=True):
            for name in set(vars(module)) - set(attributes):
                delattr(module, name)
            for name, value in attributes.items():
                if vars(module).get(name) is not value:
                    setattr(module, name, value)
            module._modules.clear()
            module._modules.update(children)
        if cls.__dict__.get("__call__") is not call:
            cls.__call__ = call
        log.debug("fast mode removed from %s", cls.__name__)
