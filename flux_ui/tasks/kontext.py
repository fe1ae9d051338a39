"""Kontext edit: an input image and an instruction in, the edited image out, with FLUX.1 Kontext [dev].

As in the model authors' reference code, the input is resized to the Kontext training resolution whose
aspect ratio is nearest its own (diffusers' FluxKontextPipeline does that resize); the output is that same
resolution unless the request names another size.

Several references (2-4 images: a person and a garment, a product and a scene) are stitched side by side
into one picture (four, or three wide ones, in rows of two), which is then the one input, as ComfyUI users
do with its Image Stitch node. diffusers 0.42 has no other way: FluxKontextPipeline takes one image (a
list is a batch of separate edits, not references to combine) and gives its latent tokens one fixed
position offset, and its modular Kontext blocks do the same. The other ComfyUI recipe, each reference
encoded on its own and chained as extra tokens at shifted positions (ReferenceLatent), would mean our own
denoising loop around the transformer. The cost of stitching: the stitched picture is resized to one
Kontext resolution of about 1 MP, so each reference gets its share of that (two side by side about 0.5 MP
each, four about 0.25 MP each), and the instruction should say which is where ("the jacket on the right").
With several references, the output size "auto" is Kontext's resolution for the first image's aspect ratio.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from flux_ui.core.errors import InvalidInput
from flux_ui.core.gpu import on_gpu
from flux_ui.core.seeds import resolve_seed
from flux_ui.core.settings import Settings
from flux_ui.core.variants import get_variant, nearest_resolution
from flux_ui.media.images import image_hash, load_image, stitch
from flux_ui.models.registry import Registry
from flux_ui.tasks import Request, StepCallback, TaskResult, TaskSpec
from flux_ui.tasks.batch import Batch, generate_batch
from flux_ui.tasks.params import (
    check_guidance,
    check_num_images,
    check_prompt,
    check_seed,
    check_size,
    check_steps,
)

log = logging.getLogger(__name__)

VARIANT = "kontext-dev"
MAX_REFERENCES = 4  # input images per edit: the first, and up to three more stitched beside it
AUTO = "auto"  # output size: Kontext's preferred resolution for the input's aspect ratio
_SIZE = re.compile(r"^\s*(\d+)\s*[x×X]\s*(\d+)\s*$")


@dataclass(frozen=True)
class KontextParams:
    """One Kontext edit as sent. Defaults of None take Kontext [dev]'s published defaults (28 steps,
    guidance 2.5)."""

    image: object  # the input: anything images.load_image reads
    instruction: object  # what to change, e.g. "make the car red"
    size: object = AUTO  # "auto" or "WIDTHxHEIGHT" (multiples of 16) for the output
    steps: object | None = None  # denoising steps
    guidance: object | None = None  # distilled guidance
    seed: object = -1  # -1 picks a random seed; image i uses seed + i
    num_images: object = 1  # edits made one after another, from the same input
    images: tuple[object | None, ...] = ()  # up to 3 more references, stitched beside `image`; None: empty slot


@dataclass(frozen=True)
class KontextJob:
    """A validated Kontext edit (see KontextParams)."""

    image: Image.Image  # RGB
    instruction: str
    width: int  # output size, from `size`
    height: int
    steps: int
    guidance: float
    seed: int
    num_images: int
    references: tuple[Image.Image, ...] = ()  # the more references, RGB (empty slots dropped)

    @property
    def context(self) -> Image.Image:
        """The one picture the pipeline gets: the image, or the image and the references stitched."""
        return stitch([self.image, *self.references]) if self.references else self.image


def context_size(image: Image.Image) -> tuple[int, int]:
    """The (width, height) the input is resized to: the preferred resolution nearest its aspect ratio."""
    return nearest_resolution(image.width, image.height, get_variant(VARIANT).resolutions)


def output_size(size: object, image: Image.Image, settings: Settings) -> tuple[int, int]:
    """Parse the `size` field: "auto" (the context size) or "WIDTHxHEIGHT"."""
    if not isinstance(size, str):
        raise InvalidInput("size", f"expected 'auto' or WIDTHxHEIGHT, got {size!r}")
    if size.strip().lower() == AUTO:
        return context_size(image)
    m = _SIZE.match(size)
    if not m:
        raise InvalidInput("size", f"expected 'auto' or WIDTHxHEIGHT such as 1024x1024, got {size!r}")
    try:
        return check_size(int(m.group(1)), int(m.group(2)), settings)
    except InvalidInput as err:  # report it under this field, which is the one the caller sent
        raise InvalidInput("size", str(err)) from None


def validate_kontext(p: KontextParams, settings: Settings) -> KontextJob:
    """`p` checked, the image decoded, defaults and the output size filled in; raise InvalidInput on the
    first bad field."""
    variant = get_variant(VARIANT)
    image = load_image(p.image, "image")
    if not isinstance(p.images, tuple | list) or len(p.images) > MAX_REFERENCES - 1:
        raise InvalidInput("image_2", f"at most {MAX_REFERENCES - 1} more reference images; send fewer")
    # Slots 2-4 in the UI and the API's images[0..2]: errors name image_<n>, which the APIs translate.
    slots = [(n, v) for n, v in enumerate(p.images, 2) if v is not None and not (isinstance(v, str) and not v)]
    references = tuple(load_image(v, f"image_{n}") for n, v in slots)
    instruction = check_prompt(p.instruction, settings, "instruction", "say what to change in the image")
    width, height = output_size(p.size, image, settings)
    return KontextJob(
        image=image,
        instruction=instruction,
        width=width,
        height=height,
        steps=check_steps(p.steps, variant.default_steps, settings),
        guidance=check_guidance(p.guidance, variant.default_guidance),
        seed=check_seed(p.seed),
        num_images=check_num_images(p.num_images, settings),
        references=references,
    )


@on_gpu
def kontext_edit(
    registry: Registry,
    params: KontextJob,
    on_step: StepCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TaskResult:
    """Edit `params.image` as `params.instruction` says.

    The instruction is encoded once; edit i starts from the noise of seed + i (drawn on the CPU).
    """
    variant = get_variant(VARIANT)
    seed = resolve_seed(params.seed)
    size = (params.width, params.height)
    context = params.context
    ctx_w, ctx_h = context_size(context)
    extra = {
        "Source hash": image_hash(params.image),
        "Source size": f"{params.image.width}x{params.image.height}",
        "Context size": f"{ctx_w}x{ctx_h}",
    }
    if params.references:
        extra["References"] = f"{1 + len(params.references)} stitched ({context.width}x{context.height})"
        extra["Reference hashes"] = " ".join(image_hash(im) for im in params.references)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    batch = Batch(
        prompt=params.instruction,
        variant=variant,
        seed=seed,
        steps=params.steps,
        guidance=params.guidance,
        num_images=params.num_images,
        size=size,
        extra=extra,
    )
    with registry.pipeline(variant.name) as pipe:
        timings["load"] = time.perf_counter() - start
        images, phases = generate_batch(
            registry,
            pipe,
            batch,
            on_step,
            should_stop,
            image=context,  # resized by the pipeline to the context size
            # The pipeline rescales width x height to max_area; this keeps the size asked for.
            max_area=params.width * params.height,
        )
        timings |= phases
    timings["total"] = time.perf_counter() - start
    log.info(
        "kontext_edit %dx%d -> %dx%d x%d, %d steps: %.2f s",
        params.image.width,
        params.image.height,
        params.width,
        params.height,
        params.num_images,
        params.steps,
        timings["total"],
    )
    return TaskResult(images=images, seed=seed, timings=timings)


def from_request(r: Request) -> KontextParams:
    return KontextParams(
        r.image, r.prompt, r.resolution or AUTO, r.steps, r.guidance, r.seed, r.num_images, tuple(r.images)
    )


def describe(result: TaskResult) -> str:
    meta = result.images[0].meta
    refs = f" · {meta.extra['References']}" if "References" in meta.extra else ""
    return f"Output {meta.width}×{meta.height} · context {meta.extra['Context size']}{refs}"


SPEC = TaskSpec(
    name="kontext_edit",
    label="Kontext edit",
    params=KontextParams,
    validate=lambda p, settings, library: validate_kontext(p, settings),
    run=kontext_edit,
    from_request=from_request,
    describe=describe,
)
