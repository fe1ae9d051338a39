"""Handing a gallery image to another tab: "image to image", "send to Kontext", "back to text to image"...

A source is any tab whose handles have a `gallery`, the `selected` state that `track_selection` keeps for
it, and an empty `send_row` under it. A target is a (tab id, attribute) entry: the attribute of that tab's
handles is either an image component, which receives the picture, or a `Receiver`, which turns the
picture's file into values for several components (text to image reads the parameters embedded in it).
`wire` runs once every tab is built: it puts one button per present target in each source's row, and
skips targets whose tab is not in this app.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from flux_ui.core.errors import InvalidInput
from flux_ui.media.uploads import checked_upload
from flux_ui.ui.progress import PREVIEW

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Receiver:
    """A target that takes the picture's file path and fills several components."""

    outputs: list[gr.components.Component]  # what `fn`'s return values go to, in order
    fn: Callable[[str], tuple]  # image file path -> one value per output; raises gr.Error on bad input


@dataclass(frozen=True)
class Target:
    """Where a gallery image can go."""

    tab_id: str  # the target tab's id: its key in ctx.tabs and the id of its gr.Tab
    label: str  # button text
    attr: str = "image"  # attribute of the tab's handles: an image component or a Receiver


TARGETS = (
    Target("t2i", "Back to text to image (its parameters)", "parameters"),
    Target("i2i", "Image to image"),
    Target("upscale", "Upscale", "receive"),
    Target("kontext", "Edit in Kontext", "receive"),
    Target("redux", "Redux variations"),
    Target("vqa", "Ask about it (VQA)"),
    Target("fill", "Inpaint / outpaint (Fill)"),
    Target("control", "Use as control source"),
    Target("flux2_edit", "Edit with FLUX.2 (first reference)"),
    Target("flux2_inpaint", "Inpaint with FLUX.2 [klein]"),
)


def track_selection(gallery: gr.Gallery) -> gr.State:
    """A per-session state holding the index of the gallery image the user clicked (0 until then)."""
    selected = gr.State(0)

    def on_select(evt: gr.SelectData) -> int:
        return evt.index if isinstance(evt.index, int) else 0

    gallery.select(on_select, None, selected, api_visibility="private")
    gallery.change(lambda: 0, None, selected, api_visibility="private")  # new images: back to the first
    return selected


def pick(items: list | None, index: int | None) -> str:
    """The file path of gallery item `index` (the first if out of range); gr.Error if the gallery is empty or
    shows a live preview (a run still going, or one whose last preview stayed)."""
    if not items:
        raise gr.Error("The gallery is empty: make an image first.", title="Nothing to send", print_exception=False)
    item = items[index if isinstance(index, int) and 0 <= index < len(items) else 0]
    if isinstance(item, dict):  # not preprocessed: {"image": FileData, "caption": ...}
        path = item.get("image", {}).get("path") if isinstance(item.get("image"), dict) else None
        caption = item.get("caption")
    else:  # preprocessed: (path, caption)
        path, caption = (
            (item[0], item[1] if len(item) > 1 else None) if isinstance(item, tuple | list) else (item, None)
        )
    if isinstance(caption, str) and caption.startswith(PREVIEW):  # a run's live preview: not an image yet
        raise gr.Error(
            "That is a preview of an unfinished run: wait for the image, then send it.",
            title="Nothing to send yet",
            print_exception=False,
        )
    try:  # Gradio checked it already; this keeps a changed Gradio from passing on any path it is given
        return str(checked_upload(path or "", "image"))
    except InvalidInput as err:
        raise gr.Error(str(err), title="Invalid input", print_exception=False) from None


def wire(ctx, tabs: gr.Tabs, targets: tuple[Target, ...] = TARGETS) -> list[str]:
    """Add the send buttons to every source tab of `ctx.tabs`; return their elem_ids (for tests and logs).

    Call inside the Blocks context, after every tab is built; `tabs` is the gr.Tabs holding them.
    """
    made = []
    for source_id, handles in ctx.tabs.items():
        gallery = getattr(handles, "gallery", None)
        selected = getattr(handles, "selected", None)
        row = getattr(handles, "send_row", None)
        if gallery is None or selected is None or row is None:
            continue
        with row:
            for target in targets:
                dest = getattr(ctx.tabs.get(target.tab_id), target.attr, None)
                if target.tab_id == source_id or dest is None:
                    continue
                elem_id = f"send-{source_id}-to-{target.tab_id}"
                button = gr.Button(target.label, size="sm", elem_id=elem_id)
                _connect(button, gallery, selected, dest, tabs, target.tab_id)
                made.append(elem_id)
    log.debug("hand-off buttons: %s", ", ".join(made) or "none")
    return made


def _connect(button: gr.Button, gallery, selected, dest, tabs: gr.Tabs, tab_id: str) -> None:
    if isinstance(dest, Receiver):

        def send(items, index):
            return (*dest.fn(pick(items, index)), gr.Tabs(selected=tab_id))

        outputs = [*dest.outputs, tabs]
    else:

        def send(items, index):
            return pick(items, index), gr.Tabs(selected=tab_id)

        outputs = [dest, tabs]
    button.click(send, [gallery, selected], outputs, api_visibility="private")
