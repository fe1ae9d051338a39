"""One task by name, from the APIs' shared request fields to delivered results: validate -> run -> deliver.

Every surface that is not a Gradio tab (the REST-like HTTP APIs, the in-process Python API) goes through
here, so they all validate with the task's own checks, save to the outputs folder and screen the same
way; the tabs do the same steps through `ui.common`, which adds the queue and the progress bar.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from flux_ui.core.errors import InvalidInput
from flux_ui.models.registry import Registry
from flux_ui.output.deliver import Delivered, deliver
from flux_ui.tasks import Request, TaskResult
from flux_ui.tasks.table import TASKS


@dataclass
class Outcome:
    """What one task gave its caller: delivered images (image tasks) or an answer (vqa)."""

    task: str
    delivered: list[Delivered] = field(default_factory=list)  # screened, saved (or not: see warnings)
    warnings: list[str] = field(default_factory=list)
    result: TaskResult | None = None  # the task's own result (seed, timings); None for vqa
    answer: str | None = None  # vqa only
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase


def run_task(
    registry: Registry,
    task: str,
    request: Request,
    on_event: Callable | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Outcome:
    """Validate `request` with `task`'s validator (InvalidInput names the task's field), run it and deliver
    its images. `on_event` gets StepEvents (image tasks) or pieces of the answer (vqa); `should_stop()` is
    checked between steps and, when true, the task raises Cancelled."""
    if task not in TASKS:
        raise InvalidInput("task", f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    spec = TASKS[task]
    job = spec.validate(spec.from_request(request), registry.settings, registry.loras)
    with registry.line.turn(should_stop):  # after validation: a bad field never waits behind another job
        result = spec.execute(registry, job, on_event, should_stop)
    if not spec.images:
        return Outcome(task, answer=result.answer, timings=dict(result.timings))
    delivered, warnings = deliver(registry, result, task=task)  # may raise ModelUnavailableError (safety classifier)
    return Outcome(task, delivered, warnings, result, timings=dict(result.timings))
