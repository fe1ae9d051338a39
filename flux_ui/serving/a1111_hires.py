"""A1111's hires fix in its txt2img API (`enable_hr`): each image is generated, then handed to the upscale
task (`flux_ui.tasks.upscale`: an upscaler model or Lanczos, then a refine pass at low denoise).

The fields, as A1111 names them: `hr_scale` (1.5-4; A1111's default 2), `hr_upscaler` (an upscaler model's
name; "Lanczos", "None", "Nearest" and A1111's latent upscalers, which have no counterpart here, resize with
Lanczos, said in the answer's warnings; unset: the first model found, else Lanczos), `denoising_strength`
(the refine pass's strength; unset: the upscale task's 0.3), `hr_second_pass_steps` (steps of the refine
pass's schedule; 0 or unset: the first pass's, as in A1111) and `hr_prompt` (the refine pass's prompt;
empty: the first pass's). The refine pass runs the first pass's model, guidance and seed.

Every field is checked before anything runs: the upscale's validation is run on a blank picture of the
first pass's size, so a scale that would go over the megapixel limit is refused with its field named.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from flux_ui.core.errors import InvalidInput
from flux_ui.models.registry import Registry
from flux_ui.output.run import Outcome, run_task
from flux_ui.tasks import Request as TaskRequest
from flux_ui.tasks.table import TASKS
from flux_ui.tasks.upscale import AUTO, DEFAULT_SCALE, LANCZOS

FIELDS = {"enable_hr", "hr_scale", "hr_upscaler", "denoising_strength", "hr_second_pass_steps", "hr_prompt"}
RESIZES = ("none", "lanczos", "nearest")  # A1111's plain resizes: Lanczos here
# The upscale task's fields as A1111 names them, for error messages.
NAMES = {"scale": "hr_scale", "upscaler": "hr_upscaler", "strength": "denoising_strength"}
NAMES |= {"steps": "hr_second_pass_steps", "image": "width", "variant": "override_settings.sd_model_checkpoint"}


@dataclass(frozen=True)
class Hires:
    """The second pass of an A1111 txt2img request, in the upscale task's fields."""

    scale: object
    upscaler: str
    strength: object | None  # None: the upscale task's default
    steps: object | None  # None: the first pass's
    prompt: str  # "": the first pass's
    warnings: tuple[str, ...] = ()  # said in the answer's info


def hires_of(body: dict) -> Hires | None:
    """The hires fix a txt2img body asks for, or None without `enable_hr`."""
    if not body.get("enable_hr"):
        return None
    asked = body.get("hr_upscaler")
    if asked is not None and not isinstance(asked, str):
        raise InvalidInput("hr_upscaler", f"expected an upscaler's name, got {asked!r}")
    upscaler, warnings = asked or AUTO, []
    plain = (asked or "").strip().lower()
    if plain in RESIZES or plain.startswith("latent"):
        upscaler = LANCZOS
        if plain != LANCZOS:
            warnings.append(f"hr_upscaler {asked!r} is not offered here; the images were enlarged with Lanczos")
    prompt = body.get("hr_prompt") or ""
    if not isinstance(prompt, str):
        raise InvalidInput("hr_prompt", f"expected text, got {prompt!r}")
    return Hires(
        scale=DEFAULT_SCALE if body.get("hr_scale") is None else body["hr_scale"],
        upscaler=upscaler,
        strength=body.get("denoising_strength"),
        steps=body.get("hr_second_pass_steps") or None,
        prompt=prompt,
        warnings=tuple(warnings),
    )


def _request(hires: Hires, first: TaskRequest, image: object, seed: object, steps: object) -> TaskRequest:
    return TaskRequest(
        prompt=hires.prompt or first.prompt,
        image=image,
        scale=hires.scale,
        upscaler=hires.upscaler,
        strength=hires.strength,
        variant=first.variant,
        steps=hires.steps if hires.steps is not None else steps,
        guidance=first.guidance,
        seed=seed,
    )


def check(registry: Registry, hires: Hires, first: TaskRequest) -> None:
    """Raise InvalidInput (named as A1111 names the field) if the second pass would refuse its fields.
    A bad first-pass field is left to the first pass, which names it."""
    t2i, upscale = TASKS["text_to_image"], TASKS["upscale"]
    settings = registry.settings
    try:
        job = t2i.validate(t2i.from_request(first), settings, registry.loras)
    except InvalidInput:
        return
    blank = Image.new("RGB", (job.width, job.height))
    try:
        upscale.validate(upscale.from_request(_request(hires, first, blank, job.seed, job.steps)), settings, None)
    except InvalidInput as err:
        field = "hr_prompt" if err.field == "prompt" and hires.prompt else NAMES.get(err.field, err.field)
        raise InvalidInput(field, str(err).partition(": ")[2]) from None


def second_pass(registry: Registry, hires: Hires, first: TaskRequest, done: Outcome, on_event, stop) -> Outcome:
    """Each image of the first pass, upscaled and refined with its own seed; their delivered results."""
    out = Outcome("upscale", warnings=[*done.warnings, *hires.warnings])
    for image in done.delivered:
        made = run_task(
            registry, "upscale", _request(hires, first, image.image, image.meta.seed, image.meta.steps), on_event, stop
        )
        out.delivered += made.delivered
        out.warnings += made.warnings
        out.timings = {k: out.timings.get(k, 0.0) + v for k, v in made.timings.items()}
    return out
