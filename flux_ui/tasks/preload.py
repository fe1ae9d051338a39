"""Preload (`--preload`): load and warm the default variant at start-up, in the background, so that the
first request neither loads nor compiles.

It takes a turn at the GPU like any job, so requests that arrive meanwhile wait in line behind it (and the
UI tells them which phase it is in). Each phase is recorded in `registry.startup`.
"""

from __future__ import annotations

import logging
import threading

from flux_ui.core.variants import get_variant
from flux_ui.models import fast
from flux_ui.models.registry import Registry
from flux_ui.tasks.text_to_image import SPEC, TextToImageParams, validate_text_to_image

log = logging.getLogger(__name__)

DEFAULT_VARIANT = "dev"  # what the text-to-image tab offers first
WARM_SIZE = 1024  # the side of the warm-up image: the size most requests ask for (64 in tiny mode)
FAST_WARM_STEPS = 4  # fast mode's mask computes 3 of 4 steps: its cached path runs once


def preload(registry: Registry, variant: str = DEFAULT_VARIANT, warm: bool | None = None) -> None:
    """Load the shared parts and `variant`'s transformer, then, with `warm` (default: when the speed
    profile compiles), make a one-step image, and a short fast-mode one where fast mode can run, so that
    compilation happens now. Failures are recorded and logged, not raised: the first request then loads
    what it needs, and reports the error itself if it is still there."""
    settings = registry.settings
    startup = registry.startup
    label = get_variant(variant).label
    warm = settings.speed != "off" if warm is None else warm
    side = 64 if settings.tiny else WARM_SIZE
    startup.begin()
    try:
        with registry.line.turn():
            with startup.phase("loading the text encoders (T5-XXL, CLIP-L) and the VAE"):
                registry.shared()
            with startup.phase(f"loading the {label} transformer (speed profile {settings.speed})"):
                registry.transformer(variant)
            if warm:
                what = "compiling" if settings.speed != "off" else "warming up"
                with startup.phase(f"{what}: a one-step image"):
                    # Through `execute`: with --context-parallel the other processes make it (and compile) too.
                    SPEC.execute(registry, _job(registry, variant, side, 1, False))
                if fast.unavailable(settings) is None:
                    with startup.phase("warming up fast mode"):
                        SPEC.execute(registry, _job(registry, variant, side, FAST_WARM_STEPS, True))
    except Exception as err:  # a background thread: record what went wrong for the UI instead of dying silently
        log.exception("start-up preload failed")
        startup.finish(error=f"{type(err).__name__}: {err}")
        return
    startup.finish()


def _job(registry: Registry, variant: str, side: int, steps: int, fast_mode: bool):
    raw = TextToImageParams("warm-up", variant, side, side, steps, seed=0, fast=fast_mode)
    return validate_text_to_image(raw, registry.settings)


def start(registry: Registry, variant: str = DEFAULT_VARIANT) -> threading.Thread:
    """`preload` in a daemon thread (the server starts at once); returns the thread."""
    thread = threading.Thread(target=preload, args=(registry, variant), name="preload", daemon=True)
    thread.start()
    return thread
