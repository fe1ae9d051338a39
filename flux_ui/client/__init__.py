"""The Python API: one object with a method per task, in this process or against a running server.

    from flux_ui.client import FluxUI

    flux = FluxUI()                                  # in this process: owns a Registry (loads models on use)
    flux = FluxUI(url="http://gpu-box:7860", api_key="...")   # the same calls, through the REST API
    result = flux.generate(task="text_to_image", prompt="a fox", resolution=(1024, 1024), steps=30)
    result.image.save("fox.png")
    edited = flux.edit(image="fox.png", instruction="make it winter")
    print(flux.vqa(image="fox.png", question="What animal is this?").answer)

Every method goes through the task table (`flux_ui.tasks.table.TASKS`): the same validation as the UI and
the REST API, the same saved outputs. Bad input raises `flux_ui.core.errors.InvalidInput`, whose `field`
is the name of the argument (in both modes); a server's other errors raise `RemoteError`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from flux_ui.client.args import Size, read_path, resolution_text
from flux_ui.client.methods import TaskMethods
from flux_ui.client.result import Result
from flux_ui.core.errors import InvalidInput
from flux_ui.core.settings import Settings
from flux_ui.tasks import Request


class FluxUI(TaskMethods):
    """The tasks as methods. `FluxUI(settings)` or `FluxUI(**fields)` (Settings fields, e.g.
    `FluxUI(outputs_dir="out", max_images=8)`) runs them in this process; `FluxUI(url=..., api_key=...)`
    sends them to a server's REST API, so a script moves from local to remote by one argument.

    In this process the models are loaded on first use and kept as the server keeps them; calls from
    several threads take turns at the GPU. Remote calls wait for the whole result (`timeout` seconds):
    the REST API does not stream, so `on_step` is called only in this process.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        url: str | None = None,
        api_key: str | None = None,
        timeout: float = 600.0,
        **fields: object,
    ):
        if url is not None:
            if settings is not None or fields:
                raise TypeError("FluxUI(url=...): the server has its own settings; pass only url and api_key")
            from flux_ui.client.remote import RemoteBackend

            self._backend = RemoteBackend(url, api_key, timeout)
        else:
            from flux_ui.client.local import LocalBackend, local_settings

            self._backend = LocalBackend(local_settings(settings, fields))

    @property
    def registry(self):
        """The in-process Registry (None in remote mode)."""
        return getattr(self._backend, "registry", None)

    def close(self) -> None:
        """Let go of what this object started: the HTTP connection (remote), the replicas (`replicas=N`)."""
        self._backend.close()

    def __enter__(self) -> FluxUI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def generate(
        self,
        task: str = "text_to_image",
        *,
        prompt: str = "",
        image: object | None = None,
        images: Sequence[object] = (),
        strengths: Sequence[float] = (),
        strength: float | None = None,
        scale: float | None = None,
        upscaler: str | None = None,
        tiling: str | None = None,
        mask: object | None = None,
        control_image: object | None = None,
        resolution: Size | None = None,
        variant: str | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int = -1,
        num_images: int = 1,
        mode: str = "canny",
        route: str = "full",
        left: int = 0,
        right: int = 0,
        top: int = 0,
        bottom: int = 0,
        max_new_tokens: int | None = None,
        fast: bool = False,
        on_step: Callable | None = None,
    ) -> Result:
        """Run `task` (a name of the task table: text_to_image, image_to_image, upscale, kontext_edit,
        redux_variation, fill, control, flux2_edit, flux2_inpaint, vqa) with the REST API's fields; a task
        ignores the fields it does not use.

        Images are PIL images, numpy arrays, file paths or encoded bytes. `resolution` is (width, height)
        or "WIDTHxHEIGHT", multiples of 16. None for steps and guidance takes the model's published
        defaults; seed -1 picks one at random, and image i of a batch uses seed + i. `fast` turns on fast mode
        (the FLUX.1 image tasks but upscale; see `flux_ui.models.fast`). `on_step` (in this
        process only) gets a `flux_ui.tasks.StepEvent` per denoising step, or, for vqa, each piece of the
        answer as text."""
        request = Request(
            prompt=prompt,
            image=read_path(image, "image"),
            images=tuple(read_path(v, f"images[{i}]") for i, v in enumerate(images)),
            strengths=tuple(strengths),
            strength=strength,
            scale=scale,
            upscaler=upscaler,
            tiling=tiling,
            mask=read_path(mask, "mask"),
            control_image=read_path(control_image, "control_image"),
            resolution=resolution_text(resolution),
            variant=variant,
            steps=steps,
            guidance=guidance,
            seed=seed,
            num_images=num_images,
            mode=mode,
            route=route,
            left=left,
            right=right,
            top=top,
            bottom=bottom,
            max_new_tokens=max_new_tokens,
            fast=fast,
        )
        return self._backend.call(task, request, on_step)


__all__ = ["FluxUI", "InvalidInput", "Result"]
