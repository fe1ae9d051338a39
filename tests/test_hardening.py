"""The hardening of the issue "no server file is readable through the API, no request can stall the server,
every limit holds", tried through the real server: Gradio's HTTP API spoken by hand with httpx (so nothing
is uploaded on our behalf and any path can be written into a file payload) and the REST API.

Every hostile request runs in a thread while `/health` is polled every 0.1 s (`while_healthy`): each
health answer must come back 200 within 1 s, whatever the hostile request does to the server.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from conftest import ROOT, running_app
from PIL import Image, PngImagePlugin

from flux_ui.media.uploads import upload_dir

T = TypeVar("T")
REFUSED = "is not a file uploaded to this server; upload it again"
FILE_COMPONENTS = {"Image", "File", "Chatbot", "Gallery"}
SEED_MAX = 2**32 - 1
HEALTH_EVERY_S = 0.1
HEALTH_WITHIN_S = 1.0
HOSTILE_TIMEOUT_S = 120.0  # a hostile request that has not finished by then has stalled the server
# Small tiny-model jobs: whatever a parameter of that name is, if a call is not refused it stays cheap.
CHEAP = {"variant": "schnell", "width": 64, "height": 64, "steps": 1, "num_images": 1, "max_new_tokens": 8}
T2I_DATA = ["a fox", "schnell", 64, 64, 1, 3.5, 7, 1]  # /text_to_image's parameters, in order
REST_T2I = {"task": "text_to_image", "prompt": "a fox", "variant": "schnell", "resolution": "64x64", "steps": 1}
VALID_PARAMETERS = "a fox\nSteps: 4, Seed: 7, Size: 64x64, Model: FLUX.1 [schnell], Variant: schnell"


# -- helpers ---------------------------------------------------------------------------------------


def while_healthy(url: str, hostile: Callable[[], T], limit_s: float = HOSTILE_TIMEOUT_S) -> T:
    """Run `hostile()` in a thread while polling `GET {url}health` every 0.1 s; assert every health answer
    was 200 within 1 s (and that `hostile` finished within `limit_s`). Returns what `hostile` returned
    (or raises what it raised)."""
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["value"] = hostile()
        except BaseException as err:  # noqa: BLE001 - handed back to the test below
            outcome["error"] = err

    thread = threading.Thread(target=target, name="hostile", daemon=True)
    answers: list[tuple[object, float]] = []
    started = time.monotonic()
    thread.start()
    with httpx.Client(timeout=HEALTH_WITHIN_S + 0.5) as health:
        while True:
            t0 = time.monotonic()
            try:
                status: object = health.get(f"{url}health").status_code
            except httpx.HTTPError as err:
                status = repr(err)
            answers.append((status, round(time.monotonic() - t0, 3)))
            if not thread.is_alive() or time.monotonic() - started > limit_s:
                break
            time.sleep(max(0.0, HEALTH_EVERY_S - (time.monotonic() - t0)))
    thread.join(timeout=1)
    assert not thread.is_alive(), f"the hostile request was still running after {limit_s} s"
    slow = [a for a in answers if a[0] != 200 or a[1] > HEALTH_WITHIN_S]
    assert not slow, f"/health stalled while a hostile request ran: {slow[:10]} of {len(answers)} polls"
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def png_bytes(size: tuple[int, int] = (96, 64), parameters: str | None = None) -> bytes:
    info = None
    if parameters is not None:
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", parameters)
    buf = io.BytesIO()
    Image.new("RGB", size, "gray").save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def file_data(path: str, meta: bool = True) -> dict:
    return {"path": path, "meta": {"_type": "gradio.FileData"}} if meta else {"path": path}


def parse_sse(text: str) -> tuple[str | None, object]:
    """The last `event:` of a Gradio /call stream and its `data:` (JSON-decoded when it is JSON)."""
    event, data = None, None
    for line in text.splitlines():
        if line.startswith("event:"):
            event, data = line[6:].strip(), None
        elif line.startswith("data:"):
            data = line[5:].strip()
    try:
        return event, json.loads(data) if data is not None else None
    except ValueError:
        return event, data


def error_message(data: object) -> str:
    return str(data.get("error")) if isinstance(data, dict) else str(data)


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60) as client:
        yield client


def call(
    client: httpx.Client, url: str, api: str, data: list, session_hash: str | None = None, raw: bytes | None = None
) -> tuple[str | None, object, str]:
    """One Gradio API call by hand: POST the data, then read the event stream. Returns (last event, its data,
    the whole text the server sent for this call)."""
    body: dict = {"data": data}
    if session_hash is not None:
        body["session_hash"] = session_hash
    if raw is not None:
        r = client.post(f"{url}gradio_api/call/{api}", content=raw, headers={"Content-Type": "application/json"})
    else:
        r = client.post(f"{url}gradio_api/call/{api}", json=body)
    if r.status_code != 200:
        return f"http {r.status_code}", r.text, r.text
    event_id = r.json()["event_id"]
    stream = client.get(f"{url}gradio_api/call/{api}/{event_id}")
    event, payload = parse_sse(stream.text)
    return event, payload, r.text + stream.text


def upload(client: httpx.Client, url: str, content: bytes, name: str = "ok.png") -> str:
    r = client.post(f"{url}gradio_api/upload", files={"files": (name, content, "image/png")})
    assert r.status_code == 200, (r.status_code, r.text[:300])
    return r.json()[0]


def traceback_count(log: Path) -> int:
    return sum(1 for line in log.read_text(errors="replace").splitlines() if line.startswith("Traceback"))


# -- the server and what the tests share -------------------------------------------------------------


@pytest.fixture(scope="module")
def url(app_server) -> str:
    return app_server[0]


@pytest.fixture(scope="module")
def app_log(app_server) -> Path:
    return app_server[1].parent / "app.log"


@pytest.fixture(scope="module", autouse=True)
def tracebacks_at_start(app_log) -> int:
    return traceback_count(app_log)


@pytest.fixture(scope="module")
def info(http, url) -> dict:
    r = http.get(f"{url}gradio_api/info")
    assert r.status_code == 200
    return r.json()


@pytest.fixture(scope="module")
def uploaded(http, url) -> str:
    """A valid 96x64 PNG, uploaded as a browser would."""
    return upload(http, url, png_bytes())


@pytest.fixture(scope="module")
def saved_output(http, url, app_server, tracebacks_at_start) -> Path:
    """One image made through /text_to_image (which also loads the tiny models, so later calls are quick);
    its saved file in the app's outputs folder."""
    event, data, text = call(http, url, "text_to_image", T2I_DATA)
    assert event == "complete", text[-500:]
    saved = sorted(app_server[1].rglob("*.png"))
    assert saved, f"nothing saved under {app_server[1]}"
    return saved[-1]


@pytest.fixture(scope="module")
def hostile_paths(saved_output, tmp_path_factory) -> Iterator[dict[str, str]]:
    """name -> a path no request may have read: none is a regular file inside the upload folder."""
    tmp = tmp_path_factory.mktemp("hostile")
    fifo = tmp / "pipe.png"
    os.mkfifo(fifo)
    planted = upload_dir() / f"hardening-{uuid.uuid4().hex}"
    planted.mkdir(parents=True)
    link = planted / "passwd.png"
    link.symlink_to("/etc/passwd")
    yield {
        "etc-passwd": "/etc/passwd",
        "etc-hostname": "/etc/hostname",
        "missing": f"/nonexistent-{uuid.uuid4().hex}/image.png",
        "missing-in-uploads": str(upload_dir() / f"missing-{uuid.uuid4().hex}" / "image.png"),
        "readme": str(ROOT / "README.md"),
        "saved-output": str(saved_output),
        "dev-zero": "/dev/zero",
        "directory": "/etc",
        "upload-dir-itself": str(upload_dir()),
        "fifo": str(fifo),
        "symlink-in-uploads": str(link),
        "dotdot": f"{upload_dir()}/../../etc/passwd",
        "dotdot-deep": f"{upload_dir()}/x/{'../' * 12}etc/passwd",
        "proc-environ": "/proc/self/environ",
        "nul-byte": "/etc/passwd\x00.png",
        "file-url": "file:///etc/passwd",
        "relative-output": f"outputs/{saved_output.parent.name}/{saved_output.name}",
    }
    link.unlink()
    planted.rmdir()


def leaked(text: str, path: str) -> list[str]:
    """What of the path or its content an answer gives away."""
    found = []
    if "root:" in text:
        found.append("passwd content")
    if "PATH=" in text:
        found.append("environment content")
    for piece in {path, os.path.basename(path.rstrip("/")).partition("\x00")[0], "/etc/", "Errno", "Traceback"}:
        if len(piece) > 3 and piece in text:
            found.append(repr(piece))
    return found


def payload_for(component: str, fd: dict, form: str = "file-part") -> object:
    """A component's value carrying the file payload `fd`."""
    if component == "Chatbot":
        if form == "assistant-file-part":
            return [
                {"role": "user", "content": [{"type": "text", "text": "what?"}]},
                {"role": "assistant", "content": [{"type": "file", "file": fd}]},
            ]
        if form == "component-part":
            part = {"type": "component", "component": "image", "value": fd, "constructor_args": {}, "props": {}}
            return [{"role": "user", "content": [part]}, {"role": "assistant", "content": "ok"}]
        return [
            {"role": "user", "content": [{"type": "file", "file": fd}]},
            {"role": "assistant", "content": [{"type": "text", "text": "a picture"}]},
        ]
    if component == "Gallery":
        return [{"image": fd, "caption": None}]
    return fd


def default_args(params: list[dict], uploaded: str) -> list:
    """Valid values for every parameter of an endpoint: its default where it has one, a real upload for a
    required file, some text for a required text; then small sizes and steps."""
    values = []
    for p in params:
        name, component = p["parameter_name"], p["component"]
        if name in CHEAP:
            values.append(CHEAP[name])
        elif p.get("parameter_has_default"):
            values.append(p.get("parameter_default"))
        elif component in ("Image", "File"):
            values.append(file_data(uploaded))
        elif component in ("Chatbot", "Gallery"):
            values.append([])
        else:
            values.append("a fox")
    return values


def file_parameters(info: dict) -> list[tuple[str, int, dict]]:
    """(endpoint, index, parameter) for each Image/File/Chatbot/Gallery parameter of every named endpoint."""
    found = []
    for api, endpoint in info["named_endpoints"].items():
        for i, p in enumerate(endpoint["parameters"]):
            if p["component"] in FILE_COMPONENTS:
                found.append((api.lstrip("/"), i, p))
    return found


# -- 1. only uploads are read --------------------------------------------------------------------------


def test_every_file_parameter_refuses_paths_outside_uploads(http, url, info, uploaded, hostile_paths):
    targets = file_parameters(info)
    components = {p["component"] for *_, p in targets}
    assert {"Image", "File", "Chatbot"} <= components, components
    failures, tried = [], 0
    for api, index, param in targets:
        name, component = param["parameter_name"], param["component"]
        params = info["named_endpoints"]["/" + api]["parameters"]
        attacks = [(label, path, True, "file-part") for label, path in hostile_paths.items()]
        attacks.append(("no-meta", "/etc/passwd", False, "file-part"))
        if component == "Chatbot":
            for form in ("assistant-file-part", "component-part"):
                attacks += [
                    (f"{form}:etc-passwd", "/etc/passwd", True, form),
                    (f"{form}:dev-zero", "/dev/zero", True, form),
                ]

        # One session per parameter, as a page has: every new session keeps a copy of the app's config
        # (see test_a_flood_of_new_sessions_does_not_stall_the_server).
        def attack_all(api=api, index=index, name=name, component=component, params=params, attacks=attacks):
            session, out = uuid.uuid4().hex[:11], []
            for label, path, meta, form in attacks:
                data = default_args(params, uploaded)
                data[index] = payload_for(component, file_data(path, meta), form)
                event, payload, text = call(http, url, api, data, session_hash=session)
                out.append((label, path, event, error_message(payload), text))
            return out

        for label, path, event, message, text in while_healthy(url, attack_all):
            tried += 1
            problems = []
            if event != "error" or message != f"{name}: {REFUSED}":
                problems.append(f"got {event}: {message[:200]!r}")
            problems += [f"leaks {what}" for what in leaked(text, path)]
            if problems:
                failures.append(f"/{api} {name}={label} ({path}): {'; '.join(problems)}")
    assert not failures, f"{len(failures)} of {tried} refused wrongly:\n" + "\n".join(failures)
    assert tried >= 150, tried


def test_gallery_inputs_of_ui_events_refuse_paths_outside_uploads(http, url, hostile_paths):
    """The hand-off buttons (private events, which the page calls with /queue/join) take a Gallery."""
    config = http.get(f"{url}config").json()
    types = {c["id"]: c["type"] for c in config["components"]}
    events = [d for d in config["dependencies"] if "gallery" in [types[i] for i in d["inputs"]] and d["backend_fn"]]
    assert events, "no event takes a gallery"

    session = uuid.uuid4().hex[:11]

    def join(dep: dict, path: str) -> tuple[dict, str]:
        data = [payload_for("Gallery", file_data(path)) if types[i] == "gallery" else None for i in dep["inputs"]]
        body = {"data": data, "fn_index": dep["id"], "session_hash": session, "event_data": None, "trigger_id": None}
        r = http.post(f"{url}gradio_api/queue/join", json=body)
        if r.status_code != 200:
            return {"output": {"error": f"join: HTTP {r.status_code}"}}, r.text
        lines = []
        with http.stream("GET", f"{url}gradio_api/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                lines.append(line)
                if '"process_completed"' in line:
                    return json.loads(line.removeprefix("data:")), "\n".join(lines)
        return {"output": {"error": "no process_completed"}}, "\n".join(lines)

    cases = [(events[0], label, path) for label, path in hostile_paths.items()]
    cases += [(dep, "etc-passwd", "/etc/passwd") for dep in events[1:]]

    def attack_all():
        return [(dep, label, path, *join(dep, path)) for dep, label, path in cases]

    failures = []
    for dep, label, path, message, text in while_healthy(url, attack_all):
        error = str((message.get("output") or {}).get("error"))
        problems = []
        if message.get("success") is not False or not re.fullmatch(rf"\w+: {re.escape(REFUSED)}", error):
            problems.append(f"got {error[:200]!r}")
        problems += [f"leaks {what}" for what in leaked(text, path)]
        if problems:
            failures.append(f"{dep.get('api_name')} (fn {dep['id']}) gallery={label}: {'; '.join(problems)}")
    assert not failures, "\n".join(failures)


def test_a_real_upload_is_read(http, url):
    def go():
        path = upload(http, url, png_bytes())
        return call(http, url, "control_map", [file_data(path), "canny", 50, 200])

    event, data, text = while_healthy(url, go)
    assert event == "complete", text[-500:]


# -- 2. PNG parameters are parsed in linear time ------------------------------------------------------


@pytest.mark.parametrize("words", [50_000, 32_000], ids=["over-the-cap", "under-the-cap"])
def test_long_parameters_text_is_answered_quickly(http, url, words):
    path = upload(http, url, png_bytes(parameters="x\n" + "a " * words))

    def go():
        t0 = time.monotonic()
        event, data, text = call(http, url, "load_parameters", [file_data(path)])
        return event, data, time.monotonic() - t0

    event, data, seconds = while_healthy(url, go)
    assert event in ("complete", "error"), (event, data)
    assert seconds < 1.0, f"load_parameters took {seconds:.2f} s for a {2 * words} character parameters text"


def test_huge_seed_in_parameters_is_an_error_and_the_session_goes_on(http, url):
    session = uuid.uuid4().hex[:11]
    bad = "a fox\nSteps: 4, Seed: 999999999999999999999999, Size: 64x64, Model: FLUX.1 [schnell], Variant: schnell"
    bad_path = upload(http, url, png_bytes(parameters=bad))
    good_path = upload(http, url, png_bytes(parameters=VALID_PARAMETERS))

    def go():
        first = call(http, url, "load_parameters", [file_data(bad_path)], session_hash=session)
        second = call(http, url, "load_parameters", [file_data(good_path)], session_hash=session)
        return first, second

    (event, data, text), (event2, data2, text2) = while_healthy(url, go)
    assert event == "error" and "Seed" in error_message(data), text[-500:]
    assert "Traceback" not in error_message(data)
    assert event2 == "complete", text2[-500:]
    assert data2[0] == "a fox" and data2[1] == "schnell" and 7 in data2, data2


def test_bad_escape_in_a_quoted_parameter_is_a_clear_error(http, url):
    text = 'a fox\nSteps: 4, Seed: 1, Size: 64x64, Model: "FLUX.1 \\q [schnell]", Variant: schnell'
    path = upload(http, url, png_bytes(parameters=text))
    event, data, raw = while_healthy(url, lambda: call(http, url, "load_parameters", [file_data(path)]))
    message = error_message(data)
    assert event == "error", raw[-500:]
    assert "Invalid \\escape" not in message and "JSONDecodeError" not in message and "column" not in message, message
    assert "Model" in message, message


# -- 3. limits hold -----------------------------------------------------------------------------------

UPLOAD_OVER = 31_000_000  # bytes: over the default --max-upload-mb 30
BODY_OVER = 70_000_000  # bytes: over the default --max-body-mb 64


def multipart(boundary: str, size: int) -> Iterator[bytes]:
    """A multipart body with one `files` part of `size` bytes, produced piece by piece (so httpx sends it
    chunked, without a Content-Length)."""
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    piece = b"\0" * 2**20
    for start in range(0, size, len(piece)):
        yield piece[: min(len(piece), size - start)]
    yield f"\r\n--{boundary}--\r\n".encode()


def test_upload_over_the_limit_is_refused(url):
    def go():
        with httpx.Client(timeout=60) as client:
            with_length = client.post(
                f"{url}gradio_api/upload", files={"files": ("big.png", b"\0" * UPLOAD_OVER, "image/png")}
            )
            boundary = uuid.uuid4().hex
            chunked = client.post(
                f"{url}gradio_api/upload",
                content=multipart(boundary, UPLOAD_OVER),
                headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            )
        return with_length, chunked

    with_length, chunked = while_healthy(url, go)
    assert with_length.status_code == 413, (with_length.status_code, with_length.text[:300])
    assert chunked.status_code == 413, (chunked.status_code, chunked.text[:300])


def json_body(size: int) -> Iterator[bytes]:
    yield b'{"task": "text_to_image", "prompt": "'
    piece = b"x" * 2**20
    for _ in range(size // len(piece) + 1):
        yield piece
    yield b'"}'


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_rest_body_over_the_limit_is_refused(url, chunked):
    def go():
        body = json_body(BODY_OVER) if chunked else b"".join(json_body(BODY_OVER))
        with httpx.Client(timeout=60) as client:
            return client.post(f"{url}generate", content=body, headers={"Content-Type": "application/json"})

    r = while_healthy(url, go)
    assert r.status_code == 413, (r.status_code, r.text[:300])
    assert r.json()["error"].startswith("body:") and r.json()["field"] == "body", r.text[:300]


def test_vqa_history_over_the_limit_is_refused_quickly(http, url, uploaded):
    history = []
    for turn in range(20):
        history.append({"role": "user", "content": [{"type": "text", "text": f"question {turn}?"}]})
        history.append({"role": "assistant", "content": [{"type": "text", "text": "a" * 8000}]})

    def go():
        t0 = time.monotonic()
        event, data, text = call(http, url, "vqa", [file_data(uploaded), "what?", history, 8])
        return event, data, time.monotonic() - t0

    event, data, seconds = while_healthy(url, go)
    message = error_message(data)
    assert event == "error" and message.startswith("history:"), (event, message[:300])
    assert "limit" in message or "at most" in message, message
    assert seconds < 5, f"took {seconds:.1f} s to refuse"


# -- 4. numbers stay in range --------------------------------------------------------------------------


def test_rest_seed_wraps_within_32_bits(url):
    def go():
        with httpx.Client(timeout=120) as client:
            return client.post(f"{url}generate", json={**REST_T2I, "seed": SEED_MAX, "num_images": 2})

    r = while_healthy(url, go)
    assert r.status_code == 200, r.text[:500]
    seeds = [image["seed"] for image in r.json()["images"]]
    assert seeds == [SEED_MAX, 0], seeds
    assert all(0 <= s <= SEED_MAX for s in [*seeds, r.json()["seed"]])


@pytest.mark.parametrize("seed", [999999999999999999999999, 1e30], ids=["huge-int", "1e30"])
def test_gradio_seed_out_of_range_is_an_error(http, url, seed):
    data = list(T2I_DATA)
    data[6] = seed

    def go():
        return call(http, url, "text_to_image", data), call(http, url, "text_to_image", T2I_DATA)

    (event, payload, text), (after, _, after_text) = while_healthy(url, go)
    assert event == "error" and error_message(payload).startswith("seed:"), text[-500:]
    assert after == "complete", after_text[-500:]


# -- 5. logins are throttled ---------------------------------------------------------------------------

PASSWORD = "right-password"


@pytest.fixture(scope="module")
def login_server(tiny_dir, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """`python app.py --tiny --auth flux:right-password` of its own (its throttle state is its own)."""
    with running_app(tiny_dir, tmp_path_factory.mktemp("login-app"), "--auth", f"flux:{PASSWORD}") as running:
        yield running


def test_logged_in_caller_still_cannot_read_server_files(login_server):
    url, _ = login_server
    with httpx.Client(timeout=60) as client:
        r = client.post(f"{url}login", data={"username": "flux", "password": PASSWORD})
        assert r.status_code == 200 and client.cookies, (r.status_code, r.text[:300])

        def go():
            return [
                call(client, url, "control_map", [file_data(p), "canny", 50, 200]) for p in ("/etc/passwd", "/dev/zero")
            ]

        for event, data, text in while_healthy(url, go):
            assert event == "error" and error_message(data) == f"image: {REFUSED}", text[-500:]
            assert "root:" not in text


def test_wrong_passwords_are_throttled(login_server):
    url, log = login_server
    wrong = [f"wrong-{i}-{uuid.uuid4().hex[:8]}" for i in range(16)]

    def form_logins():
        with httpx.Client(timeout=30) as client:
            return [client.post(f"{url}login", data={"username": "flux", "password": pw}) for pw in wrong[:8]]

    answers = while_healthy(url, form_logins)
    assert [r.status_code for r in answers] == [400] * 5 + [429] * 3, [(r.status_code, r.text[:100]) for r in answers]
    for r in answers[5:]:
        assert int(r.headers["Retry-After"]) >= 1, r.headers
        assert r.json()["field"] == "login" and r.json()["error"].startswith("login:"), r.text

    # Wait out the delay; the right password then gets in and clears the count.
    time.sleep(int(answers[-1].headers["Retry-After"]) + 0.2)
    with httpx.Client(timeout=30) as client:
        ok = client.post(f"{url}login", data={"username": "flux", "password": PASSWORD})
    assert ok.status_code == 200, (ok.status_code, ok.text[:300])

    def basic_logins():
        with httpx.Client(timeout=30) as client:
            return [client.post(f"{url}generate", json=REST_T2I, auth=("flux", pw)) for pw in wrong[8:]]

    answers = while_healthy(url, basic_logins)
    codes = [r.status_code for r in answers]
    assert codes == [401] * 5 + [429] * 3, [(r.status_code, r.text[:100]) for r in answers]
    assert all("Retry-After" in r.headers for r in answers[5:])
    assert all(r.json()["field"] == "login" for r in answers[5:])

    text = log.read_text(errors="replace")
    assert text.count("failed attempt") >= 10, text[-2000:]
    assert not [pw for pw in wrong if pw in text], "a wrong password is in the server log"
    assert PASSWORD not in text, "the password is in the server log"


# -- no flood stalls the server ------------------------------------------------------------------------

FLOOD_CALLS = 800  # twice the sessions kept (--max-sessions 400): the heap must stop growing


@pytest.fixture(scope="module")
def flood_server(tiny_dir, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """A server of its own, so that what a flood leaves behind does not slow the other tests."""
    with running_app(tiny_dir, tmp_path_factory.mktemp("flood-app")) as running:
        yield running


def test_a_flood_of_new_sessions_does_not_stall_the_server(flood_server):
    """Refused file payloads, each call in a new session (as any script that does not send a session hash):
    whatever each call leaves behind must not add up to a stall of /health."""
    url, _ = flood_server
    local, clients = threading.local(), []

    def one(_: int) -> tuple[str | None, str]:
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=60)
            clients.append(local.client)
        event, data, _text = call(local.client, url, "control_map", [file_data("/etc/passwd"), "canny", 50, 200])
        return event, error_message(data)

    def flood():
        try:
            # Four client threads: more would mostly measure this test process's own GIL, not the server.
            with ThreadPoolExecutor(4) as pool:
                return list(pool.map(one, range(FLOOD_CALLS)))
        finally:
            for client in clients:
                client.close()

    answers = while_healthy(url, flood, limit_s=600)
    assert set(answers) == {("error", f"image: {REFUSED}")}, set(answers)


# -- 6. saved images are not guessable ---------------------------------------------------------------


def test_saved_images_are_served_only_by_unguessable_links(http, url, app_server, saved_output):
    outputs = app_server[1]
    before = set(outputs.rglob("*.png"))
    event, data, text = while_healthy(url, lambda: call(http, url, "text_to_image", T2I_DATA))
    assert event == "complete", text[-500:]
    item = data[0][0]["image"]
    assert re.search(r"/result-[0-9a-f]{32}/[^/]+\.png$", item["url"]), item["url"]
    got = http.get(item["url"])
    assert got.status_code == 200, got.status_code
    with Image.open(io.BytesIO(got.content)) as img:
        assert "Seed: 7" in img.info.get("parameters", ""), img.info
    (saved,) = set(outputs.rglob("*.png")) - before
    assert saved.name == Path(item["path"]).name

    def guesses():
        tries = [
            f"outputs/{saved.parent.name}/{saved.name}",
            f"outputs/{date.today():%Y-%m-%d}/{saved.name}",
            str(saved),
            str(saved_output),
            "/etc/passwd",
            f"{upload_dir()}/../../etc/passwd",
        ]
        return [(t, http.get(f"{url}gradio_api/file={t}")) for t in tries]

    for tried, r in while_healthy(url, guesses):
        assert r.status_code in (403, 404), (tried, r.status_code, r.text[:200])
        assert "root:" not in r.text


# -- 7. REST errors speak REST -------------------------------------------------------------------------

GOOD = base64.b64encode(png_bytes()).decode()
REST_ERRORS = [
    ("kontext-empty-prompt", {"task": "kontext_edit", "image": GOOD, "prompt": "", "steps": 1}, "prompt", (422,)),
    ("vqa-empty-prompt", {"task": "vqa", "image": GOOD, "prompt": ""}, "prompt", (422,)),
    (
        "redux-strength",
        {"task": "redux_variation", "image": GOOD, "strengths": [5], "resolution": "64x64", "steps": 1},
        "strengths[0]",
        (422,),
    ),
    (
        "redux-images-not-base64",
        {"task": "redux_variation", "image": GOOD, "images": ["@@@"], "resolution": "64x64", "steps": 1},
        "images[0]",
        (422,),
    ),
]


@pytest.mark.parametrize(("body", "field", "codes"), [c[1:] for c in REST_ERRORS], ids=[c[0] for c in REST_ERRORS])
def test_rest_errors_name_the_rest_field(url, body, field, codes):
    def go():
        with httpx.Client(timeout=60) as client:
            return client.post(f"{url}generate", json=body)

    r = while_healthy(url, go)
    assert r.status_code in codes, (r.status_code, r.text[:300])
    assert r.json()["field"] == field and r.json()["error"].startswith(f"{field}:"), r.text[:300]


def test_rest_image_over_the_upload_limit_names_image(url):
    big = base64.b64encode(b"\0" * UPLOAD_OVER).decode()

    def go():
        with httpx.Client(timeout=60) as client:
            return client.post(f"{url}generate", json={"task": "kontext_edit", "prompt": "red", "image": big})

    r = while_healthy(url, go)
    assert r.status_code in (413, 422), (r.status_code, r.text[:300])
    assert r.json()["field"] == "image" and r.json()["error"].startswith("image:"), r.text[:300]
    assert len(r.content) < 20_000


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "generate"), ("PUT", "generate"), ("DELETE", "generate"), ("POST", "health")]
)
def test_wrong_method_is_405_with_allow(url, method, path):
    def go():
        with httpx.Client(timeout=30) as client:
            return client.request(method, f"{url}{path}")

    r = while_healthy(url, go)
    assert r.status_code == 405, (r.status_code, r.text[:300])
    assert r.headers.get("Allow"), r.headers
    assert method not in r.headers["Allow"].replace(" ", "").split(","), r.headers["Allow"]


# -- 8. every message is clear -------------------------------------------------------------------------

SURROGATE_GRADIO = b'{"data": ["a \\ud800 fox", "schnell", 64, 64, 1, 3.5, 7, 1]}'
SURROGATE_REST = (
    b'{"task": "text_to_image", "prompt": "a \\ud800 fox", "variant": "schnell", "resolution": "64x64", "steps": 1}'
)


def test_lone_surrogate_in_prompt_names_prompt(http, url):
    def go():
        gradio = call(http, url, "text_to_image", [], raw=SURROGATE_GRADIO)
        rest = http.post(f"{url}generate", content=SURROGATE_REST, headers={"Content-Type": "application/json"})
        return gradio, rest

    (event, data, text), rest = while_healthy(url, go)
    message = error_message(data)
    assert event == "error" and message.startswith("prompt:"), text[-500:]
    assert "TextEncodeInput" not in message
    assert rest.status_code == 422 and rest.json()["field"] == "prompt", rest.text[:300]
    assert rest.json()["error"].startswith("prompt:") and "TextEncodeInput" not in rest.text


def test_directory_as_file_gets_the_upload_message(http, url, tmp_path):
    def go():
        return [
            call(http, url, "load_parameters", [file_data(str(tmp_path))]),
            call(http, url, "control_map", [file_data("/etc"), "canny", 50, 200]),
            call(http, url, "vqa", [file_data(str(upload_dir())), "what?", [], 8]),
        ]

    results = while_healthy(url, go)
    for (event, data, text), name in zip(results, ["file", "image", "image"], strict=True):
        assert event == "error" and error_message(data) == f"{name}: {REFUSED}", text[-500:]
        assert "Errno" not in text and "Is a directory" not in text


def test_invalid_requests_leave_no_traceback(http, url, app_log, uploaded):
    before = traceback_count(app_log)

    def batch():
        with httpx.Client(timeout=60) as client:
            for body, *_ in [c[1:] for c in REST_ERRORS]:
                client.post(f"{url}generate", json=body)
            client.post(f"{url}generate", content=SURROGATE_REST, headers={"Content-Type": "application/json"})
            client.post(f"{url}generate", content=b"{bad json", headers={"Content-Type": "application/json"})
            client.post(f"{url}generate", json={**REST_T2I, "seed": 2**40})
            client.get(f"{url}generate")
        call(http, url, "text_to_image", [], raw=SURROGATE_GRADIO)
        call(http, url, "text_to_image", [*T2I_DATA[:6], 1e30, 1])
        call(http, url, "load_parameters", [file_data("/etc")])
        call(http, url, "load_parameters", [file_data("/etc/passwd", meta=False)])
        call(http, url, "vqa", [file_data(uploaded), "", [], 8])
        call(http, url, "control_map", [file_data(uploaded), "sideways", 50, 200])
        call(http, url, "kontext_edit", [file_data(uploaded), "", "auto", 1, 2.5, 1, 1])

    while_healthy(url, batch)
    time.sleep(0.5)  # let the server's log catch up
    after = traceback_count(app_log)
    assert after == before, "new tracebacks in the log:\n" + app_log.read_text(errors="replace")[-4000:]


@pytest.mark.parametrize(
    "history",
    ["garbage", [1, 2], [{"role": "user"}], {"role": "user", "content": "hi"}],
    ids=["string", "numbers", "no-content", "a-dict"],
)
def test_malformed_chat_history_names_history(http, url, app_log, uploaded, history):
    before = traceback_count(app_log)
    event, data, text = while_healthy(url, lambda: call(http, url, "vqa", [file_data(uploaded), "what?", history, 8]))
    message = error_message(data)
    assert event == "error" and message.startswith("history:"), (event, message[:400])
    assert "validation error" not in message and "pydantic" not in message, message[:400]
    time.sleep(0.3)
    assert traceback_count(app_log) == before, app_log.read_text(errors="replace")[-3000:]


def test_no_traceback_from_this_module(app_log, tracebacks_at_start):
    """Runs last: nothing this module sent made the server log a traceback."""
    time.sleep(0.5)
    assert traceback_count(app_log) == tracebacks_at_start, app_log.read_text(errors="replace")[-4000:]
