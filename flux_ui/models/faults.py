"""What to do when a job fails in a way that is not the user's input: running out of GPU memory."""

from __future__ import annotations

import gc
import logging

import torch

from flux_ui.models.registry import Registry

log = logging.getLogger(__name__)


def recover_from_oom(registry: Registry) -> list[str]:
    """After an out-of-memory error: drop auxiliary models (VQA, Redux encoder, depth estimator) and give
    the allocator's cached blocks back, so that the next job starts with as much room as possible. The
    shared parts and cached transformers stay: reloading them would cost more than the failure did.
    Returns the evicted entries."""
    evicted = registry.evict_aux()
    gc.collect()  # the failed run's tensors are garbage once its frames are gone
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    log.warning("out of memory: evicted %s, emptied the CUDA cache", evicted or "nothing")
    return evicted


def out_of_memory_message() -> str:
    return (
        "Out of GPU memory during this job; it was stopped and memory was freed. Try a smaller size, "
        "fewer images, or Free memory in the Models tab, then run it again."
    )
