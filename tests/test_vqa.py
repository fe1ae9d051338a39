"""Visual question answering on the tiny random-weight VLM: loading, streaming, chat history, cancel,
validation, and its place in the registry's eviction order."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from PIL import Image

from flux_ui.core.errors import Cancelled, InvalidInput, ModelUnavailableError
from flux_ui.core.flags import DEFAULT_VQA_MODEL
from flux_ui.models.registry import Registry
from flux_ui.tasks.jobs import Job
from flux_ui.tasks.text_to_image import TextToImageParams, text_to_image, validate_text_to_image
from flux_ui.tasks.vqa import (
    MODEL_KEY,
    PROCESSOR_KEY,
    Turn,
    VqaParams,
    answer_question,
    chat_messages,
    clean_reply,
    parse_history,
    validate_vqa,
)

CHART = Image.new("RGB", (160, 96), "white")


def ask(registry, question="What is the peak value in this chart?", **kw):
    kw.setdefault("max_new_tokens", 24)
    return validate_vqa(VqaParams(CHART, question, **kw), registry.settings)


def test_tiny_vlm_is_the_real_architecture_in_hub_layout(tiny_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder = tiny_dir / DEFAULT_VQA_MODEL
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["Idefics3ForConditionalGeneration"] and config["scale_factor"] == 3
    assert (folder / "chat_template.jinja").is_file() and (folder / "tokenizer.json").is_file()
    processor = AutoProcessor.from_pretrained(folder)
    assert type(processor).__name__ == "Idefics3Processor"
    assert type(AutoModelForImageTextToText.from_pretrained(folder)).__name__ == "Idefics3ForConditionalGeneration"
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Why?"}]}], add_generation_prompt=True
    )
    assert prompt == "<|im_start|>User:<image>Why?<end_of_utterance>\nAssistant:"  # SmolVLM's format
    # Most ids decode to visible text, so a random model's answer is text, not specials or whitespace.
    tok = processor.tokenizer
    visible = sum(bool(tok.decode([i], skip_special_tokens=True).strip()) for i in range(len(tok)))
    assert visible / len(tok) > 0.9


def test_answer_streams_and_the_model_loads_once(registry):
    pieces = []
    result = answer_question(registry, ask(registry), on_text=pieces.append)
    assert result.answer and result.answer == "".join(pieces).strip()
    assert len(pieces) > 3 and 1 <= result.tokens <= 24
    again = answer_question(registry, ask(registry))
    assert again.answer == result.answer  # greedy decoding: same question, same answer
    assert registry.load_counts[MODEL_KEY] == 1 and registry.load_counts[PROCESSOR_KEY] == 1
    assert registry.status()["aux"] == {PROCESSOR_KEY: "cpu", MODEL_KEY: "cpu"}


def test_history_reaches_the_model(registry):
    history = [
        {"role": "user", "content": "What is the peak value in this chart?"},
        {"role": "assistant", "content": [{"type": "text", "text": "About forty."}]},
        {"role": "user", "content": "Unanswered: the turn was cancelled"},
    ]
    params = ask(registry, "And the lowest?", history=history)
    assert params.history == (Turn("What is the peak value in this chart?", "About forty."),)
    messages = chat_messages(params.image, params.question, params.history)
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[0]["content"][0]["type"] == "image" and len(messages[2]["content"]) == 1
    first = answer_question(registry, ask(registry, "And the lowest?"))
    follow_up = answer_question(registry, params)
    assert follow_up.answer and follow_up.answer != first.answer


def test_cancel_stops_generation(registry):
    pieces = []
    with pytest.raises(Cancelled):
        answer_question(registry, ask(registry, max_new_tokens=200), pieces.append, lambda: len(pieces) >= 2)
    assert 2 <= len(pieces) < 10


def test_abandoned_answer_is_cancelled_and_the_registry_freed(registry):
    job = Job(lambda on_text, stop: answer_question(registry, ask(registry, max_new_tokens=1000), on_text, stop))
    it = iter(job)
    next(it)
    it.close()  # what Cancel (or a closed browser tab) does to the event's generator
    assert job.cancel_event.is_set() and job.result is None
    with registry.pipeline("dev"):  # the lock is free again
        pass


def test_job_streams_answer_pieces(registry):
    job = Job(lambda on_text, stop: answer_question(registry, ask(registry), on_text, stop))
    pieces = list(job)
    assert pieces and job.result.answer == "".join(pieces).strip()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image": None}, "image: is missing"),
        ({"image": Image.new("RGB", (15, 40))}, "image: is 15x40; each side must be at least 16 pixels"),
        ({"question": "  "}, "question: is empty"),
        ({"question": "x" * 2001}, "question: is 2001 characters long"),
        ({"question": 7}, "question: expected text"),
        ({"max_new_tokens": 0}, "max_new_tokens: 0 is out of range; use 1 to 1024"),
        ({"max_new_tokens": 1025}, "max_new_tokens: 1025 is out of range"),
        ({"max_new_tokens": 2.5}, "max_new_tokens: expected a whole number"),
        ({"history": "hello"}, "history: expected a list of chat messages"),
        ({"history": [{"role": "system", "content": "x"}]}, "history: expected messages with a role"),
        ({"history": [Turn("q", "a")] * 21}, "history: has 21 turns; clear the chat"),
    ],
)
def test_bad_input_names_the_field(settings, change, message):
    base = {"image": CHART, "question": "What does the sign say?", "history": None, "max_new_tokens": 16}
    with pytest.raises(InvalidInput) as err:
        validate_vqa(VqaParams(**{**base, **change}), settings)
    assert message in str(err.value)


def test_parse_history_keeps_only_answered_questions():
    assert parse_history(None) == () and parse_history([]) == ()
    chat = [
        {"role": "assistant", "content": "Hello! Ask me about the image."},
        {"role": "user", "content": [{"type": "text", "text": "q1"}, {"type": "file", "path": "x.png"}]},
        {"role": "assistant", "content": "a1"},
    ]
    assert parse_history(chat) == (Turn("q1", "a1"),)


def test_clean_reply():
    assert clean_reply(' "A red fox in the snow, golden hour." ') == "A red fox in the snow, golden hour."
    assert clean_reply("Instruction: Make the sky stormy") == "Make the sky stormy"
    assert clean_reply("It's fine") == "It's fine"


def test_missing_model_is_explained(settings, tmp_path):
    registry = Registry(replace(settings, vqa_model=str(tmp_path / "nowhere")))
    with pytest.raises(ModelUnavailableError) as err:
        answer_question(registry, ask(registry))
    assert "VQA model" in str(err.value) and "nowhere" in str(err.value) and "--vqa-model" in str(err.value)
    assert registry.status()["aux"] == {}


def test_missing_package_is_explained(settings):
    from flux_ui.models import sources

    def loader():
        raise ImportError("Qwen2VLVideoProcessor requires the Torchvision library but it was not found")

    with pytest.raises(ModelUnavailableError) as err:
        sources.load("VQA processor", "Qwen/Qwen2-VL-2B-Instruct", "--vqa-model", loader)
    assert "pip install torchvision" in str(err.value) and "--vqa-model" in str(err.value)


# -- the registry: the VLM goes before any FLUX part ---------------------------------------------------


def flux_image(registry):
    params = TextToImageParams(prompt="a red fox", width=64, height=64, steps=1, seed=1)
    return text_to_image(registry, validate_text_to_image(params, registry.settings))


def test_under_pressure_the_vlm_goes_first_and_flux_parts_stay(registry, monkeypatch):
    answer_question(registry, ask(registry))
    with registry.pipeline("dev") as pipe:
        encoders = (pipe.text_encoder, pipe.text_encoder_2, pipe.vae, pipe.transformer)
    monkeypatch.setattr(registry, "_free_bytes", lambda: 0)  # memory never suffices
    assert registry.make_room(1) == [f"{MODEL_KEY} dropped"]  # on a CPU device: no slower tier to keep it in
    with registry.pipeline("dev") as pipe:
        assert (pipe.text_encoder, pipe.text_encoder_2, pipe.vae, pipe.transformer) == encoders
    assert registry.load_counts["text_encoder_2"] == 1 and registry.load_counts["transformer:dev"] == 1
    answer_question(registry, ask(registry))  # loaded again on the next question
    assert registry.load_counts[MODEL_KEY] == 2


def test_eviction_stops_when_enough_is_free(registry, monkeypatch):
    answer_question(registry, ask(registry))
    monkeypatch.setattr(registry, "_free_bytes", lambda: 10**9)
    assert registry.make_room(10**6) == []
    assert registry.make_room(10**10, keep=(MODEL_KEY,)) == []  # kept, and nothing else to evict
    assert MODEL_KEY in registry.status()["aux"]


def test_a_flux_run_under_pressure_evicts_the_vlm_not_its_own_parts(registry, monkeypatch):
    answer_question(registry, ask(registry))
    monkeypatch.setattr(registry, "_free_bytes", lambda: 0)
    assert flux_image(registry).images[0].image.size == (64, 64)
    assert MODEL_KEY not in registry.status()["aux"]
    assert set(registry.status()["shared"]) == {"text_encoder", "text_encoder_2", "vae"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_the_vlm_goes_to_ram_then_is_dropped_before_flux_parts_move(settings, monkeypatch):
    registry = Registry(replace(settings, device="cuda", dtype=torch.bfloat16))
    first = answer_question(registry, ask(registry))
    flux_image(registry)
    assert registry.status()["aux"][MODEL_KEY].startswith("cuda")
    free = {"bytes": 0}
    monkeypatch.setattr(registry, "_free_bytes", lambda: free["bytes"])
    assert registry.make_room(1) == [
        f"{MODEL_KEY} -> cpu",
        "text_encoder_2 -> cpu",
        "text_encoder -> cpu",
        "vae -> cpu",
        "transformer:dev -> cpu",
    ]
    assert registry.status()["aux"][MODEL_KEY] == "cpu"
    free["bytes"] = 10**15  # the next runs find room and bring their parts back
    assert flux_image(registry).images[0].image.size == (64, 64)
    assert all(d.startswith("cuda") for d in registry.status()["shared"].values())
    assert answer_question(registry, ask(registry)).answer == first.answer
    assert registry.status()["aux"][MODEL_KEY].startswith("cuda")
    # With RAM short too, the VLM is dropped rather than kept in RAM; the FLUX parts only move.
    free["bytes"] = 0
    monkeypatch.setattr(registry, "_free_ram_bytes", lambda: 0)
    assert registry.make_room(1)[0] == f"{MODEL_KEY} dropped"
    assert registry.load_counts[MODEL_KEY] == 1 and registry.load_counts["text_encoder_2"] == 1


def test_vqa_settings_from_flags_and_environment(monkeypatch):
    from flux_ui.core.settings import settings_from_args

    assert settings_from_args([]).vqa_model == DEFAULT_VQA_MODEL
    monkeypatch.setenv("FLUX_UI_VQA_MODEL", "HuggingFaceTB/SmolVLM-256M-Instruct")
    monkeypatch.setenv("FLUX_UI_MAX_ANSWER_TOKENS", "300")
    s = settings_from_args([])
    assert (s.vqa_model, s.max_answer_tokens) == ("HuggingFaceTB/SmolVLM-256M-Instruct", 300)
    assert settings_from_args(["--vqa-model", "/models/my-vlm"]).vqa_model == "/models/my-vlm"
