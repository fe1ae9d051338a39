"""The per-task methods of `FluxUI` (text_to_image, edit, variation, fill, control, flux2_edit,
flux2_inpaint, upscale, vqa): each names its task's own arguments and calls `generate` with them."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from flux_ui.client.args import Size
from flux_ui.client.result import Result
from flux_ui.core.errors import InvalidInput


class TaskMethods:
    """One method per task over `generate`, which the class that mixes this in provides (`FluxUI`)."""

    generate: Callable[..., Result]

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
