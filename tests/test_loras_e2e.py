"""LoRAs end to end: `app.py --tiny --lora-dir ...` driven through gradio_client, one request at a time and
several at once."""

from __future__ import annotations

import numpy as np
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image

from flux_ui.media.metadata import meta_from_parameters, read_parameters
from flux_ui.models.loras.library import parse_prompt


@pytest.fixture(scope="module")
def client(app_server):
    url, _ = app_server
    return Client(url, verbose=False)


def generate(client, prompt: str, variant: str = "dev", seed: int = 5):
    gallery, _, _ = client.predict(
        prompt=prompt, variant=variant, width=64, height=64, steps=2, seed=seed, api_name="/text_to_image"
    )
    last_path[:] = [gallery[0]["image"]]
    return read(gallery[0]["image"])


last_path: list[str] = []  # the file of the last image `generate` made


def read(path: str):
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB")), meta_from_parameters(read_parameters(img))


def test_loras_are_listed_with_trigger_words(client):
    listed = {e["name"]: e["trigger_words"] for e in client.predict(api_name="/loras")}
    assert listed["kohya-fox"] == ["foxy", "tree"] and listed["bfl-neon"] == ["neon", "night city"]
    assert {"guided", "styles/comfy-dusk", "xlabs-glow"} <= set(listed)
    assert "old-style" not in listed  # a pickle


def test_prompt_tag_applies_a_lora_and_is_recorded(client):
    base, _ = generate(client, "a red fox")
    image, meta = generate(client, "a red fox <lora:kohya-fox:0.5>")
    assert not np.array_equal(image, base)
    # The PNG's prompt carries the tag (other tools read LoRAs from it); read back, the LoRA is in
    # `loras` and the prompt is the rest, so a form filled from it names the LoRA once.
    with Image.open(last_path[0]) as img:
        assert "a red fox <lora:kohya-fox:0.5>" in read_parameters(img)
    assert meta.loras == (("kohya-fox", 0.5),) and meta.prompt == "a red fox"
    again, _ = generate(client, "a red fox")
    np.testing.assert_array_equal(again, base)


@pytest.mark.parametrize(
    ("prompt", "variant", "message"),
    [
        ("a fox <lora:nope:1>", "dev", "prompt: no LoRA named 'nope'; available: bfl-neon, diffusers-ink, guided"),
        ("a fox <lora:../../etc/passwd:1>", "dev", "prompt: LoRA name '../../etc/passwd' is not allowed"),
        ("a fox <lora:old-style:1>", "dev", "prompt: LoRA 'old-style' is a pickle file"),
        ("a fox <lora:guided:1>", "schnell", "prompt: LoRA 'guided' does not fit FLUX.1 [schnell]"),
        ("a fox <lora:misfit/control:1>", "dev", "is a Control LoRA"),
    ],
)
def test_bad_loras_are_explained_and_change_nothing(client, prompt, variant, message):
    base, _ = generate(client, "a red fox", variant)
    with pytest.raises(AppError) as err:
        generate(client, prompt, variant)
    assert message in str(err.value)
    after, _ = generate(client, "a red fox", variant)
    np.testing.assert_array_equal(after, base)


def test_load_parameters_restores_the_tags(client):
    from gradio_client import handle_file

    gallery, _, _ = client.predict(
        prompt="a blue chair <lora:xlabs-glow:0.7>", width=64, height=64, steps=2, seed=9, api_name="/text_to_image"
    )
    values = client.predict(handle_file(gallery[0]["image"]), api_name="/load_parameters")
    assert values[0] == "a blue chair <lora:xlabs-glow:0.7>"


CASES = [
    ("dev", "a red fox"),
    ("dev", "a red fox <lora:kohya-fox:0.8>"),
    ("schnell", "a red fox <lora:xlabs-glow:1> <lora:kohya-clip:0.5>"),
    ("krea-dev", "a red fox <lora:bfl-neon:0.5>"),
    ("schnell", "a red fox"),
    ("dev", "a red fox <lora:diffusers-ink:1> <lora:styles/comfy-dusk:0.6>"),
]


def test_simultaneous_requests_with_different_variants_and_loras(client):
    expected = {case: generate(client, case[1], case[0])[0] for case in CASES}  # one at a time
    assert len({a.tobytes() for a in expected.values()}) == len(CASES)
    jobs = [
        (
            case,
            client.submit(
                prompt=case[1], variant=case[0], width=64, height=64, steps=2, seed=5, api_name="/text_to_image"
            ),
        )
        for case in CASES
    ]
    for (variant, prompt), job in jobs:
        gallery, _, _ = job.result(timeout=300)
        image, meta = read(gallery[0]["image"])
        np.testing.assert_array_equal(image, expected[(variant, prompt)])
        assert (meta.variant, meta.prompt, meta.loras) == (variant, parse_prompt(prompt)[0], parse_prompt(prompt)[1])
