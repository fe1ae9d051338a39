"""Serving: who must log in, the app's routes (REST beside the UI, MCP), and the Hugging Face Space setup."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from flux_ui.core.gpu import on_gpu
from flux_ui.core.settings import Settings, parse_auth, settings_from_args
from flux_ui.models.registry import Registry
from flux_ui.serving.server import GENERATED_USER, Login, build_app, resolve_auth

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("settings", "login"),
    [
        (Settings(), None),  # loopback, no share: nobody else can reach it
        (Settings(host="localhost"), None),
        (Settings(host="::1"), None),
        (Settings(share=True), "generated"),
        (Settings(host="0.0.0.0"), "generated"),
        (Settings(host="192.168.1.20"), "generated"),
        (Settings(host="0.0.0.0", no_auth=True), None),  # the explicit opt-out
        (Settings(share=True, no_auth=True), None),
        (Settings(share=True, auth=("me", "pw")), ("me", "pw")),
        (Settings(host="0.0.0.0", on_space=True), None),  # the Space's own visibility decides
    ],
)
def test_who_must_log_in(settings, login):
    got = resolve_auth(settings)
    if login == "generated":
        user, password = got.credentials
        assert got.generated and user == GENERATED_USER and len(password) >= 16
        assert resolve_auth(settings).credentials != got.credentials  # a new password each start
    else:
        assert got.credentials == login and not got.generated


def test_auth_flags():
    assert settings_from_args(["--auth", "ann:a:b"]).auth == ("ann", "a:b")
    assert settings_from_args(["--no-auth", "--api-key", "k", "--mcp"]).no_auth
    for bad in ("nocolon", ":pw", "user:"):
        with pytest.raises(ValueError, match="--auth"):
            parse_auth(bad)


@pytest.fixture(scope="module")
def served(tiny_dir, tmp_path_factory):
    """The whole app as app.py serves it (REST + UI + MCP), with a login, in process."""
    settings = Settings(
        tiny=True, tiny_dir=tiny_dir, model_root=tiny_dir, outputs_dir=tmp_path_factory.mktemp("out"), mcp=True
    )
    app = build_app(Registry(settings), Login(("ann", "pw")))
    with TestClient(app) as client:  # runs the lifespan: Gradio's startup and the MCP server's
        yield client


def test_rest_routes_sit_beside_the_ui(served):
    assert served.get("/health").json()["status"] == "healthy"
    spec = served.get("/openapi.json").json()
    assert {"/health", "/generate"} <= set(spec["paths"])
    assert "GenerateRequest" in spec["components"]["schemas"]
    assert served.get("/docs").status_code == 200
    # The UI's login guards Gradio's API, and opens the REST API as HTTP Basic.
    assert served.get("/config").status_code == 401
    job = {"task": "text_to_image", "prompt": "x", "resolution": "64x64", "steps": 1}
    assert served.post("/generate", json=job).status_code == 401
    assert served.post("/generate", json=job, auth=("ann", "pw")).status_code == 200
    assert served.post("/login", data={"username": "ann", "password": "pw"}).status_code == 200
    assert served.get("/config").status_code == 200


def test_mcp_lists_the_tasks_as_tools(served):
    served.post("/login", data={"username": "ann", "password": "pw"})
    schema = served.get("/gradio_api/mcp/schema")
    assert schema.status_code == 200, schema.text
    names = {tool["name"] for tool in schema.json()}
    # Gradio names a tool after its Python function: text to image, Kontext, Redux, VQA.
    assert {"generate", "edit", "variations", "vqa", "describe_as_prompt"} <= names


def test_mcp_without_its_extra_says_what_to_install(monkeypatch, settings):
    monkeypatch.setitem(sys.modules, "mcp", None)  # as if gradio[mcp] were not installed
    with pytest.raises(SystemExit, match=r"gradio\[mcp\]"):
        build_app(Registry(replace(settings, mcp=True)), Login(None))


def test_space_front_matter():
    text = (ROOT / "README.md").read_text()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert (meta["sdk"], meta["app_file"], meta["sdk_version"]) == ("gradio", "app.py", "6.31.0")
    assert (ROOT / meta["app_file"]).is_file()
    assert "black-forest-labs/FLUX.1-schnell" in meta["preload_from_hub"]  # the shared encoders and VAE
    assert meta["license"] and meta["short_description"]


def test_gpu_decorator_is_spaces_or_a_no_op(monkeypatch):
    import spaces  # installed (requirements.txt): off ZeroGPU its decorator returns the function itself

    def job(x):
        return x + 1

    assert spaces.GPU(job) is job and on_gpu(job)(1) == 2
    monkeypatch.setitem(sys.modules, "spaces", None)  # where it is not installed
    assert on_gpu(job) is job


def test_task_entry_points_carry_the_gpu_decorator():
    """Each task the UI and the REST API call is decorated (a ZeroGPU Space attaches the GPU there)."""
    from flux_ui.tasks import control, fill, kontext, redux, text_to_image, upscale, vqa

    for fn in (
        text_to_image.text_to_image,
        upscale.upscale,
        kontext.kontext_edit,
        redux.redux_variation,
        fill.fill,
        control.control,
        vqa.answer_question,
    ):
        source = Path(fn.__code__.co_filename).read_text()
        assert f"@on_gpu\ndef {fn.__name__}(" in source
