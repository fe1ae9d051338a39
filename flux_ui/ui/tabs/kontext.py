"""The Kontext edit tab: an image and an instruction, the edit chain with "Edit again" and "Undo"."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from flux_ui.core.errors import InvalidInput
from flux_ui.core.variants import get_variant
from flux_ui.media.images import load_image
from flux_ui.tasks.kontext import AUTO, MAX_REFERENCES, SPEC, KontextParams, context_size, output_size
from flux_ui.ui import examples, fast_mode, forms
from flux_ui.ui.common import UiContext, image_event
from flux_ui.ui.handoff import Receiver, pick, track_selection

VARIANT = get_variant("kontext-dev")
SIZES = [AUTO, *(f"{w}x{h}" for w, h in VARIANT.resolutions)]
REFERENCES_NOTE = (
    f"**Up to {MAX_REFERENCES} images.** Kontext [dev] takes one picture, so more references are stitched side "
    "by side into one (four, or three wide ones, in rows of two), as ComfyUI users do. That picture is "
    "resized to one Kontext resolution of about 1 megapixel, so each reference gets its share: two about "
    "0.5 MP each, four about 0.25 MP each. Say which is where: *the woman on the left wears the jacket on "
    "the right*. The output size `auto` follows the first image."
)


@dataclass
class KontextTab:
    """Components other tabs hand images to."""

    image: gr.Image  # the input image
    instruction: gr.Textbox  # what to change; the VQA tab's "Suggest an edit" fills it
    receive: Receiver  # a hand-off: sets the input and starts a new edit chain
    gallery: gr.Gallery  # results
    selected: gr.State  # index of the result the user clicked
    send_row: gr.Row  # where the hand-off buttons go


def _path(value: object) -> str | None:
    """The server-side file of an image component's raw value (FileData dict or path)."""
    if isinstance(value, dict):
        return value.get("path")
    return value if isinstance(value, str) and value else None


def _instruction_of(path: str) -> str:
    """The instruction an edit was made with, read back from its PNG (empty if it carries none)."""
    return forms.embedded_fields(path).get("Prompt", "")


def size_note(image: object, size: object, settings) -> str:
    """The output size a request would get, said in the UI before anything runs."""
    if not _path(image):
        return "Output size: Kontext's preferred resolution for the input's aspect ratio (upload an image)."
    try:
        picture = load_image(image, "image")
        width, height = output_size(size, picture, settings)
    except InvalidInput as err:
        return f"⚠️ {err}"
    cw, ch = context_size(picture)
    how = "Kontext's preferred resolution for this aspect ratio" if str(size).strip().lower() == AUTO else "as chosen"
    return (
        f"Output **{width}×{height}** ({how}). The {picture.width}×{picture.height} input is resized to "
        f"{cw}×{ch}, the nearest resolution Kontext was trained on."
    )


def build(ctx: UiContext) -> KontextTab:
    settings = ctx.settings

    def edit(
        image: dict | str | None,
        instruction: str,
        size: str = AUTO,
        steps: int = VARIANT.default_steps,
        guidance: float = VARIANT.default_guidance,
        seed: int = -1,
        num_images: int = 1,
        image_2: dict | str | None = None,
        image_3: dict | str | None = None,
        image_4: dict | str | None = None,
        fast: bool = False,
        request: gr.Request = None,
        progress: gr.Progress = gr.Progress(),
    ):
        """Edit an image as an instruction says, with FLUX.1 Kontext [dev].

        Args:
            image: the image to edit (PNG, JPEG or WebP; 64 px to 20 megapixels).
            instruction: what to change, e.g. "make the car red".
            size: "auto" (Kontext's preferred resolution for the input's aspect ratio) or WIDTHxHEIGHT.
            steps: denoising steps (28 by default).
            guidance: distilled guidance (2.5 by default).
            seed: -1 for a random seed; edit i uses seed + i.
            num_images: how many edits to make.
            image_2: optional second reference, stitched beside the image (so are image_3 and image_4).
            image_3: optional third reference.
            image_4: optional fourth reference.
            fast: fast mode: about half the steps computed in full (cache-dit's step cache), softer detail.
        """
        raw = KontextParams(
            image, instruction, size, steps, guidance, seed, num_images, (image_2, image_3, image_4), fast=fast
        )
        yield from forms.gallery_seed_info(ctx, SPEC, raw, request, progress, noun="edit")

    def new_chain(image):
        path = _path(image)
        history = [(path, "original")] if path else []
        return history, history

    def edit_again(image, items, index, history):
        path = pick(items, index)
        if not history and _path(image):  # an input that arrived without an upload event (a paste, say)
            history = [(_path(image), "original")]
        caption = f"{len(history)}. {_instruction_of(path) or 'edit'}"
        history = [*history, (path, caption)]
        return path, history, history

    def undo(history):
        if len(history) <= 1:
            gr.Info("Nothing to undo: this is the first image of the chain.")
            return gr.skip(), history, gr.skip()
        history = history[:-1]
        return history[-1][0], history, history

    def receive(path: str):
        history = [(path, "sent here")]
        return path, history, history

    with gr.Tab("Kontext edit", id="kontext"), gr.Row():
        with gr.Column(scale=1):
            image = gr.Image(
                label="Input image", type="filepath", sources=["upload", "clipboard"], elem_id="kontext-image"
            )
            instruction = gr.Textbox(
                label="Instruction", lines=2, placeholder="Make the sky stormy…", elem_id="instruction"
            )
            examples.offer([image, instruction], examples.KONTEXT)
            size = gr.Dropdown(SIZES, value=AUTO, label="Output size", allow_custom_value=True, elem_id="kontext-size")
            note = gr.Markdown(size_note(None, AUTO, settings), elem_id="kontext-size-note")
            steps, guidance = forms.steps_and_guidance(
                settings, VARIANT.default_steps, VARIANT.default_guidance, "kontext-steps", guidance_max=10.0
            )
            seed, num_images = forms.seed_and_count(settings, "kontext-seed", "Edits")
            fast = fast_mode.checkbox(settings, "kontext-fast")
            edit_btn, cancel_btn = forms.run_and_cancel("Edit", "kontext-edit", "kontext-cancel")
            more_label = f"+ more references (up to {MAX_REFERENCES - 1})"
            with gr.Accordion(more_label, open=False, elem_id="kontext-more"), gr.Row():
                more = [
                    gr.Image(
                        label=f"Reference {n}",
                        type="filepath",
                        sources=["upload", "clipboard"],
                        elem_id=f"kontext-image-{n}",
                    )
                    for n in range(2, MAX_REFERENCES + 1)
                ]
            gr.Markdown(REFERENCES_NOTE, elem_id="kontext-references-note")
        with gr.Column(scale=1):
            gallery = forms.result_gallery("Result", "kontext-gallery")
            with gr.Row():
                again_btn = gr.Button("↪ Edit again (result becomes the input)", elem_id="kontext-again")
                undo_btn = gr.Button("↶ Undo", elem_id="kontext-undo")
            send_row, last_seed, info = forms.result_footer("kontext-seed-used", "kontext-info")
            history_gallery = gr.Gallery(
                label="Edit chain (oldest first)",
                columns=6,
                height=180,
                object_fit="contain",
                allow_preview=False,
                interactive=False,
                elem_id="kontext-history",
            )
        # States live inside the tab: a component between two tabs would confuse the tab bar.
        history = gr.State([])
        selected = track_selection(gallery)

    run = gr.on(
        [edit_btn.click, instruction.submit],
        edit,
        [image, instruction, size, steps, guidance, seed, num_images, *more, fast],
        [gallery, last_seed, info],
        api_name="kontext_edit",
        # The image is decoded by the validator (images.load_image): Gradio's own decoding knows nothing
        # of our limits and names no field.
        **image_event(settings),
    )
    forms.finish_run(ctx, run, last_seed, cancel_btn)
    forms.note_follows(note, lambda img, sz: size_note(img, sz, settings), [image, size])
    image.upload(new_chain, image, [history, history_gallery], preprocess=False, api_visibility="private")
    image.clear(lambda: ([], []), None, [history, history_gallery], api_visibility="private")
    chain = [image, history, history_gallery]
    again_btn.click(edit_again, [image, gallery, selected, history], chain, preprocess=False, api_visibility="private")
    undo_btn.click(undo, history, chain, api_visibility="private")
    return KontextTab(
        image=image,
        instruction=instruction,
        receive=Receiver(chain, receive),
        gallery=gallery,
        selected=selected,
        send_row=send_row,
    )
