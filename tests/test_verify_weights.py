"""--verify-weights: single model files checked against a manifest, the hub's record (a hub-cache blob's
name, the ETag `hf download --local-dir` leaves) or their first use, refused on a mismatch, and the result
shown in the Models tab."""

import hashlib
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from flux_ui.core.errors import ModelUnavailableError
from flux_ui.core.settings import settings_from_args
from flux_ui.models import file_report, files, hashes, verify
from flux_ui.models.registry import Registry
from flux_ui.tiny.files import write_comfyui_tree
from flux_ui.ui.residency import files_markdown


@pytest.fixture(autouse=True)
def fresh_process(tmp_path, monkeypatch):
    """Each test as a new process: no verdicts or hashes yet, its own first-use record."""
    monkeypatch.setenv("FLUX_UI_VERIFY_RECORD", str(tmp_path / "verified.json"))
    monkeypatch.setenv("FLUX_UI_HASH_CACHE", str(tmp_path / "hashes.json"))
    monkeypatch.setattr(verify, "_verdicts", {})
    monkeypatch.setattr(hashes, "_futures", {})
    monkeypatch.setattr(hashes, "_fresh", set())


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tamper(path: Path) -> None:
    """Change one byte near the end (tensor data, not the header), as corruption would."""
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_hub_cache_blob_is_checked_against_its_name(tmp_path):
    data = b"weights" * 1000
    blob = tmp_path / "hub/models--org--repo/blobs" / sha(data)
    blob.parent.mkdir(parents=True)
    blob.write_bytes(data)
    link = tmp_path / "ComfyUI/models/unet/flux1-dev.safetensors"
    link.parent.mkdir(parents=True)
    link.symlink_to(blob)
    verdict = verify.check(link)
    assert (verdict.status, verdict.expected) == ("ok", sha(data)) and "hub's record" in verdict.source
    verify._verdicts.clear()
    tamper(blob)  # the blob rotted on disk: its content no longer has its name's hash
    assert verify.check(link).status == "mismatch"


def test_a_local_dir_download_is_checked_against_its_etag(tmp_path):
    data = b"vae" * 999
    target = tmp_path / "models/vae/ae.safetensors"
    target.parent.mkdir(parents=True)
    target.write_bytes(data)
    meta = tmp_path / "models/vae/.cache/huggingface/download/ae.safetensors.metadata"
    meta.parent.mkdir(parents=True)
    meta.write_text(f"0123456789abcdef\n{sha(data)}\n{1.0}\n")  # huggingface_hub's layout: commit, etag, time
    assert verify.check(target).status == "ok"
    verify._verdicts.clear()
    tamper(target)
    verdict = verify.check(target)
    assert verdict.status == "mismatch" and "download of commit 01234567" in verdict.source
    assert verdict.describe().startswith("MISMATCH: sha256 ")


def test_a_manifest_comes_first(tmp_path):
    target = tmp_path / "t5xxl_fp16.safetensors"
    target.write_bytes(b"t5" * 500)
    manifest = tmp_path / "SHA256SUMS"
    manifest.write_text(f"{'0' * 64}  other.safetensors\n{sha(target.read_bytes())} *t5xxl_fp16.safetensors\n")
    verdict = verify.check(target, manifest)
    assert (verdict.status, verdict.source) == ("ok", "the manifest SHA256SUMS")
    verify._verdicts.clear()
    manifest.write_text(f"{'0' * 64}  {target}\n")
    assert verify.check(target, manifest).status == "mismatch"


def test_first_use_is_recorded_and_later_changes_refused(tmp_path):
    target = tmp_path / "clip_l.safetensors"
    target.write_bytes(b"clip" * 400)
    assert verify.check(target).status == "recorded"
    assert str(target) in verify.record_file().read_text()
    verify._verdicts.clear()
    assert verify.check(target).status == "ok"
    verify._verdicts.clear()
    tamper(target)
    verdict = verify.check(target)
    assert verdict.status == "mismatch" and str(verify.record_file()) in verdict.fix()


def test_the_option_on_the_command_line(tmp_path):
    assert settings_from_args(["--verify-weights"]).verify_weights
    assert settings_from_args(["--verify-weights"]).weights_manifest is None
    assert not settings_from_args([]).verify_weights
    (tmp_path / "sums").write_text("")
    s = settings_from_args(["--verify-weights", str(tmp_path / "sums")])
    assert s.verify_weights and s.weights_manifest == tmp_path / "sums"
    with pytest.raises(ValueError, match="--verify-weights: the manifest"):
        settings_from_args(["--verify-weights", str(tmp_path / "missing")])


def test_a_changed_transformer_file_is_refused_and_the_models_tab_says_so(settings, tiny_dir, tmp_path):
    tree = write_comfyui_tree(tmp_path / "ComfyUI", tiny_dir)
    s = replace(settings, models_dirs=(tree,), verify_weights=True)
    Registry(s).transformer("dev")  # first use: recorded
    rows = verify.annotate(file_report.report(files.scan([tree], fresh=True)), True)
    by_name = {Path(r["file"]).name: r["verified"] for r in rows}
    assert by_name["flux1-dev.safetensors"].startswith("sha256 recorded at first use")
    assert by_name["ae.safetensors"] == "checked when first loaded"

    target = tree / "models/unet/flux1-dev.safetensors"
    tamper(target)
    os.utime(target, (1e9, 1e9))
    verify._verdicts.clear()  # a later start
    with pytest.raises(ModelUnavailableError, match="MISMATCH") as exc:
        Registry(s).transformer("dev")
    assert str(target) in str(exc.value) and "download it again" in str(exc.value)
    rows = verify.annotate(file_report.report(files.scan([tree], fresh=True)), True)
    assert "Refused: 1 file(s)" in files_markdown(rows) and "`flux1-dev.safetensors`" in files_markdown(rows)
    shutil.rmtree(tree)
