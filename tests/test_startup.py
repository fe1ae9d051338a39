"""Restart to first image on tiny models: --preload loads and warms the default variant so that the first
request loads nothing, its phases are recorded for the UI, and --compile-cache is where torch's compile
caches go."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from conftest import running_app

from flux_ui.core.settings import settings_from_args
from flux_ui.models import compile_cache, startup
from flux_ui.tasks import preload
from flux_ui.tasks.text_to_image import TextToImageParams, text_to_image, validate_text_to_image


def test_preload_makes_the_first_request_load_nothing(registry):
    assert registry.startup.snapshot()["state"] == startup.IDLE and registry.startup.line() == ""
    preload.start(registry).join(timeout=600)
    record = registry.startup.snapshot()
    assert record["state"] == startup.READY, record
    assert [p["what"].split(" ")[0] for p in record["phases"]] == ["loading", "loading"]  # speed off: no warm-up
    loads = dict(registry.load_counts)
    assert loads["transformer:dev"] == 1 and len(loads) > 1  # the shared parts are counted too
    job = validate_text_to_image(TextToImageParams("a fox", width=64, height=64, steps=2), registry.settings)
    result = text_to_image(registry, job)
    assert dict(registry.load_counts) == loads  # nothing loaded for the first request
    assert result.timings["load"] < 5
    assert registry.status()["startup"]["state"] == "ready"
    assert registry.startup.line().startswith("**Ready** in")


def test_preload_warm_up_runs_exact_and_fast_images(registry):
    preload.preload(registry, warm=True)
    record = registry.startup.snapshot()
    assert record["state"] == startup.READY, record
    whats = [p["what"] for p in record["phases"]]
    assert whats[2:] == ["warming up: a one-step image", "warming up fast mode"]  # speed off: nothing compiles


def test_a_failed_preload_is_recorded_not_raised(registry, monkeypatch):
    def broken():
        raise OSError("disk on fire")

    monkeypatch.setattr(registry, "shared", broken)
    preload.preload(registry)
    record = registry.startup.snapshot()
    assert record["state"] == startup.FAILED and "disk on fire" in record["error"]
    assert "Start-up preload failed" in registry.startup.line()


def test_compile_cache_setting(tmp_path, monkeypatch):
    assert settings_from_args(["--outputs-dir", str(tmp_path)]).compile_cache_dir == tmp_path / ".compile-cache"
    chosen = tmp_path / "kernels"
    assert settings_from_args(["--compile-cache", str(chosen)]).compile_cache_dir == chosen
    monkeypatch.setenv(compile_cache.ENV, os.environ.get(compile_cache.ENV, str(tmp_path / "before")))
    assert compile_cache.use(chosen) == chosen.resolve() and chosen.is_dir()
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    assert cache_dir() == str(chosen.resolve())
    compiled = torch.compile(lambda x: torch.sin(x) * 3 + 1.25)  # a graph of its own: nothing cached yet
    compiled(torch.ones(8))
    assert compile_cache.entries(chosen) > 0  # inductor wrote its cache there


def test_app_preload_shows_its_phases_and_keeps_the_compile_cache(tiny_dir, tmp_path):
    from gradio_client import Client

    cache = tmp_path / "kernels"
    with running_app(tiny_dir, tmp_path, "--preload", "--compile-cache", str(cache)) as (url, log):
        client = Client(url, verbose=False)
        deadline = time.monotonic() + 300
        while (status := client.predict(api_name="/status"))["startup"]["state"] == "running":
            assert time.monotonic() < deadline, status["startup"]
            time.sleep(1)
        assert status["startup"]["state"] == "ready", status["startup"]
        loads = status["load_counts"]
        assert loads["transformer:dev"] == 1
        client.predict(prompt="a fox", width=64, height=64, steps=2, api_name="/text_to_image")
        assert client.predict(api_name="/status")["load_counts"] == loads
        text = Path(log).read_text()
    assert cache.is_dir() and f"torch compile caches in {cache.resolve()}" in text
    assert "start-up ready" in text


@pytest.fixture(autouse=True)
def _keep_inductor_cache_env(monkeypatch):
    """compile_cache.use sets a process-wide variable: restore it after each test."""
    monkeypatch.setenv(compile_cache.ENV, os.environ.get(compile_cache.ENV, ""))
    if not os.environ[compile_cache.ENV]:
        monkeypatch.delenv(compile_cache.ENV)
