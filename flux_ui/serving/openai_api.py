"""OpenAI's images API, so the official `openai` client and the tools built on it (Open WebUI, LibreChat,
agent frameworks) generate and edit images here:

- `POST /v1/images/generations`: text to image. `model` is one of our text-to-image variants by any of its
  names (dev, schnell, krea-dev, flux.1-dev, black-forest-labs/FLUX.1-dev, ...; see `model_names`);
  OpenAI's own names (dall-e-2, dall-e-3, gpt-image-1, ...) and none at all mean FLUX.1 [dev].
  `size` is "WIDTHxHEIGHT" (multiples of 16) or "auto" (1024x1024); `n` images (up to --max-images).
  `quality`, `style`, `background`, `moderation`, `output_format`, `user` ... are accepted and ignored:
  the variant decides the look, and images are PNG.
- `POST /v1/images/edits` (multipart): `image` and `prompt` edit with FLUX.1 Kontext [dev]; with a `mask`,
  FLUX.1 Fill [dev] repaints it. As in OpenAI's API, the mask's transparent pixels are the area to
  edit; a mask without transparency is read as ours: white = repaint. `size` applies to Kontext only
  (Fill keeps the image's size); `model` is checked and otherwise ignored.
- `GET /v1/models`: the variants.
- `response_format`: `b64_json` (the default) or `url`, a link to the saved PNG on this server under a
  random 128-bit name (`GET /v1/files/{token}`, with the same key as the API), kept for the latest
  MAX_LINKS images while the server runs.

Errors have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, `param` naming the field.
The key is the REST API's (`--api-key`), sent as OpenAI clients send theirs: `Authorization: Bearer KEY`.
"""

from __future__ import annotations

import base64
import io
import logging
import secrets
import threading
import time
from collections import OrderedDict
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError
from starlette.datastructures import UploadFile

from flux_ui.core.errors import InvalidInput
from flux_ui.core.variants import VARIANTS
from flux_ui.media.images import open_image
from flux_ui.media.metadata import png_info
from flux_ui.models.registry import Registry
from flux_ui.output.deliver import Delivered
from flux_ui.output.run import Outcome
from flux_ui.serving.jobs import Failure, Jobs, run_outcome
from flux_ui.serving.model_names import resolve_variant
from flux_ui.serving.rest import authorized, unauthorized_message
from flux_ui.tasks import Request as TaskRequest

log = logging.getLogger(__name__)
MAX_LINKS = 1000  # saved images reachable by `url` links; the oldest links are forgotten first
# Our task fields under OpenAI's names.
PARAMS = {"instruction": "prompt", "width": "size", "height": "size", "resolution": "size"}
PARAMS |= {"num_images": "n", "variant": "model"}


class GenerationRequest(BaseModel):
    """The body of /v1/images/generations. Fields not listed (OpenAI adds some now and then) are ignored."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(max_length=20_000)
    model: str | None = None
    n: StrictInt = 1
    size: str | None = "auto"
    response_format: str | None = "b64_json"
    quality: str | None = None  # accepted, ignored
    style: str | None = None  # accepted, ignored


def openai_error(status: int, message: str, param: str | None = None, kind: str | None = None, code=None):
    kind = kind or ("invalid_request_error" if status < 500 else "server_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def _failure(f: Failure) -> JSONResponse:
    if f.kind == "invalid":
        param = PARAMS.get(f.field or "", f.field)
        return openai_error(400, f"{param}: {f.message}", param)
    return openai_error(f.status if f.status != 200 else 499, f.message, code=f.kind)


class Links:
    """Saved images by random token (for `response_format=url`); an image that could not be saved is
    kept in memory as its PNG instead. Bounded: the oldest links are dropped."""

    def __init__(self, size: int = MAX_LINKS):
        self._items: OrderedDict[str, Path | bytes] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def add(self, d: Delivered) -> str:
        token = secrets.token_hex(16)
        item: Path | bytes = d.saved if d.saved is not None else _png(d)
        with self._lock:
            self._items[token] = item
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return token

    def get(self, token: str) -> Path | bytes | None:
        with self._lock:
            return self._items.get(token)


def _png(d: Delivered) -> bytes:
    buf = io.BytesIO()
    d.image.save(buf, format="PNG", pnginfo=png_info(d.meta))
    return buf.getvalue()


def _check_format(value: object) -> str:
    if value in (None, ""):
        return "b64_json"
    if value not in ("b64_json", "url"):
        raise InvalidInput("response_format", f"expected b64_json or url, got {value!r:.40}")
    return value  # type: ignore[return-value]


def _resolution(size: object) -> str | None:
    if size in (None, "", "auto"):
        return None
    if not isinstance(size, str):
        raise InvalidInput("size", f"expected 'WIDTHxHEIGHT' or 'auto', got {size!r:.40}")
    return size


def _int(value: object, field: str) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise InvalidInput(field, f"expected a whole number, got {str(value)!r:.40}") from None


def openai_mask(data: bytes) -> Image.Image:
    """Our Fill mask (white = repaint) from an OpenAI mask, whose fully transparent pixels mark the area to
    edit; a mask without transparency is taken as ours."""
    img = open_image(data, "mask", min_side=1)
    if img.mode in ("P", "PA", "LA") or "transparency" in img.info:
        img = img.convert("RGBA")
    if "A" in img.getbands():
        alpha = img.getchannel("A")
        if alpha.getextrema() != (255, 255):
            return alpha.point(lambda v: 255 if v < 128 else 0)
    return img.convert("L")


def router(registry: Registry, auth: tuple[str, str] | None, jobs: Jobs) -> APIRouter:
    """The OpenAI images routes over `registry`, through the HTTP APIs' shared `jobs`."""
    settings = registry.settings
    links = Links()
    api = APIRouter(tags=["OpenAI images API"])

    def refused(request: Request) -> JSONResponse | None:
        if authorized(request, settings.api_key, auth):
            return None
        return openai_error(401, unauthorized_message(settings.api_key), code="invalid_api_key")

    async def respond(request: Request, task: str, make, response_format: str, prompt: str) -> JSONResponse:
        outcome = await run_outcome(jobs, registry, request, "openai", task, make)
        if isinstance(outcome, Failure):
            return _failure(outcome)
        return JSONResponse({"created": int(time.time()), "data": _data(request, outcome, response_format, prompt)})

    def _data(request: Request, outcome: Outcome, response_format: str, prompt: str) -> list[dict]:
        data = []
        for d in outcome.delivered:
            if response_format == "url":
                data.append({"url": f"{request.base_url}v1/files/{links.add(d)}", "revised_prompt": prompt})
            else:
                data.append({"b64_json": base64.b64encode(_png(d)).decode("ascii"), "revised_prompt": prompt})
        return data

    @api.post("/v1/images/generations", summary="OpenAI images API: create images")
    async def generations(request: Request):
        if (refusal := refused(request)) is not None:
            return refusal
        try:
            body = GenerationRequest.model_validate(await request.json())
        except ValueError as err:  # a JSONDecodeError or a ValidationError, both ValueErrors
            return _validation_error(err)
        try:
            variant = resolve_variant(body.model, "model")
            response_format = _check_format(body.response_format)
            task_request = TaskRequest(
                prompt=body.prompt, variant=variant, resolution=_resolution(body.size), num_images=body.n
            )
        except InvalidInput as err:
            return openai_error(400, str(err), err.field)
        return await respond(request, "text_to_image", lambda: task_request, response_format, body.prompt)

    @api.post("/v1/images/edits", summary="OpenAI images API: edit an image (Kontext; Fill with a mask)")
    async def edits(request: Request):
        if (refusal := refused(request)) is not None:
            return refusal
        try:
            form = await request.form()
        except Exception as err:  # noqa: BLE001 - starlette raises several kinds for a malformed body
            return openai_error(400, f"body: expected multipart/form-data ({err})", "body")
        try:
            images = [f for f in [*form.getlist("image"), *form.getlist("image[]")] if isinstance(f, UploadFile)]
            if not images:
                raise InvalidInput("image", "is missing; send the image to edit as a file")
            if len(images) > 1:
                raise InvalidInput("image", f"got {len(images)} images; FLUX.1 Kontext [dev] edits one image")
            image = await _read(images[0], "image", settings.max_upload_mb)
            mask_file = form.get("mask")
            mask = await _read(mask_file, "mask", settings.max_upload_mb) if isinstance(mask_file, UploadFile) else None
            prompt = form.get("prompt")
            if not isinstance(prompt, str):
                raise InvalidInput("prompt", "is missing; say what to change in the image")
            resolve_variant(form.get("model"), "model")  # a known name (any); the edit models are fixed
            response_format = _check_format(form.get("response_format"))
            n = _int(form.get("n", 1), "n")
            resolution = _resolution(form.get("size"))
        except InvalidInput as err:
            return openai_error(400, str(err), err.field)
        if mask is not None:

            def make() -> TaskRequest:
                return TaskRequest(prompt=prompt, image=image, mask=openai_mask(mask), num_images=n)

            return await respond(request, "fill", make, response_format, prompt)
        task_request = TaskRequest(prompt=prompt, image=image, resolution=resolution, num_images=n)
        return await respond(request, "kontext_edit", lambda: task_request, response_format, prompt)

    @api.get("/v1/models", summary="OpenAI API: the models")
    async def models(request: Request):
        if (refusal := refused(request)) is not None:
            return refusal
        names = [v.name for v in VARIANTS.values() if v.task in ("text_to_image", "kontext", "fill")]
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "black-forest-labs"} for n in names]
        return {"object": "list", "data": data}

    @api.get("/v1/files/{token}", summary="An image made with response_format=url")
    async def files(token: str, request: Request):
        if (refusal := refused(request)) is not None:
            return refusal
        item = links.get(token)
        if item is None:
            return openai_error(404, "token: no such image (links last while the server runs)", "token")
        if isinstance(item, bytes):
            return Response(item, media_type="image/png")
        return FileResponse(item, media_type="image/png")

    return api


def _validation_error(err: ValueError) -> JSONResponse:
    if isinstance(err, ValidationError) and err.errors():
        first = err.errors()[0]
        param = ".".join(str(p) for p in first.get("loc", ())) or "body"
        return openai_error(400, f"{param}: {first.get('msg')}", param)
    return openai_error(400, f"body: expected a JSON object ({err})", "body")


async def _read(upload: UploadFile, field: str, max_mb: float) -> bytes:
    data = await upload.read(int(max_mb * 1_000_000) + 1)
    if len(data) > max_mb * 1_000_000:
        raise InvalidInput(field, f"is over the limit of {max_mb:g} MB (--max-upload-mb); send a smaller file")
    return data


def install(app: FastAPI, registry: Registry, auth: tuple[str, str] | None, jobs: Jobs) -> None:
    app.include_router(router(registry, auth, jobs))
