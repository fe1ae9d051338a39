"""Slow down password guessing: per client address, after `max_failures` failed logins the next attempt
must wait, 1 s doubling per further failure up to `max_delay_s`; an attempt that comes too early is
answered 429 with `Retry-After` at once, without reaching the app.

Guarded paths (`LoginThrottle`'s `paths`): Gradio's `POST /login` (a wrong password is its HTTP 400) and
our `POST /generate` (a wrong or missing X-API-Key / HTTP Basic login is 401). A 2xx clears the address.

Wiring, after `gr.mount_gradio_app` (the middleware then sees every request, the UI's included):

    app.add_middleware(LoginThrottle, throttle=FailureThrottle())

Why hand-written: slowapi (FastAPI's port of Flask-Limiter, over the `limits` package) limits request
*rates*: it counts every request to a decorated route when it arrives, has no way (unlike Flask-Limiter's
`deduct_when`) to count only failed ones or to let a right password clear the count, and its decorators
cannot reach Gradio's own /login route. Gradio's login has no throttle of its own. What is needed is a
counter per address and a look at the response status, which is small.

Limits, on purpose: the count is per address, so a guesser with many addresses is slowed only per
address (IPv6 clients are grouped by their /64, which one host usually owns whole). The address is the
ASGI client, which uvicorn by default takes from X-Forwarded-For when the peer is 127.0.0.1 or ::1
(`forwarded_allow_ips`): behind a local proxy, or Gradio's share tunnel, it is only as good as what that
proxy reports. Clients that arrive with one address (a proxy without the header, a NAT) share one count,
so a guesser among them also delays the others, by at most `max_delay_s`. Counts live in memory, per
process.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from starlette.responses import JSONResponse

log = logging.getLogger(__name__)

BUSY_RETRY_S = 1.0  # what a throttled address is told while its one allowed attempt is still being answered


@dataclass
class _Entry:
    failures: int = 0
    last: float = 0.0  # clock time of the latest failure, in seconds
    busy: bool = False  # a throttled address's one attempt is in flight


class FailureThrottle:
    """Failed attempts per key (a client address), with an exponential wait once there are too many.

    `delay(key)` is 0 s until `max_failures` failures; then the next attempt must wait 1 s after the
    latest failure, 2 s after one more, 4 s, ... up to `max_delay_s`. Failures count until the key has
    gone `window_s` seconds after its wait ended without failing again: a sliding window that restarts
    with each failure. (Counting only the failures of the last `window_s` would let a patient guesser,
    waiting out each delay, see its count fall under `max_failures` once the delay grows past about
    window_s / max_failures, and get a burst of quick guesses again.) `success(key)` forgets the key.

    Memory is bounded: at most `max_keys` keys, the least recently failed dropped first; expired ones
    are dropped as they come to the front. All methods take a lock, so threads and the event loop may
    share one instance; none blocks beyond that.
    """

    def __init__(
        self,
        max_failures: int = 5,
        window_s: float = 60.0,
        max_delay_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10_000,
    ):
        if max_failures < 1 or window_s <= 0 or max_delay_s <= 0 or max_keys < 1:
            raise ValueError("max_failures and max_keys must be >= 1, window_s and max_delay_s > 0")
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_delay_s = max_delay_s
        self.max_keys = max_keys
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently failed first
        self._lock = threading.Lock()

    def _wait(self, failures: int) -> float:
        """Seconds a key with `failures` must wait after its latest failure."""
        over = failures - self.max_failures
        if over < 0:
            return 0.0
        return min(self.max_delay_s, 2.0 ** min(over, 64))  # min(): no float overflow for a huge count

    def _expired(self, entry: _Entry, now: float) -> bool:
        return now - entry.last >= self._wait(entry.failures) + self.window_s

    def _live(self, key: str, now: float) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None and self._expired(entry, now):
            del self._entries[key]
            return None
        return entry

    def _remaining(self, entry: _Entry | None, now: float) -> float:
        if entry is None:
            return 0.0
        return max(0.0, entry.last + self._wait(entry.failures) - now)

    def delay(self, key: str) -> float:
        """Seconds `key` must still wait before its next attempt is considered; 0.0 if none."""
        with self._lock:
            now = self._clock()
            return self._remaining(self._live(key, now), now)

    def failures(self, key: str) -> int:
        """Failures of `key` counted now (0 for an unknown or expired key)."""
        with self._lock:
            entry = self._live(key, self._clock())
            return entry.failures if entry else 0

    def failure(self, key: str) -> int:
        """Record a failed attempt of `key`; returns its count of failures, this one included."""
        with self._lock:
            now = self._clock()
            # Expired keys at the front go first; the order is by latest failure, so this stops early.
            while self._entries:
                oldest = next(iter(self._entries.values()))
                if not self._expired(oldest, now):
                    break
                self._entries.popitem(last=False)
            entry = self._live(key, now)
            if entry is None:
                entry = self._entries[key] = _Entry()
            entry.failures += 1
            entry.last = now
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_keys:
                self._entries.popitem(last=False)
            return entry.failures

    def success(self, key: str) -> None:
        """A successful login: forget `key`'s failures."""
        with self._lock:
            self._entries.pop(key, None)

    def begin(self, key: str) -> float:
        """Start an attempt of `key`: 0.0 if it may go ahead, else the seconds to wait (refuse it).

        Like `delay`, and also: once a key is throttled, only one of its attempts may be in flight, so
        many connections opened at the moment a wait ends do not get a guess each. The caller must call
        `end(key)` when that attempt has been answered (after `failure`/`success`)."""
        with self._lock:
            now = self._clock()
            entry = self._live(key, now)
            wait = self._remaining(entry, now)
            if wait > 0 or entry is None or entry.failures < self.max_failures:
                return wait
            if entry.busy:
                return BUSY_RETRY_S
            entry.busy = True
            return 0.0

    def end(self, key: str) -> None:
        """The attempt let through by `begin(key)` has been answered (or abandoned)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                entry.busy = False


def client_key(host: str) -> str:
    """The throttle key of a client address: the address itself; for IPv6 its /64 network (one host
    usually holds a whole /64, so its addresses are one guesser); an IPv4-mapped IPv6 as the IPv4."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host  # not an address (e.g. a test client's name): as given
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class LoginThrottle:
    """ASGI middleware: refuse attempts on `paths` from a throttled address with 429 and `Retry-After`,
    and feed the answers of the others to `throttle`: 401, or 400 on `form_login_paths` (Gradio's answer
    to a wrong password), is a failure; 2xx clears the address; anything else counts for neither.

    Paths match exactly or with one trailing slash, after removing the ASGI `root_path` (set behind a
    proxy with `--root-path`). Plain ASGI rather than `@app.middleware("http")`, whose wrapping of
    `receive` hides a client's disconnect from the endpoint. A refused attempt is answered at once, not
    by sleeping, so a guesser cannot hold connections open on us."""

    def __init__(
        self,
        app,
        throttle: FailureThrottle,
        paths: tuple[str, ...] = ("/login", "/generate"),
        form_login_paths: tuple[str, ...] = ("/login",),
    ):
        self.app = app
        self.throttle = throttle
        self.paths = frozenset(_strip_slash(p) for p in paths)
        self.form_login_paths = frozenset(_strip_slash(p) for p in form_login_paths)

    def _guarded(self, scope) -> str | None:
        """The guarded path `scope` asks for, normalised, or None."""
        path = scope.get("path", "")
        root = scope.get("root_path") or ""
        if root and path.startswith(root + "/"):
            path = path[len(root) :]
        path = _strip_slash(path)
        return path if path in self.paths else None

    async def __call__(self, scope, receive, send):
        path = self._guarded(scope) if scope["type"] == "http" else None
        if path is None:
            await self.app(scope, receive, send)
            return
        host = (scope.get("client") or ("unknown",))[0] or "unknown"
        key = client_key(host)
        wait = self.throttle.begin(key)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            log.debug("login: refused an attempt from %s on %s; %d s to wait", host, path, seconds)
            response = JSONResponse(
                {
                    "error": f"login: too many failed attempts from this address; try again in {seconds} s",
                    "field": "login",
                },
                status_code=429,
                headers={"Retry-After": str(seconds)},
            )
            await response(scope, receive, send)
            return

        async def watch(message) -> None:
            if message["type"] == "http.response.start":
                # Recorded before the answer goes out, so the client's next attempt already sees it.
                self._outcome(key, host, path, message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            self.throttle.end(key)

    def _outcome(self, key: str, host: str, path: str, status: int) -> None:
        if status == 401 or (status == 400 and path in self.form_login_paths):
            count = self.throttle.failure(key)
            log.warning("login: failed attempt %d from %s on %s (HTTP %d)", count, host, path, status)
        elif 200 <= status < 300:
            self.throttle.success(key)


def _strip_slash(path: str) -> str:
    """'/login/' -> '/login' (one slash only); '/' stays."""
    return path[:-1] if len(path) > 1 and path.endswith("/") else path
