"""The optional safety filter (`--safety-checker`): an image classifier scores every generated image, and
those it flags are blurred before they are shown, returned or saved.

As in the FLUX authors' reference code: the classifier is Falconsai/nsfw_image_detection (a ViT,
Apache-2.0) through transformers, and an image is flagged when its "nsfw" score reaches 0.85. Their CLI
then refuses to save the image; here it is blurred instead, so the user sees that something was made and
filtered. The classifier is a registry entry like the VQA model (loaded on first use, evicted first).
"""

from __future__ import annotations

import logging

import torch
from PIL import Image, ImageFilter

from flux_ui.core.flags import DEFAULT_SAFETY_MODEL
from flux_ui.models import sources
from flux_ui.models.registry import Registry
from flux_ui.tasks import TaskResult

log = logging.getLogger(__name__)

SAFETY_MODEL = DEFAULT_SAFETY_MODEL  # the classifier of BFL's reference code
SAFETY_THRESHOLD = 0.85  # BFL's NSFW_THRESHOLD: flagged at or above this "nsfw" probability
FLAGGED_LABEL = "nsfw"
MODEL_KEY, PROCESSOR_KEY = "safety", "safety-processor"
BLUR_FRACTION = 0.04  # blur radius as a fraction of the longer side: nothing recognisable survives


def nsfw_scores(registry: Registry, images: list[Image.Image]) -> list[float]:
    """The classifier's probability of FLAGGED_LABEL for each image."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    settings = registry.settings
    src = sources.resolve_source(settings, MODEL_KEY, settings.safety_model)

    def load_model():
        return AutoModelForImageClassification.from_pretrained(src).eval().requires_grad_(False)

    with (  # the model first: its entry downloads the repo (`Registry.aux`), and the progress names it
        registry.lend_aux(MODEL_KEY, "safety classifier", src, "--safety-model", load_model) as model,
        registry.lend_aux(
            PROCESSOR_KEY, "safety processor", src, "--safety-model", lambda: AutoImageProcessor.from_pretrained(src)
        ) as processor,
    ):
        labels = {v.lower(): int(k) for k, v in model.config.id2label.items()}
        if FLAGGED_LABEL not in labels:
            raise ValueError(f"--safety-model: {src} has no {FLAGGED_LABEL!r} label (it has {sorted(labels)})")
        pixels = processor(images=images, return_tensors="pt")["pixel_values"].to(model.device, model.dtype)
        with torch.inference_mode():
            probs = model(pixel_values=pixels).logits.float().softmax(-1)
    return probs[:, labels[FLAGGED_LABEL]].tolist()


def blur(image: Image.Image) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(max(image.size) * BLUR_FRACTION))


def screen(registry: Registry, result: TaskResult) -> list[str]:
    """Blur the images of `result` that the classifier flags (in place); return a note per blurred image.
    Does nothing unless `--safety-checker` is on."""
    settings = registry.settings
    if not settings.safety_checker or not result.images:
        return []
    scores = nsfw_scores(registry, [item.image for item in result.images])
    notes = []
    for item, score in zip(result.images, scores, strict=True):
        if score >= settings.safety_threshold:
            item.image = blur(item.image)
            log.info("safety filter: image with seed %d blurred (score %.2f)", item.meta.seed, score)
            notes.append(f"⚠ The image with seed {item.meta.seed} was flagged by the safety filter and blurred.")
    return notes
