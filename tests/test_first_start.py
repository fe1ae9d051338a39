"""A first start says what the first Generate will need before anyone presses it (a download and its size,
no weights and no hub, no GPU), in `/status`, the line above the tabs and the log; and `/status` answers
at once while a load holds the registry. The hub is a real local server (`test_downloads.Hub`) or none."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace

import httpx
import pytest
import test_downloads
import uvicorn
from conftest import free_port, running_app
from test_downloads import image

from flux_ui.models import first_start, sources
from flux_ui.models.registry import Registry
from flux_ui.serving.server import Login, build_app

DEV = "black-forest-labs/FLUX.1-dev"
SCHNELL = "black-forest-labs/FLUX.1-schnell"
hub = test_downloads.hub  # the fixture of a local hub server (a real HTTP server over the tiny models)
# The fields `/status` had before it stopped waiting for the registry: clients read them.
STATUS_FIELDS = {"policy", "policy_reason", "speed", "memory", "sizes_mib", "device", "dtype", "shared"}
STATUS_FIELDS |= {"transformers", "aux", "loras", "load_counts", "startup", "downloads"}
MEMORY_FIELDS = {"gpu", "ram", "warm_tier_mib", "ram_budget_gib", "gpu_transformers", "transformer_cache"}


def wait_checked(url: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while (status := httpx.get(url + "status", timeout=10).json())["first_start"]["state"] != first_start.DONE:
        assert time.monotonic() < deadline, status["first_start"]
        time.sleep(0.2)
    return status


def test_an_offline_first_start_says_so_in_status_the_page_and_the_log(browser, tiny_dir, tmp_path):
    env = {
        "HF_HOME": str(tmp_path / "hf-home"),  # an empty hub cache: no weights anywhere
        "HF_HUB_CACHE": str(tmp_path / "hf-home" / "hub"),
        "HF_HUB_OFFLINE": "1",
        "HF_TOKEN": None,
        "FLUX_UI_MODEL_ROOT": None,
        "FLUX_UI_MODELS_DIR": None,
    }
    with running_app(tiny_dir, tmp_path, tiny=False, env=env) as (url, log):
        status = wait_checked(url)
        said = status["first_start"]
        offline = (
            "No weights for FLUX.1 [dev] and the hub cannot be reached (offline: HF_HUB_OFFLINE=1): point "
            "--models-dir at a ComfyUI or Forge folder, or --model dev=PATH, --model t5=PATH, --model clip=PATH "
            "and --model vae=PATH."
        )
        assert said["notes"] == [offline, first_start.NO_GPU], said
        assert said["hub"] == "offline" and said["gpu"] is False and said["variant"] == "dev"
        assert [m["what"] for m in said["missing"]] == ["the FLUX.1 [dev] transformer", "T5-XXL", "CLIP-L", "the VAE"]
        assert said["download_bytes"] == 33_734_000_000 and said["message"] == " ".join(said["notes"])
        assert set(status) >= STATUS_FIELDS and set(status["memory"]) >= MEMORY_FIELDS and status["busy"] is False

        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        line = page.locator("#startup")
        line.filter(has_text="No GPU").wait_for(timeout=60_000)
        shown = line.inner_text()
        assert "No weights for FLUX.1 [dev] and the hub cannot be reached (offline: HF_HUB_OFFLINE=1)" in shown
        assert "images run on the CPU, very slowly" in shown
        # Above the tabs, where a person looks first.
        assert page.evaluate(
            "() => document.querySelector('#startup').getBoundingClientRect().bottom"
            " <= document.querySelector('.tab-wrapper, [role=tablist]').getBoundingClientRect().top"
        )
        page.close()
    told = [line for line in log.read_text().splitlines() if "first start:" in line]
    assert len(told) == 2 and "No weights for FLUX.1 [dev]" in told[0] and "No GPU" in told[1], told


@pytest.fixture
def hub_settings(hub, settings, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return replace(settings, tiny=False, model_root=None)


def test_a_reachable_hub_first_start_says_what_the_first_generate_downloads(hub, hub_settings, monkeypatch):
    record = first_start.FirstStart()
    started = time.monotonic()
    record.start(hub_settings, "dev").join(timeout=30)
    assert time.monotonic() - started < 10
    said = record.snapshot()
    assert said["hub"] == "reachable" and said["download_bytes"] == 33_734_000_000
    assert said["notes"][0] == (
        f"FLUX.1 [dev] is not on this machine: the first Generate downloads about 33.7 GB from {DEV} "
        f"(gated: needs a Hugging Face token with access; set HF_TOKEN) and {SCHNELL}."
    )
    assert said["notes"][1:] == [first_start.NO_GPU]
    assert hub.gets == []  # nothing downloaded, only the hub asked whether it is there

    monkeypatch.setenv("HF_TOKEN", "hf_made_up")
    assert (
        f"(gated: the token's account must have accepted the license at https://huggingface.co/{DEV})"
        in (first_start.assess(hub_settings, "dev")["notes"][0])
    )
    monkeypatch.delenv("HF_TOKEN")

    Registry(hub_settings).shared()  # the text encoders and the VAE come down: only the transformer is left
    said = first_start.assess(hub_settings, "dev")
    assert [m["what"] for m in said["missing"]] == ["the FLUX.1 [dev] transformer"]
    assert said["notes"][0] == (
        "The FLUX.1 [dev] transformer is not on this machine: the first Generate downloads about 23.8 GB from "
        f"{DEV} (gated: needs a Hugging Face token with access; set HF_TOKEN)."
    )
    image(Registry(hub_settings))  # the first Generate: all of it is in the cache after
    said = first_start.assess(hub_settings, "dev")
    assert said["missing"] == [] and said["hub"] is None and said["notes"] == [first_start.NO_GPU]


def test_an_unreachable_hub_is_said_at_once_and_local_files_need_no_hub(hub_settings, tiny_dir, monkeypatch):
    from huggingface_hub import constants

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setattr(constants, "ENDPOINT", dead)
    monkeypatch.setattr(sources, "_hub_answers", {})
    said = first_start.assess(hub_settings, "schnell")
    assert said["hub"] == "unreachable", said
    assert said["notes"][0].startswith(f"No weights for FLUX.1 [schnell] and the hub cannot be reached ({dead} did")

    # Everything local (the shared parts as files of a folder, [schnell] as a folder): the hub is never asked.
    monkeypatch.setattr(sources, "hub_reachable", lambda: pytest.fail("the hub was asked"))
    local = replace(hub_settings, model_root=tiny_dir)
    assert first_start.assess(local, "schnell")["notes"] == [first_start.NO_GPU]
    assert first_start.assess(replace(local, device="cuda"), "schnell")["notes"] == []
    gone = replace(local, model_paths={"schnell": str(tiny_dir / "no-such.safetensors")})
    assert first_start.assess(gone, "schnell")["notes"][0] == (
        f"The FLUX.1 [schnell] transformer: {tiny_dir / 'no-such.safetensors'} does not exist; check "
        "--model schnell=PATH."
    )


@pytest.fixture
def served(hub_settings):
    """The whole app on a real uvicorn in this process, over a registry that reads from the local hub."""
    registry = Registry(replace(hub_settings, port=free_port()))
    server = uvicorn.Server(
        uvicorn.Config(
            build_app(registry, Login(None)), host="127.0.0.1", port=registry.settings.port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{registry.settings.port}/", registry
    server.should_exit = server.force_exit = True
    thread.join(10)


def test_status_answers_within_a_second_while_a_download_holds_the_registry(hub, served):
    from gradio_client import Client

    url, registry = served
    client = Client(url, verbose=False)  # before the load: a client's set-up is not what is timed
    hub.slow_s = 0.25  # each 16 kB of each file: the download lasts long enough to be watched
    loading = threading.Thread(target=registry.shared, daemon=True)
    loading.start()
    try:
        deadline = time.monotonic() + 60
        while not registry.downloads.active:
            assert time.monotonic() < deadline and loading.is_alive(), "the download never started"
            time.sleep(0.05)
        time.sleep(0.5)
        assert not registry._lock.acquire(blocking=False)  # the load holds the registry's lock
        rest = lambda: httpx.get(url + "status", timeout=5).json()  # noqa: E731
        seen = []  # the download under way, as /status shows it (None between two files)
        for ask in (
            rest,
            lambda: client.predict(api_name="/status"),  # the UI's endpoint, through gradio_client
            lambda: httpx.get(url + "health", timeout=5).json(),  # reads the same status
        ):
            started = time.monotonic()
            answer = ask()
            assert time.monotonic() - started < 1.0, answer
            assert loading.is_alive()  # answered during the load, not after it
            if ask is rest and answer["downloads"]["now"]:
                seen, status = [answer["downloads"]["now"]], answer
        while not seen and loading.is_alive():  # polled while the load lasts (a busy machine slows it)
            status = rest()
            seen = [status["downloads"]["now"]] if status["downloads"]["now"] else []
        assert seen and seen[0]["repo"] == SCHNELL and 0 <= seen[0]["done"] <= seen[0]["total"], seen
        assert status["busy"] is True and status["shared"] == {} and status["snapshot_age_s"] >= 0.5
        assert set(status) >= STATUS_FIELDS and set(status["memory"]) >= MEMORY_FIELDS
    finally:
        hub.slow_s = 0.0
        loading.join(120)
    status = registry.status()
    assert status["busy"] is False and set(status["shared"]) == {"text_encoder", "text_encoder_2", "vae"}
    assert json.dumps(status)  # JSON as it is served


def test_status_during_a_run_shows_the_models_the_run_holds(registry):
    holding, done = threading.Event(), threading.Event()

    def run():
        with registry.pipeline("schnell"):
            holding.set()
            done.wait(30)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert holding.wait(120)
        started = time.monotonic()
        status = registry.status()
        assert time.monotonic() - started < 1.0
        assert status["busy"] is True
        assert [t["variant"] for t in status["transformers"]] == ["schnell"] and len(status["shared"]) == 3
        assert status["load_counts"]["transformer:schnell"] == 1
    finally:
        done.set()
        thread.join(30)
    assert registry.status()["busy"] is False


def test_a_failing_status_copy_never_breaks_the_registry(registry, monkeypatch):
    def broken():
        raise RuntimeError("no copy today")

    before = registry.status()
    monkeypatch.setattr(registry._lock, "take", broken)
    registry.free_memory()  # takes and lets go of the lock: the copy fails, the call does not
    assert registry.status()["transformers"] == before["transformers"]
