"""End to end: the VQA endpoints of `python app.py --tiny`, called through gradio_client."""

from __future__ import annotations

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image


@pytest.fixture(scope="module")
def client(app_server):
    url, _ = app_server
    return Client(url, verbose=False)


@pytest.fixture(scope="module")
def chart(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("vqa") / "chart.png"
    img = Image.new("RGBA", (160, 96), (0, 0, 0, 0))
    img.paste((30, 90, 200, 255), (20, 30, 60, 96))
    img.save(path)
    return str(path)


def text_of(message: dict) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


def test_vqa_answers_and_follows_up(client, chart):
    answer, chat = client.predict(
        image=handle_file(chart), question="What is the peak value?", max_new_tokens=24, api_name="/vqa"
    )
    assert isinstance(answer, str) and answer.strip()
    assert [m["role"] for m in chat] == ["user", "assistant"]
    assert text_of(chat[0]) == "What is the peak value?" and text_of(chat[1]) == answer
    answer2, chat2 = client.predict(
        image=handle_file(chart), question="And the lowest?", history=chat, max_new_tokens=8, api_name="/vqa"
    )
    assert answer2.strip() and len(chat2) == 4 and text_of(chat2[3]) == answer2


def test_vqa_streams_the_answer(client, chart):
    job = client.submit(
        image=handle_file(chart), question="What does the sign say?", max_new_tokens=24, api_name="/vqa"
    )
    answer, _ = job.result()
    partial = [out[0] for out in job.outputs()]
    growing = [a for a in partial if a and a != answer]
    assert len(growing) >= 3 and all(answer.startswith(a) for a in growing)


def test_quick_actions(client, chart):
    prompt, chat = client.predict(image=handle_file(chart), api_name="/describe_as_prompt")
    assert prompt.strip() and text_of(chat[0]).startswith("Describe this image as a prompt")
    instruction, _ = client.predict(image=handle_file(chart), history=chat, api_name="/suggest_edit")
    assert instruction.strip()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image": None}, "image: is missing; upload an image"),
        ({"question": "   "}, "question: is empty"),
        ({"question": "why? " * 500}, "question: is 2499 characters long; shorten it to at most 2000"),
        ({"max_new_tokens": 4096}, "max_new_tokens: 4096 is out of range; use 1 to 1024"),
    ],
)
def test_bad_input_is_named(client, chart, kwargs, message):
    args = {"image": handle_file(chart), "question": "What is this?", "max_new_tokens": 4, **kwargs}
    with pytest.raises(AppError) as err:
        client.predict(**args, api_name="/vqa")
    assert message in str(err.value)


def test_not_an_image(client, tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("hello")
    with pytest.raises(AppError, match="image: is not an image"):
        client.predict(image=handle_file(str(notes)), question="What is this?", api_name="/vqa")


def test_status_lists_the_vqa_model(client, chart):
    client.predict(image=handle_file(chart), question="Hi?", max_new_tokens=2, api_name="/vqa")
    assert client.predict(api_name="/status")["aux"]["vqa"] == "cpu"
