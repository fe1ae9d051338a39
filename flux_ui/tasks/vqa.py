"""Visual question answering: a vision-language model answers questions about one image, word by word.

The model is any image-text-to-text model transformers loads natively (`AutoProcessor` and
`AutoModelForImageTextToText`, never remote code), held by the registry as two auxiliary entries (the
model, and its processor) so that it is loaded once and evicted before any FLUX part.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image

from flux_ui.core.errors import Cancelled, InvalidInput
from flux_ui.core.gpu import on_gpu
from flux_ui.core.settings import Settings
from flux_ui.media.images import load_image
from flux_ui.models import sources
from flux_ui.models.registry import Registry
from flux_ui.tasks import Request, TaskSpec
from flux_ui.tasks.params import check_int, check_range, check_text

log = logging.getLogger(__name__)

MODEL_KEY = "vqa"  # registry key of the model (the name `--model vqa=SOURCE` also uses)
PROCESSOR_KEY = "vqa:processor"  # registry key of its processor: tokenizer, image processor, chat template
MIN_SIDE = 16  # pixels: VLM processors upscale small images, so icons and cropped labels can be asked about
MAX_QUESTION_CHARS = 2000  # a question, not a document: long text belongs in the image
MAX_HISTORY_TURNS = 20  # earlier question/answer pairs sent with a question; then the chat must be cleared
DEFAULT_ANSWER_TOKENS = 512

# Quick actions: fixed instructions whose answers feed other tabs.
DESCRIBE_AS_PROMPT = (
    "Describe this image as a prompt for a text-to-image model: one paragraph of at most 60 words naming "
    "the subject, the setting, the style or medium, the lighting, the colours and the composition. "
    "Reply with the prompt only."
)
DESCRIBE_TOKENS = 160  # about 60 words, with room to spare
SUGGEST_EDIT = (
    "Suggest one edit that would make this image more striking, written as a short instruction for an "
    "image-editing model, such as 'Make the sky stormy' or 'Turn the car red'. Reply with the instruction only."
)
SUGGEST_TOKENS = 64


@dataclass(frozen=True)
class Turn:
    """One earlier exchange of the conversation about the image."""

    question: str
    answer: str


@dataclass(frozen=True)
class VqaParams:
    """One question about one image, as sent: `image` anything `load_image` reads, `history` a Gradio chat
    (a list of {"role", "content"} messages)."""

    image: object
    question: object
    history: object = ()  # earlier turns about the same image, oldest first
    max_new_tokens: object | None = None  # longest answer, in tokens; None: 512, within --max-answer-tokens


@dataclass(frozen=True)
class VqaJob:
    """A validated question (see VqaParams)."""

    image: Image.Image  # RGB
    question: str
    history: tuple[Turn, ...]
    max_new_tokens: int


@dataclass
class VqaResult:
    answer: str
    tokens: int  # tokens generated
    timings: dict[str, float]  # seconds: load, generate, total


def check_question(question: object, field: str = "question") -> str:
    if not isinstance(question, str):
        raise InvalidInput(field, f"expected text, got {type(question).__name__}")
    text = question.strip()
    if not text:
        raise InvalidInput(field, "is empty; ask something about the image")
    if len(text) > MAX_QUESTION_CHARS:
        raise InvalidInput(field, f"is {len(text)} characters long; shorten it to at most {MAX_QUESTION_CHARS}")
    return check_text(field, text)


def _message_text(content: object) -> str:
    """The text of a chat message's content: a string, or a list of parts of which the text ones count."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        content = [content]
    if isinstance(content, list | tuple):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def parse_history(history: object, max_chars: int | None = None) -> tuple[Turn, ...]:
    """Turns from a chat (a list of {"role", "content"} messages, as Gradio's Chatbot sends) or from Turns.

    A question with no answer after it (a turn that was cancelled or failed) is left out: the model would
    otherwise see a question it never answered. `max_chars` bounds the text of all turns together (the
    model reads all of it with every question).
    """
    if history is None:
        return ()
    if not isinstance(history, list | tuple):
        raise InvalidInput("history", f"expected a list of chat messages, got {type(history).__name__}")
    turns: list[Turn] = []
    pending: str | None = None
    for message in history:
        if isinstance(message, Turn):
            turns.append(message)
            continue
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise InvalidInput("history", f"expected messages with a role of user or assistant, got {message!r:.80}")
        text = _message_text(message.get("content")).strip()
        if message["role"] == "user":
            pending = text or None
        elif pending is not None:
            turns.append(Turn(pending, text))
            pending = None
    if len(turns) > MAX_HISTORY_TURNS:
        raise InvalidInput("history", f"has {len(turns)} turns; clear the chat (at most {MAX_HISTORY_TURNS})")
    for turn in turns:
        if len(turn.question) > MAX_QUESTION_CHARS:
            raise InvalidInput("history", f"holds a question over {MAX_QUESTION_CHARS} characters; clear the chat")
        check_text("history", turn.question + turn.answer)
    size = sum(len(t.question) + len(t.answer) for t in turns)
    if max_chars is not None and size > max_chars:
        raise InvalidInput(
            "history",
            f"is {size} characters long, over the limit of {max_chars}; clear the chat (or raise --max-history-chars)",
        )
    return tuple(turns)


def validate_vqa(p: VqaParams, settings: Settings) -> VqaJob:
    """Return `p` with the image read and checked, the question trimmed and the history parsed; raise
    InvalidInput on the first bad field."""
    image = load_image(p.image, "image", min_side=MIN_SIDE)
    question = check_question(p.question)
    history = parse_history(p.history, settings.max_history_chars)
    default = min(DEFAULT_ANSWER_TOKENS, settings.max_answer_tokens)
    max_new_tokens = default if p.max_new_tokens is None else check_int("max_new_tokens", p.max_new_tokens)
    check_range("max_new_tokens", max_new_tokens, 1, settings.max_answer_tokens)
    return VqaJob(image=image, question=question, history=history, max_new_tokens=max_new_tokens)


def chat_messages(image: Image.Image, question: str, history: tuple[Turn, ...]) -> list[dict]:
    """The conversation in transformers' chat format, the image attached to the first question."""
    asked = [*[(t.question, t.answer) for t in history], (question, None)]
    messages: list[dict] = []
    for i, (q, a) in enumerate(asked):
        parts = [{"type": "image", "image": image}] if i == 0 else []
        messages.append({"role": "user", "content": [*parts, {"type": "text", "text": q}]})
        if a is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": a}]})
    return messages


def _load_parts(registry: Registry):
    """(processor, model) loaders and their error-message context, from `--vqa-model` (or `--model vqa=`)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    settings = registry.settings
    src = sources.resolve_source(settings, MODEL_KEY, settings.vqa_model)
    setting = "--vqa-model"

    def model():
        m = AutoModelForImageTextToText.from_pretrained(src, dtype=settings.dtype)
        return m.eval().requires_grad_(False)

    return src, setting, (lambda: AutoProcessor.from_pretrained(src)), model


def _streamer(tokenizer, on_text: Callable[[str], None]):
    """A transformers TextStreamer that hands each finished piece of text to `on_text` (its documented
    extension point) instead of printing it; it runs on the job's thread, so no second thread is needed."""
    from transformers import TextStreamer

    class CallbackStreamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                on_text(text)

    return CallbackStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def _stop_when(should_stop: Callable[[], bool]):
    """Stopping criteria that end generation after the current token once `should_stop()` is true."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopWhen(StoppingCriteria):
        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
            return torch.full((input_ids.shape[0],), should_stop(), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopWhen()])


@on_gpu
def answer_question(
    registry: Registry,
    params: VqaJob,
    on_text: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> VqaResult:
    """Answer `params.question` about `params.image`.

    `on_text` receives the answer piece by piece as it is generated (whole words where the tokenizer
    allows); `should_stop` is checked after every token, and a stop raises Cancelled. Decoding is greedy,
    so the same question about the same image gets the same answer.
    """
    start = time.perf_counter()
    src, setting, load_processor, load_model = _load_parts(registry)
    name = registry.settings.vqa_model
    with (  # the model first: its entry downloads the repo (`Registry.aux`), and the progress names it
        registry.lend_aux(MODEL_KEY, f"VQA model ({name})", src, setting, load_model) as model,
        registry.lend_aux(PROCESSOR_KEY, f"VQA processor ({name})", src, setting, load_processor) as processor,
    ):
        loaded = time.perf_counter()
        inputs = processor.apply_chat_template(
            chat_messages(params.image, params.question, params.history),
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        ).to(model.device, dtype=model.dtype)  # the dtype applies to floating-point inputs (pixels) only
        kwargs = {}
        if on_text is not None:
            kwargs["streamer"] = _streamer(processor.tokenizer, on_text)
        if should_stop is not None:
            kwargs["stopping_criteria"] = _stop_when(should_stop)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=params.max_new_tokens, do_sample=False, **kwargs)
        new = out[0, inputs["input_ids"].shape[1] :]
        answer = processor.decode(new, skip_special_tokens=True).strip()
    if should_stop is not None and should_stop():
        raise Cancelled()
    end = time.perf_counter()
    timings = {"load": loaded - start, "generate": end - loaded, "total": end - start}
    log.info("vqa: %d tokens in %.2f s (model ready in %.2f s)", len(new), timings["generate"], timings["load"])
    return VqaResult(answer=answer, tokens=len(new), timings=timings)


def clean_reply(text: str) -> str:
    """A quick action's reply without the quotes or label small models like to wrap it in."""
    text = text.strip()
    for label in ("Prompt:", "Instruction:", "Edit:"):
        if text.lower().startswith(label.lower()):
            text = text[len(label) :].strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def from_request(r: Request) -> VqaParams:
    return VqaParams(r.image, r.prompt, (), r.max_new_tokens)


SPEC = TaskSpec(
    name="vqa",
    label="Ask about an image",
    params=VqaParams,
    validate=lambda p, settings, library: validate_vqa(p, settings),
    run=answer_question,
    from_request=from_request,
    images=False,
)
