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
from pathlib import Path

from flux_ui.client.result import Result
from flux_ui.core.errors import InvalidInput
from flux_ui.core.settings import Settings
from flux_ui.tasks import Request

Size = tuple[int, int] | str  # (width, height) or "WIDTHxHEIGHT" (Kontext also "auto")


def _read(value: object, field: str) -> object:
    """A path argument as the file's bytes, read here: the task layer opens only files uploaded to the
    server (a request must not name server files), while a script's paths are its own."""
    if not isinstance(value, str | Path):
        return value
    try:
        return Path(value).expanduser().read_bytes()
    except OSError as err:
        raise InvalidInput(field, f"cannot read {str(value)!r:.80} ({err.strerror or err}); check the path") from None


def _resolution(value: Size | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Sequence) and len(value) == 2:
        return f"{value[0]}x{value[1]}"
    raise InvalidInput("resolution", f"expected (width, height) or 'WIDTHxHEIGHT', got {value!r}")


class FluxUI:
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
            image=_read(image, "image"),
            images=tuple(_read(v, f"images[{i}]") for i, v in enumerate(images)),
            strengths=tuple(strengths),
            strength=strength,
            scale=scale,
            upscaler=upscaler,
            tiling=tiling,
            mask=_read(mask, "mask"),
            control_image=_read(control_image, "control_image"),
            resolution=_resolution(resolution),
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

    def _call(self, task: str, renames: dict[str, str], **kwargs) -> Result:
        """`generate`, with errors naming this method's argument where it differs (instruction, question)."""
        try:
            return self.generate(task, **kwargs)
        except InvalidInput as err:
            if err.field not in renames:
                raise
            raise InvalidInput(renames[err.field], str(err).partition(": ")[2]) from None

    def text_to_image(
        self,
        prompt: str,
        *,
        resolution: Size = (1024, 1024),
        variant: str = "dev",
        steps: int | None = None,
        guidance: float | None = None,
        seed: int = -1,
        num_images: int = 1,
        fast: bool = False,
        on_step: Callable | None = None,
    ) -> Result:
        """Images from `prompt` (which may name LoRAs as <lora:NAME:WEIGHT>) with dev, schnell or krea-dev, or a
        FLUX.2 model (flux2-dev, flux2-klein-4b, flux2-klein-9b, flux2-klein-base-4b, flux2-klein-base-9b)."""
        return self._call(
            "text_to_image",
            {},
            prompt=prompt,
            resolution=resolution,
            variant=variant,
            steps=steps,
            guidance=guidance,
            seed=seed,
            num_images=num_images,
            fast=fast,
            on_step=on_step,
        )

    def edit(
        self,
        image: object,
        instruction: str,
        *,
        images: Sequence[object] = (),
        resolution: Size = "auto",
        steps: int | None = None,
        guidance: float | None = None,
        seed: int = -1,
        num_images: int = 1,
        fast: bool = False,
        on_step: Callable | None = None,
    ) -> Result:
        """`image` edited as `instruction` says, with FLUX.1 Kontext [dev]; "auto" resolution keeps Kontext's
        preferred size for the image's aspect ratio. Up to three more reference `images` are stitched
        beside `image` into the one picture Kontext reads."""
        return self._call(
            "kontext_edit",
            {"prompt": "instruction"},
            prompt=instruction,
            image=image,
            images=images,
            resolution=resolution,
            steps=steps,
            guidance=guidance,
            seed=seed,
            num_images=num_images,
            fast=fast,
            on_step=on_step,
        )

    def variation(
        self,
        image: object,
        *,
        images: Sequence[object] = (),
        strengths: Sequence[float] = (),
        prompt: str = "",
        resolution: Size = (1024, 1024),
        steps: int | None = None,
        guidance: float | None = None,
        seed: int = -1,
        num_images: int = 1,
        fast: bool = False,
        on_step: Callable | None = None,
    ) -> Result:
        """Variations of `image` (and up to three more references, mixed by `strengths`, 0-2 each) with
        FLUX.1 Redux [dev]."""
        return self._call(
            "redux_variation",
            {},
            image=image,
            images=images,
            strengths=strengths,
            prompt=prompt,
            resolution=resolution,
            steps=steps,
            guidance=guidance,
            seed=seed,
            num_images=num_images,
            fast=fast,
            on_step=on_step,
        )

    def fill(
        self,
        image: object,
        prompt: str,
        *,
        mask: object | None = None,
        left: int = 0,
        right: int = 0,
        top: int = 0,
        bottom: int = 0,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int = -1,
        num_images: int = 1,
        fast: bool = False,
        on_step: Callable | None = None,
    ) -> Result:
        """Repaint the white area of `mask` and/or extend the canvas by left/right/top/bottom pixels, with
        FLUX.1 Fill [dev]."""
        return self._call(
            "fill",
            {},
            image=image,
            prompt=prompt,
            mask=mask,
            left=left,
            right=right,
            top=top,
            bottom=bottom,
            steps=steps,
            guidance=guidance,
            seed=seed,
            num_images=num_images,
            fast=fast,
            on_step=on_step,
        )

    def control(
        self,
        prompt: str,
        image: object | None = None,
        *,
        mode: str = "canny",
        route: str = "full",
        control_image: object | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int = -1,
        num_images: int = 1,
        fast: bool = False,
        on_step: Callable | None = None,
    ) -> Result:
        """An image that follows the Canny edges or depth of `image` (or a ready `control_image`); `route`
        full uses FLUX.1 Canny/Depth [dev], lora BFL's LoRA on [dev]."""
        return self._call(
            "control",
            {},
            prompt=prompt,
            image=image,
            mode=mode,
            route=route,
            control_image=control_image,
            steps=steps,
            guidance=guidance,
            seed=seed,
            num_images=num_images,
            fast=fast,
            on_step=on_step,
        )

    def flux2_edit(
        self,
        images: Sequence[object],
        instruction: str,
        *,
        variant: str = "flux2-klein-4b",
        resolution: Size = "auto",
        steps: int | None = None,
        guidance: float | None = None,
        seed: int = -1,
        num_images: int = 1,
        on_step: Callable | None = None,
    ) -> Result:
        """An image made from one to four reference `images` as `instruction` says, with a FLUX.2 model
        (its own multi-reference input); "auto" resolution takes the first reference's size (at most 1 MP)."""
        if not images:
            raise InvalidInput("images", "is empty; give at least one reference image")
        return self._call(
            "flux2_edit",
            # The API names the first reference `image` and the others images[0], images[1]...; here they are one list.
            {"prompt": "instruction", "image": "images[0]", **{f"images[{n}]": f"images[{n + 1}]" for n in range(3)}},
            prompt=instruction,
            image=images[0],
            images=images[1:],
            variant=variant,
            resolution=resolution,
            steps=steps,
            guidance=guidance,
            seed=seed,
            num_images=num_images,
            on_step=on_step,
        )

    def flux2_inpaint(
        self,
        image: object,
        mask: object,
        prompt: str,
        *,
        variant: str = "flux2-klein-4b",
        strength: float | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int = -1,
        num_images: int = 1,
        on_step: Callable | None = None,
    ) -> Result:
        """Repaint the white area of `mask` in `image` with a FLUX.2 [klein] model; `strength` (0-1, default
        1) is how much of the masked area's content is kept (1 keeps none)."""
        return self._call(
            "flux2_inpaint",
            {},
            image=image,
            mask=mask,
            prompt=prompt,
            variant=variant,
            strength=strength,
            steps=steps,
            guidance=guidance,
            seed=seed,
            num_images=num_images,
            on_step=on_step,
        )

    def upscale(
        self,
        image: object,
        prompt: str = "",
        *,
        scale: float = 2.0,
        upscaler: str = "auto",
        strength: float = 0.3,
        variant: str = "dev",
        steps: int | None = None,
        guidance: float | None = None,
        seed: int = -1,
        tiling: str = "auto",
        on_step: Callable | None = None,
    ) -> Result:
        """`image` enlarged `scale` times (1.5-4) by an upscaler model ("auto": the first found, else
        Lanczos; or "lanczos", or a model's name), then refined at `strength` (0: upscale only) with
        `prompt`, in tiles above 1.5 MP (`tiling` auto, on or off)."""
        return self._call(
            "upscale",
            {},
            image=image,
            prompt=prompt,
            scale=scale,
            upscaler=upscaler,
            strength=strength,
            variant=variant,
            steps=steps,
            guidance=guidance,
            seed=seed,
            tiling=tiling,
            on_step=on_step,
        )

    def vqa(
        self, image: object, question: str, *, max_new_tokens: int | None = None, on_step: Callable | None = None
    ) -> Result:
        """The vision-language model's answer to `question` about `image`, in `Result.answer`."""
        return self._call(
            "vqa",
            {"prompt": "question"},
            image=image,
            prompt=question,
            max_new_tokens=max_new_tokens,
            on_step=on_step,
        )


__all__ = ["FluxUI", "InvalidInput", "Result"]
