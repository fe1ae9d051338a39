"""The REST API beside the UI: `GET /health` and `POST /generate`, on the same port (FastAPI, pydantic).

Requests run the same task functions as the UI (flux_ui/tasks/*), so validation, metadata and saved files
are the same. Jobs take the one path of every HTTP API (flux_ui/serving/jobs.py): at most `--queue-size`
requests waiting or running at once (the next is answered 503 at once), a worker thread per job, and
cancellation when the client disconnects.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import secrets
from collections.abc import Callable
from typing import Literal

import torch
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt

from flux_ui import __version__
from flux_ui.core.errors import Cancelled, InvalidInput, ModelUnavailableError, WorkerLost
from flux_ui.media.metadata import format_parameters, png_info
from flux_ui.models.faults import out_of_memory_message, recover_from_oom
from flux_ui.models.registry import Registry
from flux_ui.output.run import Outcome, run_task
from flux_ui.serving.jobs import Jobs, Running
from flux_ui.tasks import Request as TaskRequest
from flux_ui.tasks import api_field
from flux_ui.tasks.table import TASKS

log = logging.getLogger(__name__)

Task = Literal[tuple(TASKS)]  # the task table's names: a new task is offered here without a change
MAX_IMAGE_CHARS = 40_000_000  # one base64 image (about 30 MB of file); the decoder checks pixels after
MAX_TEXT_CHARS = 20_000  # pydantic's bound; the tasks' own, lower limits give the precise message
Number = StrictInt | StrictFloat  # strict: "28" or true is a type error naming the field, not coerced


class GenerateRequest(BaseModel):
    """One job. Fields a task does not use are ignored by it; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    task: Task
    prompt: str = Field("", max_length=MAX_TEXT_CHARS, description="the prompt, instruction or VQA question")
    image: str | None = Field(None, max_length=MAX_IMAGE_CHARS, description="base64 (or data: URL) PNG/JPEG/WebP")
    images: list[str] = Field(
        [], max_length=3, description="Redux, Kontext, flux2_edit: up to three more references, base64 like `image`"
    )
    strengths: list[Number] = Field([], max_length=4, description="Redux: one strength per reference, 0-2")
    strength: Number | None = Field(
        None,
        description="image_to_image: denoise strength, above 0 up to 1 (1 ignores the input), default 0.75; "
        "upscale: the refine pass's, 0 (upscale only) up to 1, default 0.3; "
        "flux2_inpaint: the masked area's, default 1",
    )
    scale: Number | None = Field(None, description="upscale: output side / input side, 1.5 to 4; default 2")
    upscaler: str | None = Field(
        None, max_length=200, description='upscale: "auto" (default), "lanczos" or an upscaler model\'s name'
    )
    tiling: Literal["auto", "on", "off"] | None = Field(None, description="upscale: refine in tiles; default auto")
    mask: str | None = Field(None, max_length=MAX_IMAGE_CHARS, description="Fill, flux2_inpaint: white = repaint")
    control_image: str | None = Field(None, max_length=MAX_IMAGE_CHARS, description="Control: a ready map")
    resolution: str | None = Field(None, max_length=32, description='"WIDTHxHEIGHT"; Kontext also "auto"')
    variant: str | None = Field(
        None,
        max_length=64,
        description="text_to_image: dev, schnell, krea-dev or a FLUX.2 model (flux2-dev, flux2-klein-4b, "
        "flux2-klein-9b, flux2-klein-base-4b, flux2-klein-base-9b); flux2_edit, flux2_inpaint: a FLUX.2 model",
    )
    steps: StrictInt | None = None
    guidance: Number | None = None
    seed: StrictInt = -1
    num_images: StrictInt = 1
    mode: Literal["canny", "depth"] = "canny"
    route: Literal["full", "lora"] = "full"
    left: StrictInt = 0
    right: StrictInt = 0
    top: StrictInt = 0
    bottom: StrictInt = 0
    max_new_tokens: StrictInt | None = None
    fast: StrictBool = Field(
        False,
        description="text_to_image, image_to_image, kontext_edit, redux_variation, fill, control: fast mode "
        "(cache-dit step cache); default off",
    )


class ImageOut(BaseModel):
    png: str  # base64 PNG with the `parameters` text chunk embedded
    seed: int
    parameters: str  # the same text as embedded in the PNG
    saved: str | None  # path under the outputs folder, None if it could not be saved


class GenerateResponse(BaseModel):
    task: Task
    images: list[ImageOut] = []
    answer: str | None = None  # vqa only
    seed: int | None = None
    timings: dict[str, float] = {}
    warnings: list[str] = []
    replica: str | None = None  # with --replicas: the replica that made the images


def decode_base64(value: str | None, field: str, max_mb: float) -> bytes | None:
    """Raw bytes from base64 or a data: URL, at most `max_mb` MB (--max-upload-mb, the limit of uploads
    in the UI); the image decoder (images.load_image) checks the rest."""
    if value is None or value == "":
        return None
    text = value.partition(",")[2] if value.startswith("data:") else value
    if len(text) * 3 // 4 > max_mb * 1_000_000:  # before decoding: base64 is 4 characters per 3 bytes
        raise InvalidInput(
            field,
            f"is {len(text) * 3 / 4e6:.1f} MB, over the limit of {max_mb:g} MB (--max-upload-mb); send a smaller file",
        )
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(field, "is not valid base64") from None


def rest_field(field: str, req: GenerateRequest) -> str:
    """The REST name of a task parameter (see `tasks.api_field`)."""
    return api_field(field, req.resolution)


def task_request(req: GenerateRequest, max_upload_mb: float) -> TaskRequest:
    """The task layer's request from a REST body, its base64 images decoded (InvalidInput names the field)."""

    def decode(value: str | None, field: str) -> bytes | None:
        return decode_base64(value, field, max_upload_mb)

    fields = req.model_dump(exclude={"task", "image", "images", "mask", "control_image", "strengths"})
    return TaskRequest(
        **fields,
        image=decode(req.image, "image"),
        images=tuple(decode(v, f"images[{i}]") for i, v in enumerate(req.images)),
        strengths=tuple(req.strengths),
        mask=decode(req.mask, "mask"),
        control_image=decode(req.control_image, "control_image"),
    )


def _png(result_image, meta) -> str:
    buf = io.BytesIO()
    result_image.save(buf, format="PNG", pnginfo=png_info(meta))
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _respond(req: GenerateRequest, outcome: Outcome) -> GenerateResponse:
    if outcome.result is None:
        return GenerateResponse(task=req.task, answer=outcome.answer)
    images = [
        ImageOut(
            png=_png(d.image, d.meta),
            seed=d.meta.seed,
            parameters=format_parameters(d.meta),
            saved=None if d.saved is None else str(d.saved),
        )
        for d in outcome.delivered
    ]
    result = outcome.result
    return GenerateResponse(
        task=req.task,
        images=images,
        seed=result.seed,
        timings=result.timings,
        warnings=outcome.warnings,
        replica=result.replica,
    )


def _error(status: int, message: str, field: str | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status_code=status)


def authorized(request: Request, api_key: str | None, auth: tuple[str, str] | None) -> bool:
    """Whether `request` may use the HTTP APIs: it carries the API key (as X-API-Key, or as a Bearer
    token, which is how OpenAI clients send theirs) or, when the UI has a login, that login as HTTP Basic;
    with neither configured, every request may."""
    if api_key is None and auth is None:
        return True
    header = request.headers.get("authorization", "")
    given = request.headers.get("x-api-key")
    if given is None and header.lower().startswith("bearer "):
        given = header[7:].strip()
    if api_key is not None and given is not None and secrets.compare_digest(given.encode(), api_key.encode()):
        return True
    if auth is not None and header.lower().startswith("basic "):
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (binascii.Error, ValueError):
            user, password = "", ""
        if secrets.compare_digest(user.encode(), auth[0].encode()) and secrets.compare_digest(
            password.encode(), auth[1].encode()
        ):
            return True
    return False


def unauthorized_message(api_key: str | None) -> str:
    how = "an X-API-Key header (or Bearer token)" if api_key is not None else "HTTP Basic auth with the UI's login"
    return f"Unauthorized: send {how}."


def key_checker(api_key: str | None, auth: tuple[str, str] | None) -> Callable[[Request], None]:
    """A dependency that lets a REST call through when `authorized`, else answers 401."""

    def check(request: Request) -> None:
        if not authorized(request, api_key, auth):
            raise HTTPException(401, unauthorized_message(api_key), headers={"WWW-Authenticate": "Basic"})

    return check


def router(registry: Registry, auth: tuple[str, str] | None = None, jobs: Jobs | None = None) -> APIRouter:
    """The REST routes over `registry`; `auth` is the UI's login, which also opens the REST API; `jobs` the
    job path shared with the other HTTP APIs (a new one if None)."""
    settings = registry.settings
    jobs = jobs or Jobs(settings.queue_size)
    guard = Depends(key_checker(settings.api_key, auth))
    api = APIRouter()

    @api.api_route("/health", methods=["GET", "HEAD"], summary="Liveness, device and what is loaded")
    def health() -> dict:
        status = registry.status()
        return {
            "status": "healthy",
            "version": __version__,
            "device": settings.device,
            "dtype": status["dtype"],
            "speed": settings.speed,
            "memory_policy": settings.memory_policy,
            "replicas": settings.replicas,  # 0: the models are this process's (listed below)
            "memory": status.get("memory"),
            "loaded": {
                "shared": status["shared"],
                "transformers": status["transformers"],
                "aux": sorted(status["aux"]),
            },
        }

    @api.api_route(
        "/status", methods=["GET", "HEAD"], dependencies=[guard], summary="What is loaded, downloads, first start"
    )
    def status() -> dict:
        """The registry's status, as the UI's `/status` endpoint returns it. Never waits for a load or a run:
        while one holds the models, `busy` is true and what is loaded is as of `snapshot_age_s` seconds ago;
        `downloads`, `startup` and `first_start` are live."""
        return registry.status()

    @api.post("/generate", response_model=GenerateResponse, dependencies=[guard], summary="Run one task")
    async def generate(req: GenerateRequest, request: Request):
        """Run `task` and return its images as base64 PNGs with their parameters (or, for vqa, the answer).

        Errors: 401 without the key, 413 for a body over --max-body-mb, 422 for a bad field (the message names
        it), 503 when the queue is full or memory ran out, 500 for anything else. A client that
        disconnects cancels its job after the current step, so the GPU is not spent on nobody."""
        return await jobs.run(request, Running("rest", req.task), lambda job: _serve(req, job))

    def _serve(req: GenerateRequest, job: Running) -> GenerateResponse | JSONResponse:
        try:
            request = task_request(req, settings.max_upload_mb)
            # Delivery (the safety classifier may fail to load) happens inside, as in the UI.
            return _respond(req, run_task(registry, req.task, request, job.on_event, job.stop.is_set))
        except InvalidInput as err:
            field = rest_field(err.field, req)  # the task names the UI's parameter; say the caller's
            return _error(422, f"{field}: {str(err).partition(': ')[2]}", field)
        except (ModelUnavailableError, WorkerLost) as err:
            return _error(503, str(err))
        except Cancelled:
            return _error(499, "cancelled: the client disconnected")  # nginx's code; nobody is listening
        except torch.OutOfMemoryError:
            recover_from_oom(registry)
            return _error(503, out_of_memory_message())

    def wrong_method(request: Request) -> JSONResponse:
        allowed = "POST" if request.url.path == "/generate" else "GET, HEAD"
        message = f"method: {request.method} is not allowed on {request.url.path}; use {allowed}"
        return JSONResponse({"error": message, "field": "method"}, 405, headers={"Allow": allowed})

    # Without these, Gradio's app (mounted at /) answers other methods on these paths with 404.
    api.add_api_route(
        "/generate", wrong_method, methods=["GET", "HEAD", "PUT", "PATCH", "DELETE"], include_in_schema=False
    )
    for path in ("/health", "/status"):
        api.add_api_route(path, wrong_method, methods=["POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    return api


def install(app: FastAPI, registry: Registry, auth: tuple[str, str] | None = None, jobs: Jobs | None = None) -> None:
    """Add the REST routes, the body-size limit and field-naming validation errors to `app`."""
    app.include_router(router(registry, auth, jobs))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        field = ".".join(loc) or "body"
        if first.get("type") == "json_invalid":  # its loc is a character position, not a field
            field = "body"
        return JSONResponse({"error": f"{field}: {first.get('msg')}", "field": field, "details": jsonable(errors)}, 422)

    app.add_middleware(BodyLimit, limit=int(registry.settings.max_body_mb * 1_000_000))


UPLOAD_ROUTE = "/gradio_api/upload"  # Gradio's upload route streams files to disk under its own limit


class BodyLimit:
    """Refuse a request body over `limit` bytes on every route but Gradio's upload route (REST calls,
    Gradio API calls): by its Content-Length before anything is read, and for a body sent without one
    (chunked) as soon as the bytes received pass the limit. The body is read here, up to the limit, and
    handed on whole; later `receive` calls go to the server, so the endpoint still sees a disconnect.
    Plain ASGI rather than `@app.middleware("http")`, whose wrapping of `receive` hides a client's
    disconnect from the endpoint."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD") or scope["path"] == UPLOAD_ROUTE:
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            await self._refuse(int(length), scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before sending its body: nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(self.limit, scope, receive, send, at_least=True)
                return
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        body, pending = b"".join(chunks), True

        async def replay():
            nonlocal pending
            if pending:
                pending = False
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, size: int, scope, receive, send, at_least: bool = False) -> None:
        size_text = f"{'more than ' if at_least else ''}{size} bytes"
        log.warning("refused a %s body of %s to %s (limit %d)", scope["method"], size_text, scope["path"], self.limit)
        message = f"body: {size_text} is over the limit of {self.limit} bytes (--max-body-mb); send less"
        await _error(413, message, "body")(scope, receive, send)


def jsonable(errors: list) -> list:
    """pydantic error details without the raw input (which may be megabytes of base64) or exceptions."""
    return [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg")), "type": e.get("type")} for e in errors]
