"""--context-parallel N: how the processes torchrun started share each job (the model side is
flux_ui/models/context_parallel.py).

Process 0, the lead, serves as one process would: it validates, takes the turn, delivers. Its
`registry.workers` is a `LeadWorkers`: each job it is handed goes to every process (a broadcast on the
control group), and all run it together, each its share of every transformer call. The others `follow`:
they wait for the next job, run it, and drop the result (the lead delivers it). A Cancel on the lead is
voted on at every step, so that every process stops after the same step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flux_ui.models import context_parallel
from flux_ui.models.registry import Registry
from flux_ui.tasks.table import TASKS

log = logging.getLogger(__name__)


def run_share(
    registry: Registry, task: str, job: object, on_event: Callable | None, should_stop: Callable[[], bool] | None
) -> object:
    """This process's share of `task` on `job`; every process calls it for the same job in the same order.
    Each step's "stop?" is the lead's answer, agreed on by all (the same number of votes on every process:
    the task code is the same and deterministic)."""

    def stop() -> bool:
        return context_parallel.agreed(should_stop is not None and should_stop())

    return TASKS[task].run(registry, job, on_event, stop)


class LeadWorkers:
    """The lead's `core.turns.Workers`: every job runs on all the processes."""

    def __init__(self, registry: Registry):
        self.registry = registry

    def run(self, task: str, job: object, on_event, should_stop) -> object:
        import torch.distributed as dist

        dist.broadcast_object_list([(task, job)], src=0, group=context_parallel.control_group())
        return run_share(self.registry, task, job, on_event, should_stop)

    def close(self) -> None:
        """Tell the followers to exit."""
        import torch.distributed as dist

        dist.broadcast_object_list([None], src=0, group=context_parallel.control_group())


def follow(registry: Registry) -> None:
    """A follower's life: run each job the lead sends, until it sends None (the server stopped)."""
    import torch.distributed as dist

    log.info("context parallel: process %d follows the lead's jobs", context_parallel.rank())
    while True:
        box = [None]
        dist.broadcast_object_list(box, src=0, group=context_parallel.control_group())
        if box[0] is None:
            break
        task, job = box[0]
        try:
            run_share(registry, task, job, None, None)
        except Exception as err:  # noqa: BLE001 - the lead meets the same error and reports it; go on
            log.info("context parallel: the %s job ended with %s: %s", task, type(err).__name__, err)
    dist.destroy_process_group()
