"""Bad input never waits for the GPU: while one client's long job holds it, a bad field on every endpoint
that runs models is refused at once (under a second), and a valid job waits its turn, told its place in line.
Against the real server (`app.py --tiny`), through gradio_client and REST as users call them."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from conftest import running_app
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

LIMIT_S = 1.0


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory) -> Iterator[str]:
    with running_app(tiny_dir, tmp_path_factory.mktemp("queue"), "--preview-every", "0") as (url, _):
        yield url


@pytest.fixture(scope="module")
def png(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("queue-input") / "input.png"
    Image.effect_noise((96, 64), 60).convert("RGB").save(path)
    return str(path)


def said(job) -> str:
    """What `job`'s progress bar says now."""
    return " ".join(str(p.desc) for p in job.status().progress_data or [])


def started(job, deadline_s: float = 120) -> None:
    """Wait until `job` reports denoising steps ("Image 1, step 3/100": it holds the GPU)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if "step" in said(job):
            return
        time.sleep(0.05)
    raise AssertionError(f"the long job never started its steps: {said(job)!r}")


def bad_calls(png: str) -> dict[str, tuple[dict, str]]:
    """endpoint -> (arguments with one bad field, the field the message must name)."""
    image = handle_file(png)
    return {
        "/text_to_image": ({"prompt": "a fox", "steps": -5}, "steps"),
        "/kontext_edit": ({"image": image, "instruction": "make it red", "steps": 0}, "steps"),
        "/redux_variation": ({"image_1": image, "guidance": -1}, "guidance"),
        "/fill": ({"image": image, "mask": image, "prompt": "a cat", "seed": -7}, "seed"),
        "/control": ({"image": image, "prompt": "a robot", "mode": "sketch"}, "mode"),
        "/control_map": ({"image": image, "low_threshold": -1}, "low_threshold"),
        "/vqa": ({"image": image, "question": "what is it?", "max_new_tokens": 0}, "max_new_tokens"),
        "/describe_as_prompt": ({"image": None}, "image"),
        "/suggest_edit": ({"image": None}, "image"),
    }


def timed(call: Callable[[], object]) -> tuple[float, object]:
    start = time.monotonic()
    try:
        outcome = call()
    except Exception as err:  # noqa: BLE001 - the caller checks what was raised
        outcome = err
    return time.monotonic() - start, outcome


def test_bad_fields_are_refused_at_once_while_a_long_job_runs(server, png):
    long_job = Client(server, verbose=False).submit(
        prompt="a long job", width=512, height=512, steps=100, seed=1, api_name="/text_to_image"
    )
    started(long_job)
    client = Client(server, verbose=False)
    try:
        for endpoint, (kwargs, field) in bad_calls(png).items():
            seconds, outcome = timed(lambda: client.predict(**kwargs, api_name=endpoint))  # noqa: B023
            assert isinstance(outcome, AppError), f"{endpoint}: {outcome!r}"
            assert str(outcome).startswith(f"{field}:"), f"{endpoint}: {outcome}"
            assert seconds < LIMIT_S, f"{endpoint} took {seconds:.2f} s to refuse a bad {field}"
            assert not long_job.done(), "the long job ended: the test did not measure what it says"

        body = json.dumps({"task": "text_to_image", "prompt": "a fox", "steps": -5}).encode()
        request = urllib.request.Request(server + "generate", body, {"Content-Type": "application/json"})
        seconds, outcome = timed(lambda: urllib.request.urlopen(request, timeout=30))
        assert isinstance(outcome, urllib.error.HTTPError) and outcome.code == 422
        assert json.loads(outcome.read())["field"] == "steps"
        assert seconds < LIMIT_S, f"REST took {seconds:.2f} s to refuse a bad field"
        assert not long_job.done()
    finally:
        long_job.cancel()


def test_a_valid_job_waits_its_turn_and_is_told_its_place(server):
    first = Client(server, verbose=False).submit(
        prompt="first", width=512, height=512, steps=100, seed=1, api_name="/text_to_image"
    )
    started(first)
    second = Client(server, verbose=False).submit(
        prompt="second", width=64, height=64, steps=1, seed=2, api_name="/text_to_image"
    )
    try:
        deadline, text = time.monotonic() + 30, ""
        while time.monotonic() < deadline and "ahead" not in text:
            text = said(second)
            time.sleep(0.1)
        assert "Waiting for the GPU: 1 job ahead" in text
        assert not second.done()
    finally:
        first.cancel()  # through Gradio's /cancel, as a script (or a closed page) does: the turn passes on
    start = time.monotonic()
    gallery, seed, _ = second.result(timeout=60)
    assert seed == 2 and len(gallery) == 1
    assert time.monotonic() - start < 10, "the cancelled job kept the GPU"


def test_line_gives_turns_in_arrival_order_and_counts_places():
    import threading

    from flux_ui.core.turns import Line

    line = Line()
    tickets = [line.join() for _ in range(3)]
    assert [line.ahead(t) for t in tickets] == [0, 1, 2]
    assert line.wait(tickets[0], 0) and not line.wait(tickets[2], 0.01)
    order = []

    def take(i: int) -> None:
        assert line.wait(tickets[i], 10)
        order.append(i)
        line.leave(tickets[i])

    threads = [threading.Thread(target=take, args=(i,)) for i in (2, 1)]
    for t in threads:
        t.start()
    line.leave(tickets[0])
    for t in threads:
        t.join(10)
    assert order == [1, 2]


def test_every_task_of_the_table_reads_the_shared_request_fields(settings):
    """Each task's spec turns a request of the APIs' shared fields into its raw parameters, and its
    validator names the bad field."""
    from flux_ui.core.errors import InvalidInput
    from flux_ui.tasks import Request
    from flux_ui.tasks.table import TASKS

    assert list(TASKS) == [
        "text_to_image",
        "image_to_image",
        "upscale",
        "kontext_edit",
        "redux_variation",
        "fill",
        "control",
        "flux2_edit",
        "flux2_inpaint",
        "vqa",
    ]
    png = Image.new("RGB", (96, 64), "gray")
    for name, spec in TASKS.items():
        raw = spec.from_request(Request(prompt="a fox", image=png, mask=png, steps=-5, max_new_tokens=0))
        assert isinstance(raw, spec.params), name
        with pytest.raises(InvalidInput) as err:
            spec.validate(raw, settings, None)
        assert err.value.field == ("max_new_tokens" if name == "vqa" else "steps"), f"{name}: {err.value}"


def test_a_rest_job_waits_in_the_same_line_as_the_ui(server):
    """The HTTP APIs' jobs take their turn in the registry's one line, behind a UI job that came first."""
    import threading

    first = Client(server, verbose=False).submit(
        prompt="first", width=512, height=512, steps=100, seed=1, api_name="/text_to_image"
    )
    started(first)
    answer: dict = {}

    def rest() -> None:
        body = json.dumps({"task": "text_to_image", "prompt": "rest", "resolution": "64x64", "steps": 1, "seed": 4})
        request = urllib.request.Request(server + "generate", body.encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as r:
            answer["body"] = json.loads(r.read())

    thread = threading.Thread(target=rest)
    thread.start()
    try:
        thread.join(2)
        assert thread.is_alive(), "the REST job ran while the UI job held its turn"
        assert not first.done()
    finally:
        first.cancel()
    thread.join(60)
    assert answer["body"]["seed"] == 4 and len(answer["body"]["images"]) == 1
