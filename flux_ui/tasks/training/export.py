"""The trained LoRA as a file like any other: `.safetensors` in the first LoRA folder, its settings beside it.

Key layout: diffusers' (`transformer.<module>.lora_A.weight` / `lora_B.weight`, as `FluxPipeline.
save_lora_weights` writes from `get_peft_model_state_dict`). diffusers and PEFT load it as it is; ComfyUI
and Forge (whose LoRA code is ComfyUI's) map diffusers FLUX names to their own (ComfyUI's
`comfy.utils.flux_to_diffusers`, used by `comfy.lora.model_lora_keys_unet`), so no conversion is needed;
kohya's layout (`lora_unet_double_blocks_0_img_attn_qkv`) would fuse q, k and v into one matrix, which a
LoRA trained on separate projections cannot be written as without raising its rank. alpha equals the rank,
so loaders that read no alpha key (scale 1) and those that do agree.

The header carries what the ecosystem reads: `modelspec.*` (Stability's model spec: title, architecture,
trigger phrase, resolution, date), kohya's `ss_*` fields (tag frequencies, steps, rank, base model), and
diffusers' `lora_adapter_metadata` (the LoraConfig).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import torch

from flux_ui import __version__
from flux_ui.tasks.training.model import TARGET_MODULES
from flux_ui.tasks.training.params import TrainJob

log = logging.getLogger(__name__)

ARCHITECTURE = "flux-1-dev/lora"  # modelspec's name for FLUX.1 [dev] LoRAs, as kohya writes it
BASE_MODEL = "black-forest-labs/FLUX.1-dev"


def tag_frequency(job: TrainJob) -> dict[str, dict[str, int]]:
    """kohya's `ss_tag_frequency`: per dataset (one here, the run's name), how many captions hold each
    comma-separated tag; the trigger word is in all of them."""
    counts: Counter[str] = Counter()
    for prompt in job.prompts:
        counts.update({t.strip() for t in prompt.split(",") if t.strip()})
    return {job.name: dict(counts.most_common())}


def header(job: TrainJob, steps: int, loss: float | None) -> dict[str, str]:
    """The `__metadata__` strings of the LoRA file."""
    now = datetime.now(UTC).replace(microsecond=0).isoformat()
    config = {
        "r": job.rank,
        "lora_alpha": job.rank,
        "target_modules": TARGET_MODULES,
        "init_lora_weights": "gaussian",
        "use_dora": False,
        "lora_bias": False,
    }
    meta = {
        "format": "pt",
        "lora_adapter_metadata": json.dumps({f"transformer.{k}": v for k, v in config.items()}, sort_keys=True),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": ARCHITECTURE,
        "modelspec.implementation": "https://github.com/black-forest-labs/flux",
        "modelspec.title": job.name,
        "modelspec.date": now,
        "modelspec.resolution": f"{job.resolution}x{job.resolution}",
        "modelspec.trigger_phrase": job.trigger,
        "modelspec.description": f"LoRA trained with FLUX UI {__version__} on {len(job.images)} images",
        "ss_base_model_version": "flux1",
        "ss_sd_model_name": BASE_MODEL,
        "ss_network_module": "peft.lora (diffusers layout)",
        "ss_network_dim": str(job.rank),
        "ss_network_alpha": str(job.rank),
        "ss_num_train_images": str(len(job.images)),
        "ss_steps": str(steps),
        "ss_max_train_steps": str(job.steps),
        "ss_learning_rate": str(job.learning_rate),
        "ss_resolution": f"({job.resolution}, {job.resolution})",
        "ss_batch_size_per_device": str(job.preset.batch),
        "ss_optimizer": job.preset.optimizer,
        "ss_seed": str(job.seed),
        "ss_output_name": job.name,
        "ss_tag_frequency": json.dumps(tag_frequency(job)),
        "trigger_words": job.trigger,
        "flux_ui.preset": job.preset.name,
        "flux_ui.base_precision": job.preset.base,
    }
    if loss is not None:
        meta["flux_ui.final_loss"] = f"{loss:.6f}"
    return meta


def write_new(path: Path, data: bytes) -> None:
    """Write `data` to a file that must not exist yet ("xb"); a failed write removes its half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except FileExistsError:
        raise
    except OSError:
        path.unlink(missing_ok=True)
        raise


def save_lora(job: TrainJob, state: dict[str, torch.Tensor], steps: int, loss: float | None, timings: dict) -> Path:
    """Write the LoRA (`state` in PEFT's naming, as `model.lora_state` gives it) in bf16 to `job.output`,
    and `<name>.json` beside it with the run's settings; return the LoRA's path."""
    from safetensors.torch import save

    tensors = {f"transformer.{k}": v.to(torch.bfloat16).contiguous() for k, v in state.items()}
    write_new(job.output, save(tensors, metadata=header(job, steps, loss)))
    settings = {
        **job.settings_json(),
        "preset_settings": asdict(job.preset),
        "steps_done": steps,
        "final_loss": loss,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "run_folder": str(job.run_dir),
        "flux_ui": __version__,
    }
    sidecar = job.output.with_suffix(".json")
    sidecar.unlink(missing_ok=True)  # an older run's settings under a name freed since
    write_new(sidecar, json.dumps(settings, indent=2).encode())
    log.info("LoRA %s written (%d tensors, %d steps)", job.output, len(tensors), steps)
    return job.output
