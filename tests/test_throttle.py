"""flux_ui/serving/throttle.py: the failure limiter with a fake clock, the middleware by plain ASGI calls, and the
middleware in front of a tiny FastAPI app served by a real uvicorn on a loopback port."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.message import Message

import pytest
import uvicorn
from fastapi import FastAPI, Form, Header
from fastapi.responses import JSONResponse

from flux_ui.serving.throttle import FailureThrottle, LoginThrottle, client_key


class FakeClock:
    """A monotonic clock that moves only when told; seconds."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def run_in_own_loop(coro) -> None:
    """asyncio.run on a thread of its own: other tests of the session (Playwright's sync API) may leave an
    event loop running on the main thread, where asyncio.run refuses to start."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coro).result()


def fail(throttle: FailureThrottle, key: str, times: int) -> int:
    count = 0
    for _ in range(times):
        count = throttle.failure(key)
    return count


# --- the limiter ---------------------------------------------------------------------------------------


def test_no_delay_until_max_failures(clock):
    throttle = FailureThrottle(max_failures=5, window_s=60, max_delay_s=30, clock=clock)
    assert fail(throttle, "a", 4) == 4
    assert throttle.delay("a") == 0.0
    assert throttle.failure("a") == 5
    assert throttle.delay("a") == 1.0
    assert throttle.delay("b") == 0.0  # per key


def test_delay_doubles_per_failure_up_to_the_cap(clock):
    throttle = FailureThrottle(max_failures=3, window_s=600, max_delay_s=30, clock=clock)
    fail(throttle, "a", 3)
    waits = []
    for _ in range(7):
        waits.append(throttle.delay("a"))
        clock.advance(throttle.delay("a"))  # a patient guesser waits each delay out exactly
        assert throttle.delay("a") == 0.0
        throttle.failure("a")
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_delay_counts_down_with_the_clock(clock):
    throttle = FailureThrottle(max_failures=1, window_s=60, max_delay_s=30, clock=clock)
    fail(throttle, "a", 3)  # 4 s
    clock.advance(2.5)
    assert throttle.delay("a") == pytest.approx(1.5)


def test_failures_spread_beyond_the_window_are_forgotten(clock):
    throttle = FailureThrottle(max_failures=3, window_s=10, max_delay_s=30, clock=clock)
    for _ in range(5):
        throttle.failure("a")
        clock.advance(10.0)  # each failure comes a whole window after the last: never more than one
    assert throttle.failures("a") == 0
    assert throttle.failure("a") == 1
    clock.advance(9.9)
    assert throttle.failure("a") == 2  # within the window: counted


def test_patient_guesser_stays_at_the_cap(clock):
    # With the cap (30 s) at half the window (60 s), only two failures ever fall inside one window; the
    # count must still not fall back under max_failures while the guesser keeps failing.
    throttle = FailureThrottle(max_failures=5, window_s=60, max_delay_s=30, clock=clock)
    fail(throttle, "a", 5)
    for _ in range(20):
        clock.advance(throttle.delay("a"))
        throttle.failure("a")
    assert throttle.delay("a") == 30.0


def test_entry_expires_a_window_after_its_delay(clock):
    throttle = FailureThrottle(max_failures=2, window_s=10, max_delay_s=30, clock=clock)
    fail(throttle, "a", 4)  # 4 s to wait
    clock.advance(4 + 9.9)
    assert throttle.failures("a") == 4
    clock.advance(0.1)
    assert throttle.failures("a") == 0
    assert throttle.delay("a") == 0.0
    assert "a" not in throttle._entries


def test_success_clears(clock):
    throttle = FailureThrottle(max_failures=2, clock=clock)
    fail(throttle, "a", 6)
    assert throttle.delay("a") > 0
    throttle.success("a")
    assert throttle.delay("a") == 0.0
    assert throttle.failure("a") == 1


def test_keys_are_bounded_oldest_dropped(clock):
    throttle = FailureThrottle(max_failures=1, window_s=60, clock=clock, max_keys=100)
    for i in range(250):
        throttle.failure(f"10.0.{i // 256}.{i % 256}")
        clock.advance(0.001)
    assert len(throttle._entries) == 100
    assert throttle.failures("10.0.0.0") == 0  # the oldest went first
    assert throttle.failures("10.0.0.249") == 1


def test_expired_keys_are_swept_on_failure(clock):
    throttle = FailureThrottle(max_failures=5, window_s=10, clock=clock)
    for i in range(50):
        throttle.failure(f"k{i}")
    clock.advance(10.0)
    throttle.failure("new")
    assert list(throttle._entries) == ["new"]


def test_one_attempt_in_flight_once_throttled(clock):
    throttle = FailureThrottle(max_failures=2, clock=clock)
    assert throttle.begin("a") == 0.0 and throttle.begin("a") == 0.0  # not throttled: any number
    fail(throttle, "a", 2)
    assert throttle.begin("a") == 1.0  # waiting
    clock.advance(1.0)
    assert throttle.begin("a") == 0.0
    assert throttle.begin("a") > 0  # a second connection at the same moment does not get a guess
    throttle.end("a")
    assert throttle.begin("a") == 0.0


def test_thread_safe_counting(clock):
    throttle = FailureThrottle(max_failures=10_000, window_s=60, clock=clock)
    threads = [threading.Thread(target=fail, args=(throttle, "a", 500)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert throttle.failures("a") == 4000


def test_bad_arguments():
    with pytest.raises(ValueError):
        FailureThrottle(max_failures=0)
    with pytest.raises(ValueError):
        FailureThrottle(window_s=0)


def test_client_key():
    assert client_key("203.0.113.7") == "203.0.113.7"
    assert client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:203.0.113.7") == "203.0.113.7"
    assert client_key("testclient") == "testclient"


# --- the middleware, by plain ASGI calls -----------------------------------------------------------------


async def call(app, path: str, root_path: str = "", client=("10.0.0.1", 5000)) -> dict:
    """One http request through `app`; the response start message with the body added."""
    scope = {"type": "http", "method": "POST", "path": path, "root_path": root_path, "headers": []}
    scope["client"] = client
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    return {**start, "body": b"".join(m.get("body", b"") for m in sent[1:])}


def status_app(status: int, calls: list[str] | None = None):
    async def app(scope, receive, send):
        if calls is not None:
            calls.append(scope["path"])
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    return app


def test_middleware_paths_slash_root_path_and_statuses(clock):
    async def run():
        throttle = FailureThrottle(max_failures=1, clock=clock)
        calls: list[str] = []
        bad = LoginThrottle(status_app(400, calls), throttle)
        assert (await call(bad, "/login/"))["status"] == 400  # trailing slash: guarded
        assert (await call(bad, "/login"))["status"] == 429
        assert (await call(bad, "/ui/login", root_path="/ui"))["status"] == 429  # behind --root-path
        assert (await call(bad, "/loginx"))["status"] == 400  # not guarded
        throttle.success(client_key("10.0.0.1"))
        assert (await call(bad, "/generate"))["status"] == 400  # 400 on /generate: a bad field, not a login
        assert throttle.failures("10.0.0.1") == 0
        assert (await call(LoginThrottle(status_app(401), throttle), "/generate"))["status"] == 401
        assert throttle.failures("10.0.0.1") == 1
        assert (await call(LoginThrottle(status_app(200), throttle), "/generate"))["status"] == 429
        clock.advance(1.0)
        assert (await call(LoginThrottle(status_app(200), throttle), "/generate"))["status"] == 200
        assert throttle.failures("10.0.0.1") == 0
        assert calls == ["/login/", "/loginx", "/generate"]

    run_in_own_loop(run())


def test_middleware_lets_one_attempt_through_when_a_wait_ends(clock):
    """Many connections opened at once when the wait ends: one reaches the app, the rest get 429."""

    async def run():
        throttle = FailureThrottle(max_failures=1, clock=clock)
        throttle.failure("10.0.0.1")
        clock.advance(1.0)
        release = asyncio.Event()
        calls = 0

        async def slow_app(scope, receive, send):
            nonlocal calls
            calls += 1
            await release.wait()
            await send({"type": "http.response.start", "status": 400, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        app = LoginThrottle(slow_app, throttle)
        first = asyncio.create_task(call(app, "/login"))
        await asyncio.sleep(0)
        others = await asyncio.gather(*(call(app, "/login") for _ in range(5)))
        assert [o["status"] for o in others] == [429] * 5
        release.set()
        assert (await first)["status"] == 400
        assert calls == 1
        assert throttle.delay("10.0.0.1") == 2.0  # the one let through failed: the next wait doubled

    run_in_own_loop(run())


# --- through a real server ------------------------------------------------------------------------------


def tiny_app(calls: list[str]) -> FastAPI:
    app = FastAPI()

    @app.post("/login")
    def login(username: str = Form(...), password: str = Form(...)):
        calls.append("login")
        if password != "right":
            return JSONResponse({"detail": "Incorrect credentials."}, status_code=400)
        return {"success": True}

    @app.post("/generate")
    def generate(x_api_key: str | None = Header(None)):
        calls.append("generate")
        if x_api_key != "k":
            return JSONResponse({"error": "Unauthorized"}, status_code=401)
        return {"ok": True}

    @app.get("/health")
    def health():
        return {"status": "healthy"}

    return app


@pytest.fixture
def served(clock) -> Iterator[tuple[str, FailureThrottle, list[str]]]:
    """(base URL, throttle, calls that reached the app) of the tiny app behind LoginThrottle, served by
    uvicorn in a thread on a loopback port bound here (so no other process can take it first)."""
    calls: list[str] = []
    throttle = FailureThrottle(max_failures=5, window_s=60, max_delay_s=30, clock=clock)
    app = tiny_app(calls)
    app.add_middleware(LoginThrottle, throttle=throttle)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}", throttle, calls
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()


@dataclass
class Answer:
    status: int
    headers: Message
    body: bytes

    def json(self):
        return json.loads(self.body)


def request(url: str, form: dict | None = None, headers: dict | None = None) -> Answer:
    """One request, a POST when `form` or `headers` is given; any status is an answer, not an error.
    urllib rather than httpx: it sends a small POST in one write, where httpx's keep-alive requests
    each waited 40 ms for a delayed ACK here."""
    data = urllib.parse.urlencode(form or {}).encode() if form is not None or headers is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers or {}), timeout=5) as r:
            return Answer(r.status, r.headers, r.read())
    except urllib.error.HTTPError as err:
        with err:
            return Answer(err.code, err.headers, err.read())


def test_wrong_logins_through_a_real_server(served, clock, caplog):
    base, throttle, calls = served
    caplog.set_level(logging.WARNING, logger="flux_ui.serving.throttle")
    login, generate = f"{base}/login", f"{base}/generate"
    answers = [request(login, {"username": "u", "password": f"guess{i}"}) for i in range(20)]
    assert [a.status for a in answers[:5]] == [400] * 5
    for answer in answers[5:]:
        assert answer.status == 429
        assert answer.headers["Retry-After"] == "1"
        assert answer.json() == {
            "error": "login: too many failed attempts from this address; try again in 1 s",
            "field": "login",
        }
    assert calls == ["login"] * 5  # refused attempts never reached the app

    assert request(login, {"username": "u", "password": "right"}).status == 429
    assert request(generate, headers={"X-API-Key": "k"}).status == 429  # the same address
    started = time.monotonic()
    assert request(f"{base}/health").status == 200
    assert time.monotonic() - started < 0.5

    clock.advance(1.0)  # the wait is over: one attempt, and the right password clears the address
    assert request(login, {"username": "u", "password": "right"}).status == 200
    assert throttle.failures("127.0.0.1") == 0

    # Wrong API keys on the REST route count the same way.
    keys = [request(generate, headers={"X-API-Key": f"bad{i}"}).status for i in range(7)]
    assert keys == [401] * 5 + [429] * 2

    warnings = [r.getMessage() for r in caplog.records if r.name == "flux_ui.serving.throttle"]
    assert len(warnings) == 10
    assert "failed attempt 5 from 127.0.0.1 on /login (HTTP 400)" in warnings[4]
    assert "on /generate (HTTP 401)" in warnings[-1]
    assert not any("guess" in w or "right" in w or "bad" in w for w in warnings)  # never the password
