"""The Python API in this process: a Registry of its own, the task table's validate -> run -> deliver."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from flux_ui.client.result import Result
from flux_ui.core.errors import InvalidInput
from flux_ui.core.settings import Settings, lora_dirs, settings_from_args
from flux_ui.media.metadata import format_parameters
from flux_ui.models.registry import Registry
from flux_ui.output.run import run_task
from flux_ui.tasks import Request, api_field

_PATHS = {"tiny_dir", "outputs_dir", "model_root"}  # Settings fields that are one Path
_PATH_TUPLES = {"lora_dirs", "models_dirs"}  # ... a tuple of Paths


def local_settings(settings: Settings | None, fields: dict[str, object]) -> Settings:
    """`settings` (or what `python app.py` would start with: its defaults and FLUX_UI_* variables, with
    device, dtype and memory policy resolved for this machine) with `fields` replaced.

    As `app.py --tiny` does, `tiny=True` loads the tiny models from `tiny_dir` and adds their LoRA folder;
    the tiny models must already be there (`python app.py --tiny` writes them once)."""
    known = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(fields) - known)
    if unknown:
        names = ", ".join(unknown)
        raise TypeError(f"FluxUI: unknown setting(s) {names}; use fields of flux_ui.core.settings.Settings")
    values = dict(fields)
    for name in _PATHS & values.keys():
        values[name] = None if values[name] is None else Path(values[name])  # type: ignore[arg-type]
    for name in _PATH_TUPLES & values.keys():
        values[name] = tuple(Path(p) for p in values[name])  # type: ignore[union-attr]
    base = settings or settings_from_args([])
    if values.get("tiny", base.tiny):
        tiny_dir = values.get("tiny_dir", base.tiny_dir)
        values.setdefault("model_root", tiny_dir)
        given = values.get("lora_dirs", () if settings is None else base.lora_dirs)
        values["lora_dirs"] = lora_dirs([str(d) for d in given], True, tiny_dir)  # type: ignore[arg-type]
    return dataclasses.replace(base, **values)


def request_field(field: str, request: Request) -> str:
    """The Python API's name of a task parameter, as REST names them (see `tasks.api_field`)."""
    return api_field(field, request.resolution)


class LocalBackend:
    def __init__(self, settings: Settings):
        self.registry = Registry(settings)
        if settings.replicas:  # the jobs run on Ray Serve replicas; this process validates and delivers
            from flux_ui.serving.replicas import start_replicas

            self.registry.workers = start_replicas(settings)

    def close(self) -> None:
        """Take down the replicas this backend deployed (with --replicas); nothing otherwise."""
        if self.registry.workers is not None:
            self.registry.workers.close()
            self.registry.workers = None

    def call(self, task: str, request: Request, on_step: Callable | None) -> Result:
        try:
            outcome = run_task(self.registry, task, request, on_step)
        except InvalidInput as err:
            field = request_field(err.field, request)
            if field == err.field:
                raise
            raise InvalidInput(field, str(err).partition(": ")[2]) from None
        if outcome.result is None:
            return Result(task, answer=outcome.answer, timings=outcome.timings)
        delivered = outcome.delivered
        return Result(
            task,
            images=[d.image for d in delivered],
            seeds=[d.meta.seed for d in delivered],
            parameters=[format_parameters(d.meta) for d in delivered],
            saved=[None if d.saved is None else str(d.saved) for d in delivered],
            timings=outcome.timings,
            warnings=outcome.warnings,
            replica=outcome.result.replica,
        )
