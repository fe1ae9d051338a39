"""The Models tab's "on the GPU" column: what a file's weights take under the memory policy and speed profile,
from its size and format (full-size FLUX.1 [dev] sizes; the ratios are the ones measured on an H200)."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from flux_ui.core.settings import Settings
from flux_ui.models import file_report
from flux_ui.models.files import FoundFile
from flux_ui.ui.residency import files_markdown


def found(fmt: str, size: float, kind: str = "transformer") -> FoundFile:
    return FoundFile(Path(f"models/unet/flux1-dev-{fmt}.x"), kind, int(size), fmt, "dev", "dev", "bfl")


CUDA = Settings(device="cuda", dtype=torch.bfloat16)  # sizes only: nothing runs on it


@pytest.mark.parametrize(
    ("settings", "file", "cell"),
    [
        (CUDA, found("bf16", 23.8e9), "22.2 GiB (bf16)"),
        (replace(CUDA, memory_policy="fp8-24gb"), found("bf16", 23.8e9), "11.5 GiB (float8 under fp8-24gb)"),
        (CUDA, found("fp32", 47.6e9), "22.2 GiB (bf16)"),
        (replace(CUDA, memory_policy="fp8-24gb"), found("fp8-scaled", 11.9e9), "11.1 GiB (float8, as stored)"),
        (replace(CUDA, speed="fp8"), found("fp8-scaled", 11.9e9), "11.1 GiB (float8, as stored)"),
        (CUDA, found("fp8-scaled", 11.9e9), "22.2 GiB (bf16)"),  # dequantised where float8 does not run
        (CUDA, found("gguf-Q8_0", 12.7e9), "11.8 GiB (kept quantised)"),
        (replace(CUDA, memory_policy="fp8-24gb"), found("gguf-Q4_K", 6.8e9), "6.3 GiB (kept quantised)"),
        (replace(CUDA, memory_policy="offload-12gb"), found("bf16", 23.8e9), "a block at a time, streamed from RAM"),
        (replace(CUDA, memory_policy="offload-12gb"), found("bf16", 335e6, "vae"), "0.3 GiB (bf16)"),
        (replace(CUDA, memory_policy="fp8-24gb"), found("bf16", 335e6, "vae"), "0.3 GiB (bf16)"),  # VAE stays bf16
        (Settings(device="cpu"), found("bf16", 23.8e9), "in RAM (no GPU)"),
        (CUDA, found("gguf-Q8_0", 5.06e9, "t5xxl"), "8.9 GiB (bf16)"),  # a T5 GGUF is dequantised as read
    ],
)
def test_what_a_file_costs_on_the_gpu(settings, file, cell):
    assert file_report.gpu_cost(file, settings).startswith(cell)


def test_nf4_is_kept_in_4_bits_only_where_cuda_runs():
    cell = file_report.gpu_cost(found("nf4", 6.7e9), CUDA)
    if torch.cuda.is_available():
        assert cell == "6.2 GiB (kept in 4 bits)"
    else:  # a CUDA setting on a machine without CUDA: unpacked, as the loader would
        assert cell == "20.7 GiB (unpacked to bf16)"


def test_a_file_too_large_for_the_gpu_names_the_policy_that_fits(monkeypatch):
    """Under the 40 GB class's policy on a 16 GiB card the bf16 transformer does not fit: the cell says so and
    what to start with instead; a GGUF Q4_K file fits. (The card's size is the one thing set here.)"""
    monkeypatch.setattr(file_report.memory, "device_usage", lambda device: {"total_gib": 15.6})
    cell = file_report.gpu_cost(found("bf16", 23.8e9), CUDA)
    assert "does not fit this GPU's 16 GiB: start with --memory-policy offload-12gb" in cell
    assert "does not fit" not in file_report.gpu_cost(found("gguf-Q4_K", 6.8e9), CUDA)


def test_the_models_tab_shows_the_column():
    files_found = [found("gguf-Q8_0", 12.7e9), FoundFile(Path("x.ckpt"), "skipped", 10, "pickle", reason="a pickle")]
    rows = file_report.report(files_found, CUDA)
    assert [r["on the GPU"] for r in rows] == ["11.8 GiB (kept quantised)", ""]
    table = files_markdown(rows)
    assert "| on the GPU |" in table and "11.8 GiB (kept quantised)" in table
