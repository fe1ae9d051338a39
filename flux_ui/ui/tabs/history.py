"""The History tab: every image this server saved (output/history.py), newest first, searchable by prompt,
filtered by task, model, LoRA and date; the selected image's parameters, its download, the hand-off buttons
(text to image takes its parameters) and delete with a confirmation.

Images are shown through `publish` links, as every gallery is: the outputs folder is never served, so a
browser can fetch only the images this tab handed it. With a login each user sees only their own images,
unless --history-shared; without one (local use) everyone sees everything.
"""

from __future__ import annotations

import logging
import shutil
import threading
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import gradio as gr

from flux_ui.core.errors import InvalidInput
from flux_ui.output.history import PAGE_SIZE, History, Query, Record
from flux_ui.ui.common import UiContext, invalid, publish
from flux_ui.ui.handoff import track_selection

log = logging.getLogger(__name__)
ANY = ("Any", "")  # the filter menus' "no filter" choice
_CAPTION_CHARS = 60


@dataclass
class HistoryTab:
    """The handles hand-off needs (`gallery`, `selected`, `send_row`), and the refresh of the list."""

    gallery: gr.Gallery
    selected: gr.State  # index of the gallery image the user clicked
    send_row: gr.Row  # where the hand-off buttons go


def parse_date(field: str, text: str) -> date | None:
    """'' -> None; 'YYYY-MM-DD' -> that date; anything else: InvalidInput naming the field and the form."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidInput(field, f"{text[:40]!r} is not a date; write it as YYYY-MM-DD, e.g. 2026-12-01") from None


def parse_page(field: str, value: object, high: int = 1_000_000) -> int:
    try:
        number = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidInput(field, f"{value!r} is not a whole number; use 1 or more") from None
    if not 1 <= number <= high:
        raise InvalidInput(field, f"{number} is out of range; use 1 to {high}")
    return number


def caption(record: Record) -> str:
    prompt = record.prompt if len(record.prompt) <= _CAPTION_CHARS else record.prompt[: _CAPTION_CHARS - 1] + "…"
    return f"{prompt} · seed {record.seed}" if record.seed is not None else prompt or Path(record.path).name


def details(record: Record) -> str:
    when = datetime.fromtimestamp(record.created).isoformat(sep=" ", timespec="seconds")
    loras = ", ".join(f"{n} {w:g}" if isinstance(w, int | float) else n for n, w in record.loras) or "none"
    lines = [
        f"**{Path(record.path).name}** · `{record.path}`",
        f"{when} · task {record.task} · model {record.model or 'unknown'} · LoRAs {loras}",
    ]
    if record.user:
        lines.append(f"made by {record.user}")
    return "\n\n".join(lines)


def build(ctx: UiContext) -> HistoryTab:
    store = History(ctx.settings.outputs_dir)
    try:
        store.rebuild()  # images saved by an older version, or while the database was lost
    except (OSError, ValueError) as err:
        log.warning("history: could not index the outputs folder (%s); the History tab lists what it has", err)
    shared = ctx.settings.history_shared
    links: dict[str, str] = {}  # record path -> its published link, so paging does not link again
    links_lock = threading.Lock()

    def owner(request: gr.Request | None) -> str | None:
        """Whose images the caller sees: their login's, or everyone's (no login, or --history-shared)."""
        user = getattr(request, "username", None)
        return None if shared or not user else user

    def link(record: Record) -> str | None:
        with links_lock:
            known = links.get(record.path)
            if known and Path(known).exists():
                return known
        try:
            made = publish(store.path_of(record))
        except (OSError, ValueError) as err:
            log.warning("history: cannot show %s (%s)", record.path, err)
            return None
        with links_lock:
            links[record.path] = made
        return made

    def unlink(record: Record) -> None:
        with links_lock:
            made = links.pop(record.path, None)
        if made:
            shutil.rmtree(Path(made).parent, ignore_errors=True)

    def find(text, task, model, lora, since, until, page, request) -> tuple[list[Record], int, int]:
        try:
            q = Query(
                text=str(text or "")[:500],
                task=str(task or ""),
                model=str(model or ""),
                lora=str(lora or ""),
                since=parse_date("since", since),
                until=parse_date("until", until),
                user=owner(request),
                page=parse_page("page", page if page not in (None, "") else 1),
                page_size=PAGE_SIZE,
            )
        except InvalidInput as err:
            raise invalid(err) from None
        records, total = store.query(q)
        return records, total, q.page

    def history(
        query: str = "",
        task: str = "",
        model: str = "",
        lora: str = "",
        since: str = "",
        until: str = "",
        page: int = 1,
        request: gr.Request = None,
    ) -> list[dict]:
        """The saved images you may see, newest first, PAGE_SIZE (48) a page, as records: id, file (its path in
        the outputs folder), created (epoch seconds) and created_iso, task, model, prompt, seed, width, height,
        steps, guidance, loras ([name, weight]), parameters (the text embedded in the PNG), user.

        Args:
            query: words the prompt must contain (case-insensitive); empty: every image.
            task: text_to_image, image_to_image, kontext, redux, fill, control, flux2_edit or flux2_inpaint;
                empty: any.
            model: a variant name such as dev or schnell; empty: any.
            lora: a LoRA name; empty: any.
            since: YYYY-MM-DD, first day included; empty: no limit.
            until: YYYY-MM-DD, last day included; empty: no limit.
            page: 1 for the newest.
        """
        records, _, _ = find(query, task, model, lora, since, until, page, request)
        return [r.as_dict() for r in records]

    def history_delete(record_id: int, request: gr.Request = None) -> dict:
        """Delete one saved image (its PNG and its record) by the `id` that /history gives. Returns the
        deleted record. With a login, only your own images (all, with --history-shared)."""
        try:
            number = parse_page("record_id", record_id, high=2**62)
        except InvalidInput as err:
            raise invalid(err) from None
        record = store.get(number)
        who = owner(request)
        if record is None or (who is not None and record.user != who):
            raise invalid(InvalidInput("record_id", f"no image {number} in your history; list them with /history"))
        try:
            store.delete(number)
        except ValueError as err:  # a record pointing outside the outputs folder: refused, nothing deleted
            raise invalid(err) from None
        unlink(record)
        return record.as_dict()

    def show(text, task, model, lora, since, until, page, request: gr.Request):
        records, total, page = find(text, task, model, lora, since, until, page, request)
        items, ids = [], []
        for record in records:
            if (made := link(record)) is not None:
                items.append((made, caption(record)))
                ids.append(record.id)
        pages = max(1, -(-total // PAGE_SIZE))
        count = f"{total} image{'s' if total != 1 else ''} · page {page} of {pages}"
        return items, ids, count, None, "", "", gr.update(value=None, interactive=False), gr.update(visible=False)

    def on_select(ids: list[int], evt: gr.SelectData, request: gr.Request):
        index = evt.index if isinstance(evt.index, int) else 0
        record = store.get(ids[index]) if 0 <= index < len(ids) else None
        if record is None or (owner(request) is not None and record.user != owner(request)):
            return None, "", "", gr.update(value=None, interactive=False)
        return record.id, details(record), record.parameters, gr.update(value=link(record), interactive=True)

    def menus(request: gr.Request):
        found = store.choices(owner(request))
        return tuple(gr.update(choices=[ANY, *found[key]]) for key in ("task", "model", "lora"))

    def delete_selected(record_id: int | None, request: gr.Request):
        if record_id is None:
            raise gr.Error("Select an image first.", title="Nothing to delete", print_exception=False)
        history_delete(record_id, request)
        return gr.update(visible=False)

    with gr.Tab("History", id="history") as tab:
        with gr.Row():
            search = gr.Textbox(label="Search prompts", placeholder="fox snow", elem_id="history-search", scale=3)
            task = gr.Dropdown([ANY], value="", label="Task", elem_id="history-task", scale=1)
            model = gr.Dropdown([ANY], value="", label="Model", elem_id="history-model", scale=1)
            lora = gr.Dropdown([ANY], value="", label="LoRA", elem_id="history-lora", scale=1)
        with gr.Row():
            since = gr.Textbox(label="From (YYYY-MM-DD)", elem_id="history-since", scale=1)
            until = gr.Textbox(label="To (YYYY-MM-DD)", elem_id="history-until", scale=1)
            page = gr.Number(1, label="Page", precision=0, minimum=1, elem_id="history-page", scale=1)
            prev_btn = gr.Button("Newer", scale=0, min_width=80)
            next_btn = gr.Button("Older", scale=0, min_width=80)
            refresh_btn = gr.Button("Refresh", variant="primary", scale=0, min_width=90, elem_id="history-refresh")
        count = gr.Markdown(elem_id="history-count")
        with gr.Row():
            with gr.Column(scale=3):
                gallery = gr.Gallery(
                    label="Saved images",
                    columns=6,
                    height=640,
                    format="png",
                    elem_id="history-gallery",
                    interactive=False,
                )
                send_row = gr.Row()  # hand-off buttons, added once every tab exists
            with gr.Column(scale=2):
                info = gr.Markdown(elem_id="history-details")
                parameters = gr.Textbox(label="Parameters", lines=6, interactive=False, elem_id="history-parameters")
                with gr.Row():
                    download = gr.DownloadButton("Download", interactive=False, elem_id="history-download")
                    delete_btn = gr.Button("Delete", variant="stop", elem_id="history-delete")
                with gr.Row(visible=False) as confirm_row:
                    gr.Markdown("Delete this image and its file for good?")
                    confirm_btn = gr.Button("Yes, delete", variant="stop", size="sm", elem_id="history-confirm")
                    keep_btn = gr.Button("Keep it", size="sm")
        ids = gr.State([])  # record ids of the gallery's items, in order
        chosen = gr.State(None)  # record id of the selected image
        selected = track_selection(gallery)  # inside the tab: a component between tabs confuses the tab bar
        gr.api(history, api_name="history")
        gr.api(history_delete, api_name="history_delete")

    filters = [search, task, model, lora, since, until, page]
    listed = [gallery, ids, count, chosen, info, parameters, download, confirm_row]
    listing = {"fn": show, "inputs": filters, "outputs": listed, "api_visibility": "private"}
    gr.on(
        [refresh_btn.click, search.submit, task.input, model.input, lora.input, since.submit, until.submit], **listing
    )
    page.submit(**listing)
    prev_btn.click(lambda p: max(1, int(p or 1) - 1), page, page, api_visibility="private").then(**listing)
    next_btn.click(lambda p: int(p or 1) + 1, page, page, api_visibility="private").then(**listing)
    tab.select(menus, None, [task, model, lora], api_visibility="private").then(**listing)
    gallery.select(on_select, ids, [chosen, info, parameters, download], api_visibility="private")
    delete_btn.click(lambda c: gr.update(visible=c is not None), chosen, confirm_row, api_visibility="private")
    keep_btn.click(lambda: gr.update(visible=False), None, confirm_row, api_visibility="private")
    confirm_btn.click(delete_selected, [chosen], confirm_row, api_visibility="private").success(**listing)
    return HistoryTab(gallery=gallery, selected=selected, send_row=send_row)
