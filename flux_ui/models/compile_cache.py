"""torch's compile caches in a folder the app owns, so that a restart reuses the kernels compiled before.

The speed profiles compile the transformer's blocks (`speed.optimize_transformer`); the first image after a
start pays that compilation (38 s on an H200 with the fp8 profile). Inductor already keeps what it compiled
(its FX graph cache, the AOTAutograd cache and Triton's kernels) on disk, but by default in
/tmp/torchinductor_<user>, which a reboot or a new container empties. `use` points those caches at a folder
of the app's (`--compile-cache`, by default inside the outputs folder), which lasts as long as the outputs do.
This is torch's own cache mechanism (`TORCHINDUCTOR_CACHE_DIR`, read whenever a cache is opened); nothing
here reads or writes cache entries itself.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

ENV = "TORCHINDUCTOR_CACHE_DIR"  # inductor's cache root; Triton's kernels go below it unless TRITON_CACHE_DIR is set


def use(folder: Path) -> Path:
    """Keep torch's compile caches in `folder` (created if missing) from now on; returns its absolute path.

    Call it before anything is compiled: caches opened earlier stay where they were. Both inductor caches
    that make a warm start fast are on by default in torch (FX graph cache, AOTAutograd cache); this turns
    them on again in case an environment variable turned them off."""
    folder = Path(folder).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[ENV] = str(folder)
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True
    log.info("torch compile caches in %s", folder)
    return folder


def entries(folder: Path) -> int:
    """Files in the cache folder (0 if it does not exist): how much a restart can reuse."""
    folder = Path(folder)
    return sum(1 for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0
