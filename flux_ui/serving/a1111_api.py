"""A subset of AUTOMATIC1111's web UI API (`/sdapi/v1/...`), so the clients that speak it (Open WebUI,
SillyTavern, Krita plugins, bots, scripts) generate here:

- `POST /sdapi/v1/txt2img`: `prompt` (with `<lora:NAME:WEIGHT>` tags), `seed`, `steps`, `width`, `height`,
  `batch_size` x `n_iter` images, `distilled_cfg_scale` (Forge's name for FLUX's guidance) or else
  `cfg_scale` as the guidance, `override_settings.sd_model_checkpoint` for the model; `enable_hr` with
  `hr_scale`, `hr_upscaler`, `denoising_strength`, `hr_second_pass_steps`, `hr_prompt`: hires fix, each
  image handed to the upscale task (`a1111_hires`).
- `POST /sdapi/v1/img2img`: `init_images[0]` and `prompt`; with a `mask` (white = repaint, or inverted with
  `inpainting_mask_invert`), FLUX.1 Fill [dev]; else the image-to-image task when the task table has one
  (with `denoising_strength`), else FLUX.1 Kontext [dev] with the prompt as the instruction.
- `GET /sdapi/v1/sd-models`, `GET /sdapi/v1/loras` (`POST /sdapi/v1/refresh-loras` rescans),
  `GET/POST /sdapi/v1/options` (`sd_model_checkpoint`: the model of later requests of this API; other
  options are answered but not stored), `GET /sdapi/v1/progress`, `POST /sdapi/v1/interrupt`.

Responses are A1111's: `{"images": [base64 PNG...], "parameters": {...}, "info": "<JSON text>"}`, the info
carrying the seeds and each image's parameters text (`infotexts`). Fields we do not support (samplers,
negative prompts: FLUX.1 has none) are ignored and listed in the info's `ignored`. A bad field
is answered 422 as A1111 answers one: `{"detail": [{"loc": ["body", FIELD], "msg", "type"}]}`.
Auth is the REST API's: the API key (X-API-Key or Bearer), or the UI's login as HTTP Basic (A1111's
--api-auth).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import threading
import time
from datetime import datetime

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import ImageOps

from flux_ui import __version__
from flux_ui.core.errors import InvalidInput
from flux_ui.media.images import open_image
from flux_ui.media.metadata import format_parameters, png_info
from flux_ui.models.registry import Registry
from flux_ui.output.run import Outcome
from flux_ui.serving import a1111_hires
from flux_ui.serving.jobs import Failure, Jobs, run_outcome
from flux_ui.serving.model_names import DEFAULT_VARIANT, resolve_variant, text_to_image_variants
from flux_ui.serving.rest import authorized, decode_base64, unauthorized_message
from flux_ui.tasks import Request as TaskRequest
from flux_ui.tasks.params import check_int
from flux_ui.tasks.table import TASKS

IMAGE_TO_IMAGE = "image_to_image"  # used for img2img without a mask once the task table has it
CHECKPOINT = "override_settings.sd_model_checkpoint"
TXT2IMG_FIELDS = {"prompt", "seed", "steps", "width", "height", "batch_size", "n_iter", "cfg_scale"}
TXT2IMG_FIELDS |= {"distilled_cfg_scale", "override_settings", "send_images", "save_images"}
IMG2IMG_FIELDS = TXT2IMG_FIELDS | {"init_images", "mask", "inpainting_mask_invert", "include_init_images"}
# Values that ask for nothing, which clients send by default: not worth listing as ignored.
_NOTHING = (None, "", [], {}, False, 0, -1)


def a1111_error(field: str, message: str) -> JSONResponse:
    return JSONResponse({"detail": [{"loc": ["body", field], "msg": message, "type": "value_error"}]}, 422)


def _png_b64(d) -> str:
    buf = io.BytesIO()
    d.image.save(buf, format="PNG", pnginfo=png_info(d.meta))
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _number(body: dict, field: str) -> int | None:
    return None if body.get(field) is None else check_int(field, body[field])


@dataclasses.dataclass
class Plan:
    """An A1111 request as one of our tasks: the task, its request, and our field names -> A1111's."""

    task: str
    request: TaskRequest
    fields: dict[str, str]
    ignored: list[str]
    hires: a1111_hires.Hires | None = None  # txt2img's hires fix: each image then upscaled


def _common(body: dict, model: str, supported: set[str]) -> tuple[dict, dict[str, str], list[str]]:
    """The fields txt2img and img2img share, as TaskRequest fields; our names -> A1111's; ignored fields."""
    ignored = sorted(k for k, v in body.items() if k not in supported and v not in _NOTHING)
    overrides = body.get("override_settings") or {}
    if not isinstance(overrides, dict):
        raise InvalidInput("override_settings", 'expected an object such as {"sd_model_checkpoint": "dev"}')
    ignored += sorted(f"override_settings.{k}" for k in overrides if k != "sd_model_checkpoint")
    variant = resolve_variant(overrides.get("sd_model_checkpoint"), CHECKPOINT, model)
    width, height = _number(body, "width"), _number(body, "height")
    batch, n_iter = _number(body, "batch_size") or 1, _number(body, "n_iter") or 1
    guidance_field = "distilled_cfg_scale" if body.get("distilled_cfg_scale") is not None else "cfg_scale"
    fields = {
        "prompt": body.get("prompt", ""),
        "variant": variant,
        "resolution": None if width is None or height is None else f"{width}x{height}",
        "steps": body.get("steps"),
        "guidance": body.get(guidance_field),
        "seed": body.get("seed", -1),
        "num_images": batch * n_iter,
    }
    names = {"variant": CHECKPOINT, "guidance": guidance_field, "num_images": "batch_size", "resolution": "width"}
    names |= {"size": "width", "instruction": "prompt", "image": "init_images[0]"}
    return fields, names, ignored


def txt2img_plan(body: dict, model: str) -> Plan:
    hires = a1111_hires.hires_of(body)
    fields, names, ignored = _common(body, model, TXT2IMG_FIELDS | (a1111_hires.FIELDS if hires else set()))
    return Plan("text_to_image", TaskRequest(**fields), names, ignored, hires)


def img2img_plan(body: dict, model: str, max_upload_mb: float) -> Plan:
    fields, names, ignored = _common(body, model, IMG2IMG_FIELDS | {"denoising_strength"})
    images = body.get("init_images")
    if not isinstance(images, list) or not images or not isinstance(images[0], str):
        raise InvalidInput("init_images", "is missing; send the image as base64 in init_images[0]")
    ignored += [f"init_images[{i}]" for i in range(1, len(images))]
    fields["image"] = decode_base64(images[0], "init_images[0]", max_upload_mb)
    del fields["variant"]  # img2img's models are fixed by the task
    if body.get("mask"):
        mask = open_image(decode_base64(body["mask"], "mask", max_upload_mb), "mask", min_side=1).convert("L")
        fields["mask"] = ImageOps.invert(mask) if body.get("inpainting_mask_invert") else mask
        del fields["resolution"]  # Fill keeps the image's size
        return Plan("fill", TaskRequest(**fields), names, ignored + _unused("denoising_strength", body))
    if IMAGE_TO_IMAGE in TASKS:
        # The task's strength reaches it only if the shared request has a field for it.
        extra = {}
        if "strength" in {f.name for f in dataclasses.fields(TaskRequest)} and "denoising_strength" in body:
            extra = {"strength": body["denoising_strength"]}
            names["strength"] = "denoising_strength"
        unused = [] if extra else _unused("denoising_strength", body)
        return Plan(IMAGE_TO_IMAGE, TaskRequest(**fields, **extra), names, ignored + unused)
    return Plan("kontext_edit", TaskRequest(**fields), names, ignored + _unused("denoising_strength", body))


def _unused(field: str, body: dict) -> list[str]:
    return [field] if body.get(field) not in _NOTHING else []


def info_text(plan: Plan, outcome: Outcome, interrupted: bool = False) -> str:
    """A1111's `info`: the JSON text clients parse for seeds and parameters."""
    metas = [d.meta for d in outcome.delivered]
    first = metas[0] if metas else None
    r = plan.request
    info = {
        "prompt": r.prompt,
        "all_prompts": [m.prompt for m in metas],
        "negative_prompt": "",
        "seed": first.seed if first else r.seed,
        "all_seeds": [m.seed for m in metas],
        "width": first.width if first else None,
        "height": first.height if first else None,
        "sampler_name": "Euler",
        "steps": first.steps if first else r.steps,
        "cfg_scale": 1.0,
        "distilled_cfg_scale": first.guidance if first else r.guidance,
        "batch_size": len(metas),
        "sd_model_name": first.variant if first else r.variant,
        "sd_model_hash": None,
        "infotexts": [format_parameters(m) for m in metas],
        "job_timestamp": datetime.now().strftime("%Y%m%d%H%M%S"),
        "version": f"flux-ui {__version__}",
        "task": plan.task,
        "ignored": plan.ignored,
        "interrupted": interrupted,
        "warnings": outcome.warnings,
    }
    return json.dumps(info)


def router(registry: Registry, auth: tuple[str, str] | None, jobs: Jobs) -> APIRouter:
    """The A1111 routes over `registry`, through the HTTP APIs' shared `jobs`."""
    settings = registry.settings
    options = {"sd_model_checkpoint": DEFAULT_VARIANT}  # this API's model for later requests
    lock = threading.Lock()
    api = APIRouter(prefix="/sdapi/v1", tags=["AUTOMATIC1111 API"])

    def refused(request: Request) -> JSONResponse | None:
        if authorized(request, settings.api_key, auth):
            return None
        return JSONResponse({"detail": unauthorized_message(settings.api_key)}, 401)

    async def body_of(request: Request) -> dict | JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return a1111_error("body", "expected a JSON object")
        return body if isinstance(body, dict) else a1111_error("body", "expected a JSON object")

    async def generate(request: Request, img2img: bool) -> JSONResponse:
        if (refusal := refused(request)) is not None:
            return refusal
        body = await body_of(request)
        if isinstance(body, JSONResponse):
            return body
        with lock:
            model = options["sd_model_checkpoint"]
        try:
            plan = img2img_plan(body, model, settings.max_upload_mb) if img2img else txt2img_plan(body, model)
            if plan.hires is not None:
                a1111_hires.check(registry, plan.hires, plan.request)
        except InvalidInput as err:
            return a1111_error(err.field, str(err).partition(": ")[2])
        hires = plan.hires

        def then(first: Outcome, job) -> Outcome:
            return a1111_hires.second_pass(registry, hires, plan.request, first, job.on_event, job.stop.is_set)

        then_run = then if hires is not None else None
        outcome = await run_outcome(jobs, registry, request, "a1111", plan.task, lambda: plan.request, then_run)
        interrupted = isinstance(outcome, Failure) and outcome.kind == "interrupted"
        if isinstance(outcome, Failure) and not interrupted:
            if outcome.kind == "invalid":
                field = plan.fields.get(outcome.field or "", outcome.field or "body")
                return a1111_error(field, outcome.message)
            return JSONResponse({"error": outcome.kind, "detail": outcome.message}, outcome.status)
        done = Outcome(plan.task) if interrupted else outcome
        parameters = {**body, "init_images": None, "mask": None} if img2img else body
        return JSONResponse(
            {
                "images": [_png_b64(d) for d in done.delivered],  # type: ignore[union-attr]
                "parameters": parameters,
                "info": info_text(plan, done, interrupted),  # type: ignore[arg-type]
            }
        )

    @api.post("/txt2img", summary="A1111: text to image")
    async def txt2img(request: Request):
        return await generate(request, img2img=False)

    @api.post("/img2img", summary="A1111: image to image (Fill with a mask, else image-to-image or Kontext)")
    async def img2img(request: Request):
        return await generate(request, img2img=True)

    @api.get("/sd-models", summary="A1111: the text-to-image models")
    async def sd_models(request: Request):
        if (refusal := refused(request)) is not None:
            return refusal
        return [
            {"title": v.name, "model_name": v.name, "hash": None, "sha256": None, "filename": v.repo_id, "config": None}
            for v in text_to_image_variants()
        ]

    # Clients fill their sampler and scheduler menus from these (SillyTavern, Krita plugins) and fail on a
    # 404. FLUX.1 runs one sampler: the flow-matching Euler scheduler of its pipelines, which `sampler_name`
    # and `scheduler` of a request cannot change (a request that sends them finds them in info's `ignored`).
    @api.get("/samplers", summary="A1111: the samplers (FLUX.1's flow-matching Euler)")
    async def samplers(request: Request):
        if (refusal := refused(request)) is not None:
            return refusal
        return [{"name": "Euler", "aliases": ["euler", "flow_match_euler"], "options": {}}]

    @api.get("/schedulers", summary="A1111: the schedulers (FLUX.1's own)")
    async def schedulers(request: Request):
        if (refusal := refused(request)) is not None:
            return refusal
        return [
            {
                "name": "simple",
                "label": "Simple",
                "aliases": ["flow_match"],
                "default_rho": -1,
                "need_inner_model": False,
            }
        ]

    @api.get("/sd-vae", summary="A1111: the VAEs (FLUX.1's shared one)")
    async def sd_vae(request: Request):
        if (refusal := refused(request)) is not None:
            return refusal
        return [{"model_name": "Automatic", "filename": None}]

    @api.get("/loras", summary="A1111: the LoRAs a prompt can name")
    async def loras(request: Request):
        if (refusal := refused(request)) is not None:
            return refusal
        return [
            {"name": e.name, "alias": e.name, "path": e.path.name if e.path else e.source, "metadata": {}}
            for e in registry.loras.entries()
        ]

    @api.post("/refresh-loras", summary="A1111: rescan the LoRA folders")
    async def refresh_loras(request: Request):
        if (refusal := refused(request)) is not None:
            return refusal
        registry.loras.refresh()
        return None

    @api.get("/options", summary="A1111: options (the model)")
    async def get_options(request: Request):
        if (refusal := refused(request)) is not None:
            return refusal
        with lock:
            model = options["sd_model_checkpoint"]
        return {"sd_model_checkpoint": model, "sd_checkpoint_hash": None, "samples_format": "png"}

    @api.post("/options", summary="A1111: set options (sd_model_checkpoint; others are not stored)")
    async def set_options(request: Request):
        if (refusal := refused(request)) is not None:
            return refusal
        body = await body_of(request)
        if isinstance(body, JSONResponse):
            return body
        if "sd_model_checkpoint" in body:
            try:
                model = resolve_variant(body["sd_model_checkpoint"], "sd_model_checkpoint")
            except InvalidInput as err:
                return a1111_error(err.field, str(err).partition(": ")[2])
            with lock:
                options["sd_model_checkpoint"] = model
        return None

    @api.get("/progress", summary="A1111: progress of the running job")
    async def progress(request: Request, skip_current_image: bool = False):
        if (refusal := refused(request)) is not None:
            return refusal
        running = jobs.running("a1111")
        job = running[-1] if running else None
        step = job.step if job else None
        fraction = job.progress if job else 0.0
        elapsed = time.time() - job.started if job else 0.0
        preview = None
        if step is not None and step.preview is not None and not skip_current_image:
            buf = io.BytesIO()
            step.preview.save(buf, format="PNG")
            preview = base64.b64encode(buf.getvalue()).decode("ascii")
        state = {
            "skipped": False,
            "interrupted": bool(job and job.interrupted),
            "job": job.task if job else "",
            "job_count": len(running),
            "job_timestamp": datetime.fromtimestamp(job.started).strftime("%Y%m%d%H%M%S") if job else "0",
            "job_no": step.image_index if step else 0,
            "sampling_step": step.step if step else 0,
            "sampling_steps": step.steps if step else 0,
        }
        eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
        return {"progress": fraction, "eta_relative": eta, "state": state, "current_image": preview, "textinfo": None}

    @api.post("/interrupt", summary="A1111: stop the running jobs of this API after their current step")
    async def interrupt(request: Request):
        if (refusal := refused(request)) is not None:
            return refusal
        jobs.interrupt("a1111")
        return {}

    return api


def install(app: FastAPI, registry: Registry, auth: tuple[str, str] | None, jobs: Jobs) -> None:
    app.include_router(router(registry, auth, jobs))
