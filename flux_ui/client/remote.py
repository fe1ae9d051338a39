"""The Python API against a running server, through its REST API (`POST /generate`) with httpx.

The REST API answers once the job is done, so there is no progress here; a client that closes the
connection (a timeout, Ctrl-C) cancels its job on the server after the current step.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable

import httpx
from PIL import Image

from flux_ui.client.result import Result
from flux_ui.core.errors import InvalidInput
from flux_ui.tasks import Request


class RemoteError(RuntimeError):
    """The server refused or failed a job for a reason other than bad input (401, 503, 500...)."""

    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(f"HTTP {status}: {message}")


def encode_image(value: object, field: str) -> str | None:
    """Base64 of an image argument: a PIL image (sent as PNG), a numpy array or encoded bytes (a path has
    been read by `FluxUI.generate`)."""
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        data = bytes(value)
    else:
        if not isinstance(value, Image.Image):
            try:
                value = Image.fromarray(value)  # type: ignore[arg-type]
            except (TypeError, ValueError, AttributeError):
                raise InvalidInput(field, f"expected an image, a path or bytes, got {type(value).__name__}") from None
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        data = buf.getvalue()
    return base64.b64encode(data).decode("ascii")


def rest_body(task: str, r: Request) -> dict:
    """The `/generate` body of `r`; fields left at None are left out (the server fills in its defaults)."""
    body = {
        "task": task,
        "prompt": r.prompt,
        "image": encode_image(r.image, "image"),
        "images": [encode_image(v, f"images[{i}]") for i, v in enumerate(r.images)],
        "strengths": list(r.strengths),
        "strength": r.strength,
        "scale": r.scale,
        "upscaler": r.upscaler,
        "tiling": r.tiling,
        "mask": encode_image(r.mask, "mask"),
        "control_image": encode_image(r.control_image, "control_image"),
        "resolution": r.resolution,
        "variant": r.variant,
        "steps": r.steps,
        "guidance": r.guidance,
        "seed": r.seed,
        "num_images": r.num_images,
        "mode": r.mode,
        "route": r.route,
        "left": r.left,
        "right": r.right,
        "top": r.top,
        "bottom": r.bottom,
        "max_new_tokens": r.max_new_tokens,
        "fast": r.fast,
    }
    return {k: v for k, v in body.items() if v is not None}


def _decode(png: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(png)))
    img.load()
    return img.convert("RGB")


class RemoteBackend:
    def __init__(self, url: str, api_key: str | None, timeout: float):
        headers = {"X-API-Key": api_key} if api_key else {}
        self.client = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def close(self) -> None:
        self.client.close()

    def call(self, task: str, request: Request, on_step: Callable | None) -> Result:
        response = self.client.post("/generate", json=rest_body(task, request))
        try:
            body = response.json()
        except ValueError:
            raise RemoteError(response.status_code, response.text[:300]) from None
        if response.status_code == 422 and isinstance(body.get("field"), str):
            field = body["field"].replace(".", "[", 1) + "]" if "." in body["field"] else body["field"]
            raise InvalidInput(field, str(body.get("error", "")).partition(": ")[2] or "is invalid")
        if response.status_code != 200:
            raise RemoteError(response.status_code, str(body.get("error") or body.get("detail") or body))
        if body.get("answer") is not None:
            return Result(task, answer=body["answer"], timings=body.get("timings", {}))
        items = body.get("images", [])
        return Result(
            task,
            images=[_decode(i["png"]) for i in items],
            seeds=[i["seed"] for i in items],
            parameters=[i["parameters"] for i in items],
            saved=[i["saved"] for i in items],
            timings=body.get("timings", {}),
            warnings=body.get("warnings", []),
            replica=body.get("replica"),
        )
