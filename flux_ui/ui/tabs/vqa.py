"""The VQA tab: chat about one image with a vision-language model, the answer streamed as it is written.

Quick actions turn the model's view of the image into work for other tabs: "Describe as a prompt" writes
a text-to-image prompt into the Text to image tab, "Suggest an edit" writes an editing instruction into
this tab's `suggested_edit` box (for the Kontext tab).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass

import gradio as gr

from flux_ui.core.errors import InvalidInput
from flux_ui.tasks.vqa import (
    DEFAULT_ANSWER_TOKENS,
    DESCRIBE_AS_PROMPT,
    DESCRIBE_TOKENS,
    SPEC,
    SUGGEST_EDIT,
    SUGGEST_TOKENS,
    VqaParams,
    clean_reply,
    validate_vqa,
)
from flux_ui.ui import examples
from flux_ui.ui.common import UiContext, gpu_event, invalid

NO_ANSWER = "*(The model ended its reply without any text.)*"


@dataclass
class VqaTab:
    """Components and events other tabs connect to."""

    image: gr.Image  # the image being asked about; other tabs may hand theirs over
    chat: gr.Chatbot
    question: gr.Textbox
    suggested_edit: gr.Textbox  # "Suggest an edit" streams its instruction here
    suggest_event: gr.events.Dependency  # chain `.success(...)` on it to pass the instruction on


def _message(role: str, text: str) -> dict:
    return {"role": role, "content": text}


def build(ctx: UiContext) -> VqaTab:
    settings = ctx.settings
    default_tokens = min(DEFAULT_ANSWER_TOKENS, settings.max_answer_tokens)

    def converse(
        raw: VqaParams, request: gr.Request | None, clean: Callable[[str], str] | None = None
    ) -> Generator[tuple[object, list[dict]], None, None]:
        """Validate `raw`, then stream (text so far, chat with this exchange appended) as the model writes.

        With `clean` (the quick actions), the text output is left alone until there is text, so the box it
        feeds (the text-to-image prompt) keeps its content if the model fails before writing anything.
        """
        nothing = gr.skip() if clean else ""
        try:
            params = validate_vqa(raw, settings)
        except InvalidInput as err:
            raise invalid(err) from None
        before = [*(raw.history or []), _message("user", params.question)]
        text = ""

        def show(piece: str):
            nonlocal text
            text += piece
            reply = clean(text) if clean else text.strip()
            return reply, [*before, _message("assistant", text.strip())]

        yield nothing, [*before, _message("assistant", "…")]
        try:
            result = yield from ctx.stream(
                lambda on_text, stop: SPEC.execute(ctx.registry, params, on_text, stop),
                request,
                show,
                (gr.skip(), gr.skip()),
            )
        except gr.Error:
            # Before the error shows: keep a partial answer (Cancel), or else take the question back out,
            # so the next question's history holds no unanswered turn.
            partial = text.strip()
            if partial:
                yield nothing, [*before, _message("assistant", partial)]
            else:
                yield nothing, list(raw.history or [])
            raise
        reply = clean(result.answer) if clean else result.answer
        yield reply, [*before, _message("assistant", result.answer or NO_ANSWER)]

    def vqa(
        image: dict | None,
        question: str,
        history: list | None = None,
        max_new_tokens: int = default_tokens,
        request: gr.Request = None,
    ):
        """Answer a question about an image with the vision-language model, streaming the answer.

        Args:
            image: the image to ask about (PNG, JPEG, WebP...; at least 16 px a side, at most 20 MP).
            question: what to ask, e.g. "What is the peak value in this chart?" (at most 2000 characters).
            history: the chat so far, as returned by the previous call, for follow-up questions; empty to start.
            max_new_tokens: the longest answer, in tokens.

        Returns:
            The answer, and the chat with this question and answer appended.
        """
        yield from converse(VqaParams(image, question, history, max_new_tokens), request)

    def describe_as_prompt(image: dict | None, history: list | None = None, request: gr.Request = None):
        """Describe the image as a prompt for text-to-image; it is written into the Text to image tab.

        Returns:
            The prompt, and the chat with this exchange appended.
        """
        yield from converse(VqaParams(image, DESCRIBE_AS_PROMPT, history, DESCRIBE_TOKENS), request, clean_reply)
        gr.Info("The prompt is in the Text to image tab.")

    def suggest_edit(image: dict | None, history: list | None = None, request: gr.Request = None):
        """Suggest one edit of the image, as an instruction for an image-editing model (Kontext).

        Returns:
            The instruction, and the chat with this exchange appended.
        """
        yield from converse(VqaParams(image, SUGGEST_EDIT, history, SUGGEST_TOKENS), request, clean_reply)

    with gr.Tab("Ask about an image", id="vqa"), gr.Row():
        with gr.Column(scale=1):
            image = gr.Image(
                label="Image", type="filepath", sources=["upload", "clipboard"], height=360, elem_id="vqa-image"
            )
            with gr.Row():
                describe_btn = gr.Button("Describe as a prompt", elem_id="vqa-describe")
                suggest_btn = gr.Button("Suggest an edit", elem_id="vqa-suggest")
            suggested_edit = gr.Textbox(
                label="Suggested edit (an instruction for Kontext)", lines=2, elem_id="vqa-suggested-edit"
            )
            max_tokens = gr.Slider(
                16,
                settings.max_answer_tokens,
                value=default_tokens,
                step=16,
                label="Longest answer (tokens)",
                elem_id="vqa-max-tokens",
            )
            gr.Markdown(f"Model: `{settings.vqa_model}` (`--vqa-model`). Answers appear as they are written.")
        with gr.Column(scale=1):
            chat = gr.Chatbot(
                label="Chat",
                height=420,
                elem_id="vqa-chat",
                placeholder="Upload an image, then ask about it: *What is the peak value in this chart?* "
                "*What is written on the sign?*",
            )
            question = gr.Textbox(
                label="Question", placeholder="Ask about the image…", lines=1, max_lines=6, elem_id="vqa-question"
            )
            examples.offer([image, question], examples.VQA)
            with gr.Row():
                ask_btn = gr.Button("Ask", variant="primary", elem_id="vqa-ask")
                cancel_btn = gr.Button("Cancel", variant="stop", elem_id="vqa-cancel")
                clear_btn = gr.Button("Clear chat", elem_id="vqa-clear")
            answer = gr.Textbox(visible=False, label="Answer")  # the API's plain-text answer

    gpu = {
        **gpu_event(settings),
        "show_progress": "minimal",  # a full overlay would hide the answer as it streams in
    }
    ask = gr.on(
        [ask_btn.click, question.submit],
        vqa,
        [image, question, chat, max_tokens],
        [answer, chat],
        api_name="vqa",
        **gpu,
    )
    # The box is emptied as soon as the question is sent (it shows in the chat at once): registered after
    # `ask`, which has read the question by the time this answers.
    gr.on([ask_btn.click, question.submit], lambda: "", None, question, queue=False, api_visibility="private")
    prompt_box = ctx.tabs["t2i"].prompt
    describe = describe_btn.click(
        describe_as_prompt, [image, chat], [prompt_box, chat], api_name="describe_as_prompt", **gpu
    )
    suggest = suggest_btn.click(suggest_edit, [image, chat], [suggested_edit, chat], api_name="suggest_edit", **gpu)
    cancel_btn.click(ctx.cancel, None, None, cancels=[ask, describe, suggest], queue=False, api_visibility="private")
    clear_btn.click(lambda: ([], ""), None, [chat, question], api_visibility="private")
    # A chat is about one image: a new image starts a new one.
    image.change(lambda: [], None, chat, api_visibility="private")
    return VqaTab(image=image, chat=chat, question=question, suggested_edit=suggested_edit, suggest_event=suggest)
