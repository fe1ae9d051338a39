"""Captions for training images, written by the VQA model from an editable instruction.

A caption describes what varies between the images (pose, setting, light) and leaves out what the LoRA
should learn (the subject or the style, which the trigger word stands for); the default instruction asks
for that. Each image is one VQA question, in turn, with the VQA task's own checks and loading.
"""

from __future__ import annotations

from collections.abc import Callable

from flux_ui.core.errors import Cancelled, InvalidInput
from flux_ui.core.settings import Settings
from flux_ui.models.registry import Registry
from flux_ui.tasks.training import folder as server_folder
from flux_ui.tasks.training.params import MAX_IMAGES, MIN_IMAGE_SIDE
from flux_ui.tasks.vqa import VqaParams, answer_question, clean_reply, validate_vqa

CAPTION_TEMPLATE = (
    "Describe this image in one sentence of at most 40 words for training an image model: the setting, the "
    "pose or arrangement, the lighting and the colours. Do not name the main subject's identity or the "
    "artist. Reply with the sentence only."
)
CAPTION_TOKENS = 96  # 40 words with room to spare; also within CLIP's 77-token reading of most captions


def caption_images(
    registry: Registry,
    images: list[object],
    template: str,
    on_caption: Callable[[int, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[str]:
    """One caption per image (any form `load_image` reads), in order; `on_caption(index, caption)` as each
    is written; InvalidInput names `images[i]` or `template`. `should_stop` is checked between images
    (and by the VQA model between tokens)."""
    if not images:
        raise InvalidInput("images", "upload the training images first")
    jobs = []
    for i, image in enumerate(images):
        try:
            jobs.append(validate_vqa(VqaParams(image, template, (), CAPTION_TOKENS), registry.settings))
        except InvalidInput as err:
            field = f"images[{i}]" if err.field == "image" else "template"
            raise InvalidInput(field, str(err).split(": ", 1)[-1]) from None
    captions = []
    for i, job in enumerate(jobs):
        if should_stop is not None and should_stop():
            raise Cancelled()
        caption = clean_reply(answer_question(registry, job, None, should_stop).answer)
        captions.append(" ".join(caption.split()))
        if on_caption is not None:
            on_caption(i, captions[-1])
    return captions


def images_to_caption(images: list[object] | None, folder: object, settings: Settings) -> list[object]:
    """What the VQA model captions: the uploaded `images`, or the images of the server `folder` (in file-name
    order, the order its captions are typed in). A folder with caption files is trained on those, so it is
    refused here, naming the fix."""
    if not server_folder.given(folder):
        return list(images or [])
    if images:
        raise InvalidInput("folder", "give the images either as uploads or as a folder, not both; clear one")
    source = server_folder.read_folder(folder, settings, 1, MAX_IMAGES, MIN_IMAGE_SIDE)
    if source.captioned:
        raise InvalidInput(
            "folder",
            f"has caption files for {source.captioned} of its {len(source.images)} images, which training uses; "
            "remove them to write new captions",
        )
    return list(source.images)
