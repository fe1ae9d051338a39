"""The pipeline registry: the one owner of every model, and the only shared mutable state.

Shared parts (CLIP-L and T5-XXL text encoders with their tokenizers, the VAE) are loaded once and handed
to every variant's pipeline by identity. Each variant brings only its transformer; transformers are kept
in an LRU cache so that switching back to a recent variant loads nothing. One lock serialises every model
move and every pipeline run, so concurrent requests for different variants never interleave.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from flux_ui import control_lora, sources
from flux_ui.preview import LatentPreviewer
from flux_ui.settings import Settings
from flux_ui.variants import CONTROL_LORAS, Variant, get_variant

log = logging.getLogger(__name__)


@dataclass
class SharedParts:
    """The components every FLUX.1 variant uses, loaded once."""

    text_encoder: torch.nn.Module  # CLIP-L text model (pooled prompt embedding)
    tokenizer: object  # CLIP tokenizer
    text_encoder_2: torch.nn.Module  # T5-XXL encoder (per-token prompt embedding)
    tokenizer_2: object  # T5 tokenizer
    vae: torch.nn.Module  # AutoencoderKL with 16 latent channels

    def modules(self) -> dict[str, torch.nn.Module]:
        return {
            "text_encoder": self.text_encoder,
            "text_encoder_2": self.text_encoder_2,
            "vae": self.vae,
        }


class Registry:
    """Loads, caches, places and lends out models; see the module docstring."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._lock = threading.RLock()
        self._shared: SharedParts | None = None
        self._transformers: OrderedDict[str, torch.nn.Module] = OrderedDict()  # least recent first
        self._scheduler_configs: dict[str, dict] = {}
        self._active: str | None = None  # variant whose transformer is on the device
        self._previewer: LatentPreviewer | None = None
        self._aux: OrderedDict[str, object] = OrderedDict()  # other models, least recent first
        self.load_counts: Counter[str] = Counter()  # component -> loads from disk or hub
        self.moves: list[tuple[str, str]] = []  # (component, device) for every move, in order

    # -- loading ---------------------------------------------------------------------------------

    def _source(self, name: str, repo_id: str) -> str:
        return sources.resolve_source(self.settings, name, repo_id)

    def shared(self) -> SharedParts:
        """The shared encoders, tokenizers and VAE, loaded on first use and kept."""
        with self._lock:
            if self._shared is None:
                self._shared = self._load_shared()
                for name, module in self._shared.modules().items():
                    self._move(name, module, self.settings.device)
            return self._shared

    def _load_shared(self) -> SharedParts:
        from diffusers import AutoencoderKL
        from transformers import (
            CLIPTextModel,
            CLIPTokenizer,
            T5EncoderModel,
            T5TokenizerFast,
        )

        src = self._source("shared", self.settings.shared_repo)
        dtype = self.settings.dtype
        setting = "--shared-repo (or --model shared=FOLDER)"

        def get(what, fn):
            self.load_counts[what] += 1
            return sources.load(f"{what} (shared)", src, setting, fn)

        parts = SharedParts(
            tokenizer=get(
                "tokenizer",
                lambda: CLIPTokenizer.from_pretrained(src, subfolder="tokenizer"),
            ),
            tokenizer_2=get(
                "tokenizer_2",
                lambda: T5TokenizerFast.from_pretrained(src, subfolder="tokenizer_2"),
            ),
            text_encoder=get(
                "text_encoder",
                lambda: CLIPTextModel.from_pretrained(src, subfolder="text_encoder", dtype=dtype),
            ),
            text_encoder_2=get(
                "text_encoder_2",
                lambda: T5EncoderModel.from_pretrained(src, subfolder="text_encoder_2", dtype=dtype),
            ),
            vae=get(
                "vae",
                lambda: AutoencoderKL.from_pretrained(src, subfolder="vae", torch_dtype=dtype),
            ),
        )
        for module in parts.modules().values():
            module.eval().requires_grad_(False)
        return parts

    def _load_transformer(self, variant: Variant) -> torch.nn.Module:
        from diffusers import FluxTransformer2DModel

        src = self._source(variant.name, variant.repo_id)
        self.load_counts[f"transformer:{variant.name}"] += 1
        model = sources.load(
            f"{variant.label} transformer",
            src,
            f"--model {variant.name}=FOLDER",
            lambda: FluxTransformer2DModel.from_pretrained(
                src, subfolder="transformer", torch_dtype=self.settings.dtype
            ),
        )
        return model.eval().requires_grad_(False)

    def _scheduler(self, variant: Variant):
        """A fresh scheduler per run (schedulers hold per-run state); its config is read once."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        if variant.name not in self._scheduler_configs:
            src = self._source(variant.name, variant.repo_id)
            sched = sources.load(
                f"{variant.label} scheduler config",
                src,
                f"--model {variant.name}=FOLDER",
                lambda: FlowMatchEulerDiscreteScheduler.from_pretrained(src, subfolder="scheduler"),
            )
            self._scheduler_configs[variant.name] = dict(sched.config)
        return FlowMatchEulerDiscreteScheduler.from_config(self._scheduler_configs[variant.name])

    def previewer(self) -> LatentPreviewer:
        """The latent-to-RGB preview projection of the shared VAE, fitted once."""
        with self._lock:
            if self._previewer is None:
                self._previewer = LatentPreviewer(self.shared().vae)
            return self._previewer

    # -- placement ---------------------------------------------------------------------------------

    def _move(self, name: str, module: torch.nn.Module, device: str) -> None:
        """The one path for moving a model between devices; every move is logged and recorded."""
        current = next(module.parameters()).device
        if current == torch.device(device) or (current.type == device and device != "cpu"):
            return
        start = time.perf_counter()
        module.to(device)
        log.info(
            "moved %s %s -> %s in %.2f s",
            name,
            current,
            device,
            time.perf_counter() - start,
        )
        self.moves.append((name, device))

    def transformer(self, name: str) -> torch.nn.Module:
        """The transformer of variant `name`, loaded if needed, made active on the device.

        The previously active transformer goes back to CPU memory; beyond `transformer_cache` entries
        the least recently used one is dropped.
        """
        variant = get_variant(name)
        if not variant.has_transformer:
            raise ValueError(f"variant: {variant.label} has no transformer of its own; use {variant.base!r}")
        with self._lock:
            if name in self._transformers:
                self._transformers.move_to_end(name)
            else:
                model = self._load_transformer(variant)  # raises before the cache changes on failure
                self._transformers[name] = model
                self._evict_beyond(self.settings.transformer_cache)
            if self._active not in (None, name) and self._active in self._transformers:
                self._move(
                    f"transformer:{self._active}",
                    self._transformers[self._active],
                    "cpu",
                )
            self._active = name
            model = self._transformers[name]
            self._move(f"transformer:{name}", model, self.settings.device)
            return model

    def _evict_beyond(self, keep: int) -> None:
        while len(self._transformers) > max(keep, 1):
            old, model = self._transformers.popitem(last=False)
            log.info("evicting transformer:%s (least recently used)", old)
            if old == self._active:
                self._active = None
            del model
            self._release_memory()

    def aux(self, key: str, what: str, source: str, setting: str, loader: Callable[[], object]) -> object:
        """A model other than FLUX's own (the Redux image encoder, the VQA model, a depth estimator...),
        loaded once through `sources.load` and kept; torch modules are placed on the device.

        `key` identifies the entry ("vqa", "redux-encoder"), `what`, `source` and `setting` go into the
        error message if loading fails. Under memory pressure these go first: see `evict_aux`.
        """
        with self._lock:
            if key in self._aux:
                self._aux.move_to_end(key)
            else:
                self.load_counts[key] += 1
                self._aux[key] = sources.load(what, source, setting, loader)
            model = self._aux[key]
            if isinstance(model, torch.nn.Module):
                self._move(key, model, self.settings.device)
            return model

    def evict_aux(self, keep: tuple[str, ...] = ()) -> list[str]:
        """Free accelerator memory held by auxiliary models, first in line before any FLUX part.

        Entries not in `keep` move to CPU memory if they are on an accelerator, else they are dropped.
        Returns the keys dropped.
        """
        dropped = []
        with self._lock:
            for key, model in list(self._aux.items()):
                if key in keep:
                    continue
                if isinstance(model, torch.nn.Module) and next(model.parameters()).device.type != "cpu":
                    self._move(key, model, "cpu")
                else:
                    del self._aux[key]
                    dropped.append(key)
            self._release_memory()
        return dropped

    def _forget_transformer(self, name: str) -> None:
        """Drop a cached transformer that can no longer be trusted; it is loaded afresh when next asked for."""
        with self._lock:
            if self._transformers.pop(name, None) is not None:
                log.warning("dropping transformer:%s from the cache; it will be reloaded", name)
            if self._active == name:
                self._active = None
            self._release_memory()

    def _release_memory(self) -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def free_memory(self) -> None:
        """Drop every cached transformer and auxiliary model; the shared parts stay."""
        with self._lock:
            self._aux.clear()
            self._transformers.clear()
            self._active = None
            self._release_memory()

    # -- lending -----------------------------------------------------------------------------------

    @contextmanager
    def pipeline(self, name: str, pipeline_class: str | None = None) -> Iterator[object]:
        """Lend the assembled diffusers pipeline of variant `name`, holding the lock while in use.

        The pipeline is built fresh (construction only registers modules), from the shared parts and the
        variant's transformer, so nothing else can move its models until the `with` block ends.
        `pipeline_class` overrides the variant's (a FluxControlPipeline around [dev] for control LoRAs).
        """
        import diffusers

        variant = get_variant(name)
        with self._lock:
            shared = self.shared()
            transformer = self.transformer(name)
            pipe_cls = getattr(diffusers, pipeline_class or variant.pipeline_class)
            pipe = pipe_cls(
                scheduler=self._scheduler(variant),
                vae=shared.vae,
                text_encoder=shared.text_encoder,
                tokenizer=shared.tokenizer,
                text_encoder_2=shared.text_encoder_2,
                tokenizer_2=shared.tokenizer_2,
                transformer=transformer,
            )
            pipe.set_progress_bar_config(disable=True)
            yield pipe

    @contextmanager
    def control_lora_pipeline(self, mode: str) -> Iterator[object]:
        """Lend a FluxControlPipeline on the [dev] transformer with BFL's `mode` ("canny" or "depth") LoRA
        applied, holding the lock; on leaving, the LoRA is removed and the transformer checked to be as it
        was. If it cannot be restored exactly, it is dropped from the cache (and reloaded when next used).

        No Canny/Depth transformer is loaded: the [dev] transformer (cached, or loaded as for text-to-image)
        is borrowed. The LoRA file is read once and kept as an auxiliary entry.
        """
        lora = CONTROL_LORAS[mode]
        src = self._source(lora.name, lora.repo_id)
        with self._lock:
            state_dict = self.aux(
                f"lora:{lora.name}",
                lora.label,
                src,
                f"--model {lora.name}=FOLDER",
                lambda: control_lora.read(src, lora.weight_name),
            )
            with self.pipeline(lora.base, pipeline_class="FluxControlPipeline") as pipe:
                before = control_lora.snapshot(pipe.transformer, lora.name)
                try:
                    control_lora.apply(pipe, state_dict, lora.name)
                    yield pipe
                finally:
                    try:
                        restored = control_lora.remove(pipe.transformer, before)
                    except Exception:  # noqa: BLE001 - whatever failed, this transformer must not be lent again
                        log.exception("removing control LoRA %s failed", lora.name)
                        restored = False
                    if not restored:
                        self._forget_transformer(lora.base)

    @contextmanager
    def depth_estimator(self) -> Iterator[object]:
        """Lend the depth-estimation model (an auxiliary entry: loaded once, evicted before FLUX parts),
        holding the lock while in use."""
        from flux_ui.control_maps import DEPTH_ESTIMATOR_REPO, load_depth_estimator

        src = self._source("depth-estimator", DEPTH_ESTIMATOR_REPO)
        with self._lock:
            yield self.aux(
                "depth-estimator",
                "Depth estimator",
                src,
                "--model depth-estimator=FOLDER",
                lambda: load_depth_estimator(src, self.settings.dtype),
            )

    def status(self) -> dict:
        """What is loaded where: shared parts, cached transformers (LRU order) and the active one."""
        with self._lock:

            def where(module: torch.nn.Module) -> str:
                return str(next(module.parameters()).device)

            shared = {k: where(m) for k, m in self._shared.modules().items()} if self._shared else {}
            return {
                "device": self.settings.device,
                "dtype": str(self.settings.dtype).removeprefix("torch."),
                "shared": shared,
                "transformers": [
                    {"variant": n, "device": where(m), "active": n == self._active}
                    for n, m in self._transformers.items()
                ],
                "aux": {k: where(m) if isinstance(m, torch.nn.Module) else "cpu" for k, m in self._aux.items()},
                "load_counts": dict(self.load_counts),
            }
