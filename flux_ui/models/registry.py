"""The pipeline registry: the one owner of every model, and the only shared mutable state.

Shared parts (CLIP-L and T5-XXL text encoders with their tokenizers, the VAE) are loaded once and handed
to every variant's pipeline by identity. Each variant brings only its transformer; transformers are kept
in an LRU cache so that switching back to a recent variant loads nothing. One lock serialises every model
move and every pipeline run, so concurrent requests for different variants never interleave. LoRAs are
loaded into the models once (see `lora_adapters`) and each pipeline use activates the set it asks for.


Under memory pressure `make_room` evicts in one fixed order, cheapest to restore first: auxiliary models
(the VQA model, the Redux image encoder...) go to CPU RAM or are dropped, then the FLUX parts go to RAM.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch

from flux_ui.core import memory
from flux_ui.core.errors import InvalidInput
from flux_ui.core.memory import WORKSPACE_BYTES, module_bytes
from flux_ui.core.settings import Settings
from flux_ui.core.variants import CONTROL_LORAS, Variant, get_variant
from flux_ui.models import loading, placement, sources, speed, tiers
from flux_ui.models.loading import SharedParts
from flux_ui.models.loras import control as control_lora
from flux_ui.models.loras.adapters import AdapterCache
from flux_ui.models.loras.library import LoraLibrary, LoraRequest
from flux_ui.models.preview import LatentPreviewer

log = logging.getLogger(__name__)

# The FLUX parts in the order they leave the device when room is needed: biggest first, the VAE (small, and
# needed for every preview) last; then the active transformer, the part most expensive to bring back.
SHARED_EVICTION_ORDER = ("text_encoder_2", "text_encoder", "vae")


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


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
        self.loras = LoraLibrary(settings.lora_dirs, settings.hub_loras)  # the LoRAs a prompt can name
        self._adapters = AdapterCache(settings.lora_cache)  # LoRAs loaded into each transformer and the CLIP

    # -- loading ---------------------------------------------------------------------------------

    def _source(self, name: str, repo_id: str) -> str:
        return sources.resolve_source(self.settings, name, repo_id)

    def shared(self) -> SharedParts:
        """The shared encoders, tokenizers and VAE, loaded on first use and kept."""
        with self._lock:
            if self._shared is None:
                shared = self._load_shared()
                for name, module in shared.modules().items():
                    placement.prepare(self.settings.policy, name, module, self.settings.device)
                    self._move(name, module, self.settings.device)
                speed.optimize_vae(shared.vae, self.settings.speed)
                self._shared = shared
            for name, module in self._shared.modules().items():  # back on the device after make_room
                self._move(name, module, self.settings.device)
            return self._shared

    def _load_shared(self) -> SharedParts:  # a hook: the benchmarks build full-size random parts instead
        return loading.load_shared(self.settings, self.load_counts)

    def _load_transformer(self, variant: Variant) -> torch.nn.Module:  # a hook, as _load_shared
        return loading.load_transformer(self.settings, variant, self.load_counts)

    def _prior_parts(self, variant: Variant) -> dict[str, object]:
        """Redux's SigLIP image encoder, its image processor and the Redux embedder, as auxiliary entries."""
        from diffusers import ReduxImageEncoder
        from transformers import SiglipImageProcessorPil, SiglipVisionModel

        src = self._source(variant.name, variant.repo_id)
        dtype = self.settings.dtype

        def part(sub: str, what: str, loader: Callable[[], object]) -> object:
            return self.aux(
                f"{variant.name}:{sub}", f"{variant.label} {what}", src, f"--model {variant.name}=FOLDER", loader
            )

        return {
            "image_encoder": part(
                "image_encoder",
                "image encoder (SigLIP)",
                lambda: (
                    SiglipVisionModel.from_pretrained(src, subfolder="image_encoder", dtype=dtype)
                    .eval()
                    .requires_grad_(False)
                ),
            ),
            # The PIL backend: it needs no torchvision and matches the processor the model was trained with.
            "feature_extractor": part(
                "feature_extractor",
                "image processor",
                lambda: SiglipImageProcessorPil.from_pretrained(src, subfolder="feature_extractor"),
            ),
            "image_embedder": part(
                "image_embedder",
                "image embedder",
                lambda: (
                    ReduxImageEncoder.from_pretrained(src, subfolder="image_embedder", torch_dtype=dtype)
                    .eval()
                    .requires_grad_(False)
                ),
            ),
        }

    def _scheduler(self, variant: Variant):
        """A fresh scheduler per run (schedulers hold per-run state); its config is read once."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        if variant.name not in self._scheduler_configs:
            self._scheduler_configs[variant.name] = loading.scheduler_config(self.settings, variant)
        return FlowMatchEulerDiscreteScheduler.from_config(self._scheduler_configs[variant.name])

    def previewer(self) -> LatentPreviewer:
        """The latent-to-RGB preview projection of the shared VAE, fitted once."""
        with self._lock:
            if self._previewer is None:
                self._previewer = LatentPreviewer(self.shared().vae)
            return self._previewer

    # -- placement ---------------------------------------------------------------------------------

    def _move(self, name: str, module: torch.nn.Module, device: str) -> None:
        """The one path for moving a model between devices; every move is logged and recorded.

        With a CUDA device, a model's first trip to or from the GPU leaves a pinned copy of its weights in
        CPU RAM (the warm tier, `flux_ui.models.tiers`): going back to the CPU then costs no copy, and coming back
        to the GPU one.

        A group-offloaded module (policy offload-12gb) is never moved: diffusers' hooks place it block by
        block, and its weights already live in pinned RAM.
        """
        if placement.is_group_offloaded(module):
            return
        current = next(module.parameters()).device
        if current == torch.device(device) or (current.type == device and device != "cpu"):
            return
        self._adapters.release(module)  # merged LoRAs out first: the warm tier keeps the base weights
        start = time.perf_counter()
        pinned = tiers.valid_pinned(module)
        to_gpu = device.startswith("cuda")
        if pinned is None and torch.cuda.is_available() and (device == "cpu" or current.type == "cpu"):
            pinned = tiers.pin(module)  # to pinned CPU memory, from wherever it is
        if pinned is not None:
            pinned.place(module, device)
        else:
            module.to(device)
        if to_gpu:
            torch.cuda.synchronize()  # so the logged time is the copy's, and the weights are there
        log.info("moved %s %s -> %s in %.2f s", name, current, device, time.perf_counter() - start)
        self.moves.append((name, device))

    def transformer(self, name: str) -> torch.nn.Module:
        """The transformer of variant `name`, loaded if needed, made active on the device.

        Others stay on the GPU while fewer than `gpu_transformers` are there and the new one fits beside
        them; otherwise the least recently used go to the warm tier (pinned CPU RAM). Beyond
        `transformer_cache` entries, or beyond `ram_budget_bytes` of warm weights, the least recently used
        ones are dropped.
        """
        variant = get_variant(name)
        if not variant.has_transformer:
            raise ValueError(f"variant: {variant.label} has no transformer of its own; use {variant.base!r}")
        with self._lock:
            self._make_gpu_slot(name)
            if name in self._transformers:
                self._transformers.move_to_end(name)
            else:
                model = self._load_transformer(variant)  # raises before the cache changes on failure
                placement.prepare(self.settings.policy, "transformer", model, self.settings.device)
                self._move(f"transformer:{name}", model, self.settings.device)
                speed.optimize_transformer(model, self.settings.speed)
                self._transformers[name] = model
                self._evict_beyond(self.settings.transformer_cache)
            self._active = name
            model = self._transformers[name]
            self._move(f"transformer:{name}", model, self.settings.device)
            self._enforce_ram_budget()
            return model

    def _gpu_transformers(self) -> list[str]:
        """Cached transformers whose weights are on the device, least recently used first."""
        on_gpu = torch.device(self.settings.device).type != "cpu"
        return [
            n
            for n, m in self._transformers.items()
            if on_gpu and not placement.is_group_offloaded(m) and self._on_device(m)
        ]

    def _make_gpu_slot(self, name: str) -> None:
        """Before `name`'s transformer is placed: move other transformers to the warm tier, least recently
        used first, until fewer than `gpu_transformers` others are on the GPU and the free memory holds
        `name`'s weights and a run's workspace (one not loaded yet is assumed as large as the last used)."""
        while others := [n for n in self._gpu_transformers() if n != name]:
            if len(others) < self.settings.gpu_transformers:
                incoming = self._transformers.get(name, self._transformers[others[-1]])
                needed = 0 if self._on_device(incoming) else module_bytes(incoming)
                free = self._free_bytes()
                if free is not None and free >= needed + WORKSPACE_BYTES:
                    return
            self._to_warm_tier(others[0])

    def _to_warm_tier(self, name: str) -> None:
        """Move transformer `name` from the GPU to pinned RAM, first dropping least recently used warm ones
        so that the RAM budget holds it; one larger than the whole budget is dropped instead (pinning it
        would cost seconds only to drop it)."""
        model, budget = self._transformers[name], self.settings.ram_budget_bytes
        size = module_bytes(model)
        if budget is not None and size > budget:
            log.info("dropping transformer:%s: %.1f GiB exceed the RAM budget", name, size / 2**30)
            del self._transformers[name], model
            if self._active == name:
                self._active = None
            self._release_memory()
            return
        self._enforce_ram_budget(incoming=size)
        self._move(f"transformer:{name}", model, "cpu")

    def warm_bytes(self) -> int:
        """Bytes of cached transformers held in CPU RAM, the active one excepted (the warm tier)."""
        return sum(
            module_bytes(m)
            for n, m in self._transformers.items()
            if n != self._active and (placement.is_group_offloaded(m) or _device_of(m).type == "cpu")
        )

    def _enforce_ram_budget(self, incoming: int = 0) -> None:
        """Drop warm transformers, least recently used first, while the warm tier (with `incoming` more
        bytes about to join it) exceeds the RAM budget."""
        budget = self.settings.ram_budget_bytes
        if budget is None:
            return
        while (warm := self.warm_bytes()) + incoming > budget:
            on_gpu = self._gpu_transformers()
            old = next(n for n in self._transformers if n != self._active and n not in on_gpu)
            log.info(
                "dropping transformer:%s: warm tier %.1f GiB over the RAM budget of %.1f GiB",
                old,
                warm / 2**30,
                budget / 2**30,
            )
            del self._transformers[old]
            self._release_memory()

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
            if isinstance(model, torch.nn.Module) and not self._on_device(model):
                self.make_room(module_bytes(model) + WORKSPACE_BYTES, keep=(key,))
                self._move(key, model, self.settings.device)
            return model

    @contextmanager
    def lend_aux(
        self, key: str, what: str, source: str, setting: str, loader: Callable[[], object]
    ) -> Iterator[object]:
        """`aux(...)`, holding the lock while the caller runs the model, so no other request moves it meanwhile."""
        with self._lock:
            yield self.aux(key, what, source, setting, loader)

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

    def _on_device(self, module: torch.nn.Module) -> bool:
        """Whether the module is placed for a run: on the device, or placed there by offloading hooks."""
        if placement.is_group_offloaded(module):
            return True
        current, device = _device_of(module), torch.device(self.settings.device)
        return current == device or (current.type == device.type and device.index is None)

    # The two memory probes, as methods so that tests can simulate pressure on one registry.
    def _free_bytes(self) -> int | None:
        return memory.device_free_bytes(self.settings.device)

    def _free_ram_bytes(self) -> int:
        return memory.ram_free_bytes()

    def make_room(self, needed: int, keep: Iterable[str] = ()) -> list[str]:
        """Evict until `needed` bytes are free on the device; return what was done, in order.

        The order, cheapest to restore first, stopping as soon as enough is free:
        1. auxiliary models (VQA, Redux encoder...), least recently used first: to CPU RAM, or dropped if RAM
           is short (on a CPU device they are dropped: there is no slower tier to keep them in);
        2. the shared T5 encoder, CLIP and VAE, then the active transformer: to CPU RAM. The next FLUX run
           brings them back; nothing is reloaded from disk.
        Entries named in `keep` (aux keys, shared part names, "transformer:<variant>") stay where they are.
        """
        keep = set(keep)
        done: list[str] = []
        with self._lock:

            def enough() -> bool:
                free = self._free_bytes()
                return free is None or free >= needed

            if enough():
                return done
            if self._adapters.release_all():  # originals kept beside merged LoRAs go first
                done.append("merged LoRAs restored")
                self._release_memory()
                if enough():
                    return done
            on_cpu = torch.device(self.settings.device).type == "cpu"
            for key in list(self._aux):  # keys only: a list of the models would keep dropped ones alive
                model = self._aux[key]
                if key in keep or not isinstance(model, torch.nn.Module) or not self._on_device(model):
                    continue
                if not on_cpu and self._free_ram_bytes() >= module_bytes(model):
                    self._move(key, model, "cpu")
                    done.append(f"{key} -> cpu")
                else:
                    del self._aux[key]
                    done.append(f"{key} dropped")
                    log.info("dropped %s to make room", key)
                del model
                self._release_memory()
                if enough():
                    return done
            if on_cpu:
                return done  # the FLUX parts have nowhere slower to go
            parts = self._shared.modules() if self._shared else {}
            # Transformers kept beside the active one go first: each is a whole copy back from pinned RAM.
            beside = [n for n in self._gpu_transformers() if n != self._active]
            candidates = [(f"transformer:{n}", self._transformers[n]) for n in beside]
            candidates += [(name, parts[name]) for name in SHARED_EVICTION_ORDER if name in parts]
            if self._active is not None and self._active in self._transformers:
                candidates.append((f"transformer:{self._active}", self._transformers[self._active]))
            for name, module in candidates:
                if name in keep or placement.is_group_offloaded(module) or not self._on_device(module):
                    continue
                self._move(name, module, "cpu")
                done.append(f"{name} -> cpu")
                self._release_memory()
                if enough():
                    break
        return done

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
    def pipeline(self, name: str, loras: LoraRequest = (), pipeline_class: str | None = None) -> Iterator[object]:
        """Lend the assembled diffusers pipeline of variant `name`, holding the lock while in use.

        The pipeline is built fresh (construction only registers modules), from the shared parts and the
        variant's transformer, so nothing else can move its models until the `with` block ends. Exactly the
        LoRAs in `loras` ((name, weight) pairs) are active during the block; with none, the output is the
        base model's. An unknown, unsafe or unfitting LoRA raises InvalidInput and changes nothing. A
        variant without a transformer (Redux) lends its prior pipeline: image encoder parts plus the shared
        text encoders. `pipeline_class` overrides the variant's (a FluxControlPipeline around [dev] for
        control LoRAs).
        """
        import diffusers

        variant = get_variant(name)
        files = [(self.loras.fetch(n), w) for n, w in loras]  # before the lock: a hub LoRA may download
        with self._lock:
            # Only auxiliary models may be evicted for a FLUX run: its own parts are all needed on the device.
            parts = [*SHARED_EVICTION_ORDER, f"transformer:{name}"]
            self.make_room(self._bytes_to_place(name) + WORKSPACE_BYTES, keep=parts)
            shared = self.shared()
            pipe_cls = getattr(diffusers, pipeline_class or variant.pipeline_class)
            text = {
                "text_encoder": shared.text_encoder,
                "tokenizer": shared.tokenizer,
                "text_encoder_2": shared.text_encoder_2,
                "tokenizer_2": shared.tokenizer_2,
            }
            if variant.has_transformer:
                pipe = pipe_cls(
                    scheduler=self._scheduler(variant),
                    vae=shared.vae,
                    transformer=self.transformer(name),
                    **text,
                )
            else:
                # An image prior (Redux): its own image encoder parts, the shared text encoders for the
                # prompt; what it returns conditions the pipeline of `variant.base`.
                pipe = pipe_cls(**self._prior_parts(variant), **text)
            pipe.set_progress_bar_config(disable=True)
            if not variant.has_transformer:
                if files:
                    raise InvalidInput("prompt", f"LoRAs apply to a transformer; {variant.label} has none")
                yield pipe
                return
            self._adapters.activate(pipe, variant.label, files, self.load_counts)
            try:
                yield pipe
            finally:
                self._adapters.deactivate(pipe)  # the CLIP is shared: leave no LoRA active in it

    def _loaded_loras(self) -> dict[str, list[str]]:
        """LoRAs loaded into each model, least recently used first."""
        modules = {f"transformer:{n}": m for n, m in self._transformers.items()}
        if self._shared is not None:
            modules["text_encoder"] = self._shared.text_encoder
        return {key: names for key, m in modules.items() if (names := self._adapters.loaded(m))}

    def _bytes_to_place(self, name: str) -> int:
        """Bytes of variant `name`'s loaded parts that are not on the device yet (unloaded parts are unknown)."""
        modules = list(self._shared.modules().values()) if self._shared else []
        if name in self._transformers:
            modules.append(self._transformers[name])
        return sum(module_bytes(m) for m in modules if not self._on_device(m))

    @contextmanager
    def control_lora_pipeline(self, mode: str) -> Iterator[object]:
        """Lend a FluxControlPipeline on the [dev] transformer with BFL's `mode` ("canny" or "depth") LoRA
        applied, holding the lock; on leaving, the LoRA is removed and the transformer checked to be as it
        was. If it cannot be restored exactly, it is dropped from the cache (and reloaded when next used).

        No Canny/Depth transformer is loaded: the [dev] transformer (cached, or loaded as for text-to-image)
        is borrowed. The LoRA file is read once and kept as an auxiliary entry.
        """
        lora = CONTROL_LORAS[mode]
        policy = self.settings.policy
        # The control LoRA widens the transformer's input layer (a new module, which the offloading hooks
        # do not place) and adds PEFT layers, which cannot wrap float8 layers.
        blocker = None
        if policy.fp8_at_load or policy.group_offload:
            blocker = f"--memory-policy {policy.name}"
        elif self.settings.speed == "fp8":
            blocker = "the float8 layers of --speed fp8 (use --speed compile for this route)"
        if blocker:
            raise InvalidInput(
                "route",
                f"BFL's control LoRAs do not work with {blocker}; use route 'full' "
                f"(the FLUX.1 {mode.capitalize()} [dev] transformer)",
            )
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
        from flux_ui.media.control_maps import DEPTH_ESTIMATOR_REPO, load_depth_estimator

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
        """What is loaded where: shared parts, cached transformers (LRU order) and the active one, the
        memory policy, and memory in use ("memory": GiB figures; "sizes_mib": each loaded model's weights).

        A group-offloaded model's device reads "offloaded": its weights are in RAM, its hooks bring each
        block to the GPU as it runs."""
        with self._lock:

            def where(module: torch.nn.Module) -> str:
                return "offloaded" if placement.is_group_offloaded(module) else str(next(module.parameters()).device)

            shared = {k: where(m) for k, m in self._shared.modules().items()} if self._shared else {}
            models = {**(self._shared.modules() if self._shared else {})}
            models |= {f"transformer:{n}": m for n, m in self._transformers.items()}
            models |= {k: m for k, m in self._aux.items() if isinstance(m, torch.nn.Module)}
            budget = self.settings.ram_budget_bytes
            return {
                "policy": self.settings.memory_policy,
                "policy_reason": self.settings.policy_reason,
                "speed": self.settings.speed,
                "memory": {
                    "gpu": memory.device_usage(self.settings.device),
                    "ram": memory.ram_usage(),
                    "warm_tier_mib": round(self.warm_bytes() / 2**20, 1),
                    "ram_budget_gib": None if budget is None else round(budget / memory.GIB, 2),
                    "gpu_transformers": self.settings.gpu_transformers,
                    "transformer_cache": self.settings.transformer_cache,
                },
                "sizes_mib": {k: round(module_bytes(m) / 2**20, 1) for k, m in models.items()},
                "device": self.settings.device,
                "dtype": str(self.settings.dtype).removeprefix("torch."),
                "shared": shared,
                "transformers": [
                    {"variant": n, "device": where(m), "active": n == self._active}
                    for n, m in self._transformers.items()
                ],
                "aux": {k: where(m) if isinstance(m, torch.nn.Module) else "cpu" for k, m in self._aux.items()},
                "loras": self._loaded_loras(),
                "load_counts": dict(self.load_counts),
            }
