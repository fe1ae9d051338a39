"""A GGUF transformer file is held once in RAM while it loads, and the app's read of it gives the weights
diffusers' own GGUF loader gives, bit for bit. On a full-width FLUX.1 [dev] transformer cut to one double
and one single block (random Q8_0 blocks, 640 MB), so that the load runs through the same paths as a real
file's and the RAM it adds stands well above the noise."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flux_ui.core.settings import Settings
from flux_ui.core.variants import VARIANTS
from flux_ui.models import quantized, single_file
from flux_ui.tiny.quantized_files import write_random_gguf

ROOT = Path(__file__).resolve().parents[1]
DEV = "black-forest-labs/FLUX.1-dev"

# Run in a fresh process, so that its peak is the load's, not that of what the test session allocated and
# freed before; the peak is the kernel's high-water mark of the process's RSS (VmHWM, reset just before the
# load), not a sample. (Not ru_maxrss: Linux carries the parent's peak into it across exec.)
LOAD = """
import os, sys
from pathlib import Path
import torch
import diffusers.loaders.single_file_model, diffusers.quantizers.gguf.utils, gguf  # imported before measuring
from diffusers import FluxTransformer2DModel
from flux_ui.core.settings import Settings
from flux_ui.core.variants import VARIANTS
from flux_ui.models import single_file

def status(key):
    line = next(l for l in open("/proc/self/status") if l.startswith(key + ":"))
    return int(line.split()[1]) * 1024

root = Path(sys.argv[1])
settings = Settings(tiny=True, tiny_dir=root, model_root=root, device="cpu", dtype=torch.bfloat16)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM to the RSS now
before = status("VmRSS")
model = single_file.transformer(settings, VARIANTS["dev"], sys.argv[2])
held = sum(t.numel() * t.element_size() for t in model.state_dict().values())
print(status("VmHWM") - before, held, flush=True)
os._exit(0)  # without waiting for the file's hash (`hashes`), which the test has no use for
"""


@pytest.fixture(scope="module")
def wide(tmp_path_factory) -> tuple[Settings, Path]:
    """Settings whose config folder describes the cut-down full-width transformer, and its Q8_0 file."""
    root = tmp_path_factory.mktemp("gguf-wide")
    config = json.loads((single_file.CONFIGS / DEV / "transformer" / "config.json").read_text())
    config |= {"num_layers": 1, "num_single_layers": 1}  # diffusers' converter needs one block of each
    (root / DEV / "transformer").mkdir(parents=True)
    (root / DEV / "transformer" / "config.json").write_text(json.dumps(config))
    path = write_random_gguf(root / "flux1-dev-Q8_0.gguf", config)
    settings = Settings(tiny=True, tiny_dir=root, model_root=root, device="cpu", dtype=torch.bfloat16)
    return settings, path


@pytest.mark.skipif(sys.platform != "linux", reason="reads the peak RSS from /proc")
def test_loading_a_gguf_file_adds_about_its_size_to_ram(wide, tmp_path):
    """Measured: the 596 MiB file added 1195 MiB (2.0x) when diffusers' `load_gguf_checkpoint` read it (its
    copy beside the memory map of the whole file), 646 MiB (1.08x) now; a 1.35 GiB file 2.70 and 1.40 GiB."""
    settings, path = wide
    size = path.stat().st_size
    assert size >= 500 * 2**20
    env = {"FLUX_UI_HASH_CACHE": str(tmp_path / "hashes.json"), "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-c", LOAD, str(settings.tiny_dir), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    added, held = (int(n) for n in run.stdout.split()[-2:])
    print(f"GGUF file {size / 2**20:.0f} MiB: the load added {added / 2**20:.0f} MiB of RSS at its peak")
    assert held >= 0.95 * size  # the weights stayed quantised (in bf16 they would be twice the file)
    assert added <= 1.2 * size, f"{added / size:.2f} x the file's size"


def test_gguf_weights_are_those_diffusers_own_loader_reads(wide, monkeypatch, tmp_path):
    """The app reads the file itself and splits the fused projections as views (see `quantized.gguf_tensors`,
    `single_file.transformer`); every tensor equals what `from_single_file` on the file makes of it, in type,
    shape and bytes, so the images are the same."""
    from diffusers import FluxTransformer2DModel
    from diffusers.quantizers.gguf.utils import GGUFParameter

    monkeypatch.setenv("FLUX_UI_HASH_CACHE", str(tmp_path / "hashes.json"))
    settings, path = wide
    ours = single_file.transformer(settings, VARIANTS["dev"], str(path)).state_dict()
    theirs = FluxTransformer2DModel.from_single_file(
        str(path),
        config=str(single_file.config_folder(settings, "dev")),
        subfolder="transformer",
        quantization_config=quantized.gguf_config(settings.dtype),
        torch_dtype=settings.dtype,
        local_files_only=True,
    ).state_dict()
    assert ours.keys() == theirs.keys()
    quantised = 0
    for name, want in theirs.items():
        got = ours[name]
        assert (type(got), got.dtype, got.shape) == (type(want), want.dtype, want.shape), name
        if isinstance(want, GGUFParameter):
            assert got.quant_type == want.quant_type, name
            quantised += 1
        assert torch.equal(torch.Tensor(got), torch.Tensor(want)), name
    assert quantised >= 10
