"""Serving: one FastAPI app on one port with the HTTP APIs (REST in flux_ui/serving/rest.py, OpenAI's images API
in openai_api.py, AUTOMATIC1111's in a1111_api.py) and the Gradio UI mounted at /,
run by uvicorn; the login that guards them; the optional Gradio share link and MCP server.

Why not `demo.launch()`: it builds its own FastAPI app and serves only that, so the REST routes and
their OpenAPI page could not live beside the UI. `gr.mount_gradio_app` is Gradio's supported way to put
the UI into an app of our own. Share links are made by `launch()` alone; the tunnel it opens
(`gradio.networking.setup_tunnel`) only forwards a public address to a local port, so it is opened here
the same way, to our uvicorn port, once the server answers.
"""

from __future__ import annotations

import gc
import ipaddress
import logging
import secrets
import threading
import time
from dataclasses import dataclass

from flux_ui.core.settings import Settings
from flux_ui.serving.throttle import FailureThrottle, LoginThrottle

log = logging.getLogger(__name__)
GENERATED_USER = "flux"  # the user name of a generated login
# The HTTP APIs' routes that take a key: their 401s count as failed logins (serving/throttle.py).
API_PATHS = ("/generate", "/status", "/v1/images/generations", "/v1/images/edits", "/v1/models", "/sdapi/v1/txt2img")
API_PATHS += ("/sdapi/v1/img2img", "/sdapi/v1/options")


@dataclass(frozen=True)
class Login:
    """Who may use the UI: None (anyone who can reach the port) or one user and password."""

    credentials: tuple[str, str] | None
    generated: bool = False  # the password was made up at start and must be shown to the operator


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_auth(settings: Settings) -> Login:
    """`--auth` if given; else a generated password when the GPU is reachable beyond this machine (a share
    link, or a host other than loopback), unless `--no-auth` says otherwise or this is a Hugging Face Space;
    else no login."""
    if settings.auth is not None:
        return Login(settings.auth)
    if settings.on_space:  # a Space is private or public by its own settings; a password would lock all out
        return Login(None)
    exposed = settings.share or not is_loopback(settings.host)
    if exposed and not settings.no_auth:
        return Login((GENERATED_USER, secrets.token_urlsafe(12)), generated=True)
    return Login(None)


def check_mcp() -> None:
    """Gradio's MCP server needs the `mcp` package (the `gradio[mcp]` extra); say so before starting."""
    try:
        import mcp  # noqa: F401
    except ImportError:
        raise SystemExit("--mcp needs Gradio's MCP extra: pip install 'gradio[mcp]==6.31.0'") from None


def build_app(registry, login: Login):
    """The FastAPI app: REST routes first (so / and Gradio's routes cannot shadow them), the UI at /."""
    import gradio as gr
    from fastapi import FastAPI

    from flux_ui import __version__
    from flux_ui.serving import a1111_api, openai_api
    from flux_ui.serving import rest as api
    from flux_ui.serving.jobs import Jobs
    from flux_ui.serving.sessions import lazy_session_configs
    from flux_ui.ui.app import build_ui
    from flux_ui.ui.shortcuts import head

    settings = registry.settings
    if settings.mcp:
        check_mcp()
    app = FastAPI(
        title="FLUX UI",
        version=__version__,
        description="REST API of FLUX UI; the Gradio UI is served at /. See README.md, 'REST API'.",
    )
    jobs = Jobs(settings.queue_size)  # one queue bound for every HTTP API
    api.install(app, registry, login.credentials, jobs)
    openai_api.install(app, registry, login.credentials, jobs)
    a1111_api.install(app, registry, login.credentials, jobs)
    demo = build_ui(registry)
    lazy_session_configs()  # a new session no longer builds every component's configuration up front
    demo.queue(max_size=settings.queue_size, default_concurrency_limit=4)
    # Gradio keeps a copy of the app's config (about 1,200 objects) for each session, and every API call
    # without a session hash is a new one: at its default of 10,000 kept sessions, a flood of such calls
    # grew the heap until each full garbage collection paused the server for over a second.
    demo.state_session_capacity = settings.max_sessions
    app = gr.mount_gradio_app(
        app,
        demo,
        path="/",
        auth=login.credentials,
        # No allowed paths: results reach the browser through unguessable links (ui.publish), and the
        # outputs folder is not served. Uploads over the limit get 413 from Gradio's upload route.
        allowed_paths=[],
        max_file_size=int(settings.max_upload_mb * 1_000_000),
        footer_links=["api", "settings"],
        head=head(),  # Ctrl+Enter runs the open tab's main action
        mcp_server=settings.mcp,
        server_name=settings.host,
        server_port=settings.port,
    )
    # Gradio refuses file payloads that name paths outside its upload folder only once the Blocks count as
    # launched, which `launch()` records and `mount_gradio_app` does not: without this, any request could
    # have any server file read (a path in an Image's or a chat message's FileData). The task layer checks
    # again on its own (flux_ui/media/uploads.py).
    demo.has_launched = True
    # Repeated failed logins (the UI's /login, the HTTP APIs' 401s) from one address are slowed down.
    app.add_middleware(LoginThrottle, throttle=FailureThrottle(), paths=("/login", *API_PATHS))
    return app


def open_share_link(settings: Settings) -> str | None:
    """A public gradio.live address forwarding to our port, as `launch(share=True)` makes; None (logged)
    if the share server cannot be reached."""
    from gradio import networking

    try:
        return networking.setup_tunnel(
            local_host="127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host,
            local_port=settings.port,
            share_token=secrets.token_urlsafe(32),
            share_server_address=None,
            share_server_tls_certificate=None,
        )
    except Exception as err:  # noqa: BLE001 - any failure of the tunnel leaves the local server running
        log.error("could not open a share link (%s); serving locally only", err)
        return None


def serve(registry, login: Login) -> None:
    """Build the app and serve it until interrupted; announce the login and the share link."""
    import uvicorn

    settings = registry.settings
    app = build_app(registry, login)
    server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.05)
    if not thread.is_alive():
        raise SystemExit(f"could not serve on {settings.host}:{settings.port}")
    # What start-up made (modules, the app, the UI) lives as long as the process: out of the collector's
    # reach, full collections scan only what requests make, so they stay short.
    gc.freeze()
    # One line that says where to open it: on all interfaces (0.0.0.0), this machine's own address.
    host = "localhost" if settings.host in ("0.0.0.0", "::", "") else settings.host
    log.info("Open http://%s:%d/ in a browser (REST API docs at /docs)", host, settings.port)
    if login.generated:
        user, password = login.credentials  # type: ignore[misc]
        # A warning, so that it shows at any log level: without it nobody can log in.
        log.warning("login required (--auth USER:PASSWORD to choose one): user %r, password %r", user, password)
    if settings.share:
        url = open_share_link(settings)
        if url:
            log.warning("public share link: %s (anyone with the login can use this GPU)", url)
    try:
        thread.join()
    except KeyboardInterrupt:
        server.should_exit = True
        thread.join(timeout=10)
