from pathlib import Path

import httpx
import pytest
from huggingface_hub.errors import GatedRepoError

from flux_ui.core.errors import ModelUnavailableError
from flux_ui.core.settings import Settings, parse_model_paths, settings_from_args
from flux_ui.models import sources
from flux_ui.models.sources import resolve_source


def test_resolution_order(tmp_path):
    (tmp_path / "black-forest-labs" / "FLUX.1-dev").mkdir(parents=True)
    s = Settings(model_root=tmp_path, model_paths={"schnell": "/models/schnell"})
    assert resolve_source(s, "schnell", "black-forest-labs/FLUX.1-schnell") == "/models/schnell"
    assert resolve_source(s, "dev", "black-forest-labs/FLUX.1-dev") == str(tmp_path / "black-forest-labs/FLUX.1-dev")
    assert resolve_source(s, "krea-dev", "black-forest-labs/FLUX.1-Krea-dev") == "black-forest-labs/FLUX.1-Krea-dev"


def failing(err):
    def loader():
        raise err

    return loader


def test_gated_repo_says_accept_the_license_and_set_hf_token(monkeypatch):
    monkeypatch.setattr(sources, "hub_reachable", lambda: True)  # the hub answers; the file is gated
    url = "https://huggingface.co/black-forest-labs/FLUX.1-dev/resolve/main/transformer/config.json"
    response = httpx.Response(403, request=httpx.Request("GET", url))
    err = GatedRepoError("403 Client Error: cannot access gated repo", response=response)
    with pytest.raises(ModelUnavailableError) as exc:
        sources.load("FLUX.1 [dev] transformer", "black-forest-labs/FLUX.1-dev", "--model dev=FOLDER", failing(err))
    msg = str(exc.value)
    assert "gated" in msg and "HF_TOKEN" in msg and "huggingface.co/black-forest-labs/FLUX.1-dev" in msg
    assert "--model dev=FOLDER" in msg


def test_offline_and_not_cached_is_explained(monkeypatch, tmp_path):
    """A real diffusers load with the hub switched off and an empty cache."""
    from diffusers import FluxTransformer2DModel

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    repo = "black-forest-labs/FLUX.1-Krea-dev"
    with pytest.raises(ModelUnavailableError) as exc:
        sources.load(
            "FLUX.1 Krea [dev] transformer",
            repo,
            "--model krea-dev=FOLDER",
            lambda: FluxTransformer2DModel.from_pretrained(repo, subfolder="transformer", cache_dir=tmp_path),
        )
    assert "HF_HUB_OFFLINE" in str(exc.value) and repo in str(exc.value)


def test_missing_local_folder():
    with pytest.raises(ModelUnavailableError, match="folder does not exist"):
        sources.load("VAE", "/no/such/folder", "--model shared=FOLDER", failing(OSError("nope")))


def test_cli_and_environment(monkeypatch):
    monkeypatch.setenv("FLUX_UI_PORT", "9000")
    monkeypatch.setenv("FLUX_UI_MAX_STEPS", "60")
    s = settings_from_args(["--tiny", "--tiny-dir", "/tmp/t", "--model", "dev=/m/dev", "--device", "cpu"])
    assert s.port == 9000 and s.max_steps == 60 and s.tiny and s.model_root == Path("/tmp/t")
    assert s.model_paths == {"dev": "/m/dev"} and s.host == "127.0.0.1" and s.device == "cpu"
    assert settings_from_args(["--port", "7000"]).port == 7000


def test_bad_model_flag():
    with pytest.raises(ValueError, match="NAME=SOURCE"):
        parse_model_paths(["dev"])


def test_an_unreachable_hub_is_said_at_once(monkeypatch, tmp_path):
    """No network and a model not in the cache: the message comes within seconds, not after the hub
    client's retries; a model in the cache is still loaded (the loader runs)."""
    import time

    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    sources._hub_answers.clear()
    start = time.monotonic()
    with pytest.raises(ModelUnavailableError) as exc:
        sources.load(
            "FLUX.1 [dev] transformer", "black-forest-labs/FLUX.1-dev", "--model dev=FOLDER", failing(OSError())
        )
    assert time.monotonic() - start < 10
    msg = str(exc.value)
    assert "did not answer" in msg and "not in the local hub cache" in msg and "--model dev=FOLDER" in msg

    snapshot = tmp_path / "models--org--cached" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text("{}")
    (tmp_path / "models--org--cached" / "refs").mkdir()
    (tmp_path / "models--org--cached" / "refs" / "main").write_text("abc123")
    assert sources.load("cached model", "org/cached", "--model x=FOLDER", lambda: "loaded") == "loaded"
