"""--context-parallel N: one image's transformer split over N processes, one GPU each, with diffusers'
context parallelism (`ContextParallelConfig`, `ModelMixin.enable_parallelism`).

torchrun starts the N processes (`torchrun --nproc-per-node N app.py --context-parallel N`); each loads the
same models. In every transformer call each process holds 1/N of the sequence (image and text tokens);
around each attention, Ulysses' all-to-all trades the sequence split for a split of the heads, so each
process attends over the whole sequence for 1/N of the heads. The text encoders and the VAE run whole on
every process (they are a small part of an image's time). Process 0 (the lead) serves; the others follow
its jobs (flux_ui/serving/context_parallel.py).

Two process groups: the default one (NCCL on GPUs, gloo on the CPU) carries the attention's all-to-alls;
a gloo group with a long timeout carries the jobs and the per-step "stop?" vote, so that the followers can
wait for the next job for as long as the server is idle.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os

import torch

from flux_ui.core.settings import Settings

log = logging.getLogger(__name__)
IDLE_TIMEOUT = datetime.timedelta(days=365)  # how long a follower waits for the next job
_control = None  # the gloo group for jobs and votes (see the module docstring)


def init(settings: Settings) -> None:
    """Join torchrun's process group and take this process's GPU; ValueError (naming the flag and the
    launch command) when the process count is not --context-parallel."""
    import torch.distributed as dist

    global _control
    n = settings.context_parallel
    if "WORLD_SIZE" not in os.environ:
        raise ValueError(f"--context-parallel: launch with torchrun --nproc-per-node {n} app.py --context-parallel {n}")
    cuda = settings.device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # "cuda" is now this process's GPU
    dist.init_process_group("nccl" if cuda else "gloo")
    if dist.get_world_size() != n:
        raise ValueError(
            f"--context-parallel: {n} asked for, but torchrun started {dist.get_world_size()} processes; "
            f"use --nproc-per-node {n}"
        )
    _control = dist.new_group(backend="gloo", timeout=IDLE_TIMEOUT)
    log.info("context parallel: process %d of %d", dist.get_rank(), n)


def control_group():
    """The gloo group for jobs and votes (None before `init`)."""
    return _control


def barrier() -> None:
    """Wait until every process got here."""
    import torch.distributed as dist

    dist.barrier(group=_control)


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


def agreed(local: bool) -> bool:
    """True on every process when `local` is true on any (the lead's Cancel, once per step)."""
    import torch.distributed as dist

    flag = torch.tensor([int(local)])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=_control)
    return bool(flag.item())


def shard(transformer: torch.nn.Module, settings: Settings) -> None:
    """Split `transformer`'s attention over the --context-parallel processes (Ulysses). On GPUs with
    `ulysses_anything`, so that any size the app accepts splits (token counts and head counts that N does
    not divide); gloo cannot gather tensors of unequal sizes, so on the CPU (the tests) the token count of
    a request must divide by N."""
    from diffusers import ContextParallelConfig

    if getattr(transformer, "_cp_plan", None) is None:
        log.warning("context parallel: %s has no plan to split; it runs whole on each process", type(transformer))
        return
    n, cuda = settings.context_parallel, settings.device.startswith("cuda")
    config = ContextParallelConfig(ulysses_degree=n, ulysses_anything=cuda and n > 1)
    with _one_cpu_device(cuda):
        transformer.enable_parallelism(config=config)
    log.info(
        "context parallel: %s split over %d processes (Ulysses), process %d", type(transformer).__name__, n, rank()
    )


@contextlib.contextmanager
def _one_cpu_device(cuda: bool):
    """diffusers picks each process's device as `rank % torch.accelerator.device_count()`, which divides by
    zero on a machine without an accelerator: there, count the CPU as one device while it does."""
    if cuda or torch.accelerator.device_count() > 0:
        yield
        return
    count = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = count
