"""The GPU decorator of Hugging Face ZeroGPU Spaces, a no-op everywhere else.

On a ZeroGPU Space a GPU is attached only while a function decorated with `spaces.GPU` runs, so every task
entry point that runs a model carries `@on_gpu`. Elsewhere (a dedicated GPU Space, a workstation, the
tests) `spaces` is either not installed or its decorator returns the function unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable)
GPU_SECONDS = 120  # the longest a ZeroGPU call may hold the GPU: a 50-step Fill at 2 MP with a cold load


def on_gpu(fn: F) -> F:
    """`spaces.GPU(duration=GPU_SECONDS)(fn)` when the `spaces` package is installed, else `fn` itself."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(duration=GPU_SECONDS)(fn)
