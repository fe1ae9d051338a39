"""FLUX UI: parse settings, build the registry, serve the web UI and the REST API. See README.md for the options."""

from __future__ import annotations

import logging
import os
import sys

from flux_ui.core.settings import settings_from_args

log = logging.getLogger("flux_ui")


class NoTorchvisionFallback(logging.Filter):
    """transformers warns, for each image processor, that it "requires torchvision" and falls back to its
    Pillow version: the Pillow versions are the ones this app means to use (torchvision is not among its
    requirements), so the warning asks nothing of the user."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed); falling back" not in record.getMessage()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("transformers.utils.import_utils").addFilter(NoTorchvisionFallback())
    if "LOCAL_RANK" in os.environ:  # started by torchrun (--context-parallel): "cuda" is this process's GPU
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    settings = settings_from_args(argv)

    from flux_ui.models.registry import Registry
    from flux_ui.serving.server import resolve_auth, serve

    lead = True  # the process that serves (with --context-parallel, torchrun's process 0)
    if settings.context_parallel > 1:
        from flux_ui.models import context_parallel

        context_parallel.init(settings)
        lead = context_parallel.rank() == 0
    if settings.tiny and lead:
        from transformers.utils import logging as transformers_logging

        from flux_ui.tiny.loras import TINY_LORA_SUBDIR, write_tiny_loras
        from flux_ui.tiny.models import ensure_tiny_models
        from flux_ui.tiny.upscalers import write_tiny_upscaler

        transformers_logging.disable_progress_bar()  # "Writing model shards" bars, once per tiny model
        ensure_tiny_models(settings.tiny_dir)
        write_tiny_loras(settings.tiny_dir / TINY_LORA_SUBDIR)
        write_tiny_upscaler(settings.tiny_dir)  # in upscale_models/ below --model-root, where the app finds it
        log.info("tiny mode: random-weight models from %s", settings.tiny_dir)
    if settings.context_parallel > 1:
        context_parallel.barrier()  # the tiny models are written before the other processes read them
    log.info("device %s, dtype %s, speed profile %s", settings.device, settings.dtype, settings.speed)
    log.info("memory policy %s: %s (%s)", settings.memory_policy, settings.policy_reason, settings.policy.summary)
    budget = settings.ram_budget_bytes
    log.info(
        "warm tier RAM budget %s, %d transformer(s) on the GPU at once, %d cached",
        "unlimited" if budget is None else f"{budget / 2**30:.1f} GiB",
        settings.gpu_transformers,
        settings.transformer_cache,
    )
    from flux_ui.models import compile_cache

    compile_cache.use(settings.compile_cache_dir)  # before anything compiles
    registry = Registry(settings)
    if settings.context_parallel > 1:  # every process runs each job, each its share of the transformer
        from flux_ui.serving import context_parallel as shares

        if not lead:
            shares.follow(registry)
            return
        registry.workers = shares.LeadWorkers(registry)
    from flux_ui.tasks import preload

    # What the first Generate will need (a download, no weights, no GPU): said above the tabs, in /status
    # and the log before anyone presses it. In the background: the hub may take 3 s to answer.
    registry.first_start.start(settings, preload.DEFAULT_VARIANT)
    if settings.replicas:  # the replicas load the models (and --preload them); this process serves and delivers
        from flux_ui.serving.replicas import start_replicas

        registry.workers = start_replicas(settings)
    elif settings.preload:
        preload.start(registry)
    try:
        serve(registry, resolve_auth(settings))
    finally:
        if registry.workers is not None:
            registry.workers.close()


if __name__ == "__main__":
    main(sys.argv[1:])
