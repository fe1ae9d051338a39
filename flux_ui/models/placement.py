"""Placement: where each loaded model lives and the one path that moves it (device, the pinned-RAM warm
tier, dropped), eviction under memory pressure (`make_room`), and how a freshly loaded model is laid out
under the memory policy (float8 while loading, diffusers' group offloading).

Under memory pressure `make_room` evicts in one fixed order, cheapest to restore first: auxiliary models
(the VQA model, the Redux image encoder...) go to CPU RAM or are dropped, then the FLUX parts go to RAM.

Each model family has its own shared parts: FLUX.1's (`SharedParts`: CLIP-L, T5-XXL, the VAE) under their
own names, FLUX.2's in `_family_parts` under "flux2:..." names (its VAE, one entry per text encoder). A run
keeps its own family's parts; the other family's are the first FLUX parts to leave the device.
"""

from __future__ import annotations

import gc
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable

import torch

from flux_ui.core import memory
from flux_ui.core.memory import WORKSPACE_BYTES, module_bytes
from flux_ui.core.policies import LARGE_MODELS, MemoryPolicy
from flux_ui.core.settings import Settings
from flux_ui.core.variants import FLUX2, Variant, get_variant
from flux_ui.models import flux2, speed, tiers
from flux_ui.models.loading import SharedParts
from flux_ui.models.loras.adapters import AdapterCache
from flux_ui.models.snapshots import SnapshotLock

log = logging.getLogger(__name__)

# The FLUX parts in the order they leave the device when room is needed: biggest first, the VAE (small, and
# needed for every preview) last; then the active transformer, the part most expensive to bring back.
SHARED_EVICTION_ORDER = ("text_encoder_2", "text_encoder", "vae")


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def prepare(policy: MemoryPolicy, role: str, module: torch.nn.Module, device: str) -> None:
    """Lay out a freshly loaded model (still in RAM) as `policy` says; `role` is "transformer",
    "text_encoder_2" or another shared part's name (those are left alone).

    fp8: each large linear layer goes to `device` and is quantised there, then the rest follows, so the GPU
    never holds more than the float8 model plus one bf16 layer. Quantising on the CPU instead would avoid
    even that, but is slow: 7.4 ns per weight measured on 2 cores (one 3072x12288 layer, 0.28 s), so about
    90 s for the transformer's 12 billion weights and 35 s for T5; on the GPU it is a copy and a few
    elementwise kernels per layer.
    group offload: the module stays in RAM and diffusers' hooks copy each group of blocks to the device
    just before it runs (on a side stream, overlapping the previous group's compute).
    """
    if role not in LARGE_MODELS:
        return
    if policy.fp8_at_load:
        n = speed.quantize_fp8(module, device=device)
        module.to(device)
        log.info("%s: %d linear layers quantised to float8 while loading", role, n)
    elif policy.group_offload:
        apply_group_offload(module, device, policy.blocks_per_group)


def apply_group_offload(module: torch.nn.Module, device: str, blocks_per_group: int = 1) -> None:
    """diffusers group offloading: the model's weights stay in (pinned) RAM, each group of blocks is
    copied to `device` just before it runs. A CUDA stream prefetches the next group while one runs; on
    other devices the copies are synchronous (and on the CPU they are no-ops, which the tests rely on)."""
    from diffusers.hooks import apply_group_offloading

    cuda = torch.device(device).type == "cuda"
    if hasattr(module, "enable_group_offload"):  # diffusers models: the same function, as a method
        module.enable_group_offload(
            onload_device=torch.device(device),
            offload_type="block_level",
            num_blocks_per_group=blocks_per_group,
            use_stream=cuda,
        )
    else:
        # transformers' T5 encoder: its blocks sit one level down (encoder.block), and its token embedding is
        # tied to the encoder's; leaf-level groups see each module once. T5 runs once per prompt, so the
        # finer copies cost little.
        apply_group_offloading(module, onload_device=torch.device(device), offload_type="leaf_level", use_stream=cuda)
    module._flux_ui_group_offloaded = True
    log.info("%s group-offloaded to %s, %d block(s) per group", type(module).__name__, device, blocks_per_group)


def is_group_offloaded(module: torch.nn.Module) -> bool:
    """Whether diffusers' group-offloading hooks place this module (the registry must not move it)."""
    return getattr(module, "_flux_ui_group_offloaded", False)


class Placement:
    """The memory side of the registry: where each loaded model lives (device, pinned RAM, dropped), the one
    move path, the warm tier and its RAM budget, and eviction under pressure (`make_room`).

    `Registry` builds on it; the state below is shared with it, and both hold `_lock` while changing it."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._lock = SnapshotLock()  # re-entrant; keeps a copy of the status for readers who must not wait
        self._shared: SharedParts | None = None  # FLUX.1's shared parts
        self._family_parts: dict[str, torch.nn.Module] = {}  # FLUX.2's: "flux2:vae", "flux2:text_encoder:KEY"
        self._flux2_tokenizers: dict[str, object] = {}  # the tokenizer of each text encoder in _family_parts
        self._transformers: OrderedDict[str, torch.nn.Module] = OrderedDict()  # least recent first
        self._active: str | None = None  # variant whose transformer is on the device
        self._aux: OrderedDict[str, object] = OrderedDict()  # other models, least recent first
        self.moves: list[tuple[str, str]] = []  # (component, device) for every move, in order
        self._adapters = AdapterCache(settings.lora_cache)  # LoRAs loaded into each transformer and the CLIP

    def _move(self, name: str, module: torch.nn.Module, device: str) -> None:
        """The one path for moving a model between devices; every move is logged and recorded.

        With a CUDA device, a model's first trip to or from the GPU leaves a pinned copy of its weights in
        CPU RAM (the warm tier, `flux_ui.models.tiers`): going back to the CPU then costs no copy, and coming back
        to the GPU one.

        A group-offloaded module (policy offload-12gb) is never moved: diffusers' hooks place it block by
        block, and its weights already live in pinned RAM.
        """
        if is_group_offloaded(module):
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

    def _gpu_transformers(self) -> list[str]:
        """Cached transformers whose weights are on the device, least recently used first."""
        on_gpu = torch.device(self.settings.device).type != "cpu"
        return [n for n, m in self._transformers.items() if on_gpu and not is_group_offloaded(m) and self._on_device(m)]

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
            if n != self._active and (is_group_offloaded(m) or _device_of(m).type == "cpu")
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
        if is_group_offloaded(module):
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
            # Transformers kept beside the active one go first: each is a whole copy back from pinned RAM.
            beside = [n for n in self._gpu_transformers() if n != self._active]
            candidates = [(f"transformer:{n}", self._transformers[n]) for n in beside]
            candidates += list(self._shared_eviction_order())
            if self._active is not None and self._active in self._transformers:
                candidates.append((f"transformer:{self._active}", self._transformers[self._active]))
            for name, module in candidates:
                if name in keep or is_group_offloaded(module) or not self._on_device(module):
                    continue
                self._move(name, module, "cpu")
                done.append(f"{name} -> cpu")
                self._release_memory()
                if enough():
                    break
        return done

    def forget_transformer(self, name: str) -> None:
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

    def shared_modules(self) -> dict[str, torch.nn.Module]:
        """Every family's loaded shared parts by name: FLUX.1's ("text_encoder", "text_encoder_2", "vae")
        and FLUX.2's ("flux2:vae", "flux2:text_encoder:KEY")."""
        return {**(self._shared.modules() if self._shared else {}), **self._family_parts}

    def _shared_eviction_order(self) -> list[tuple[str, torch.nn.Module]]:
        """Shared parts in the order they leave the device: FLUX.2's text encoders (the largest first), then
        FLUX.1's in SHARED_EVICTION_ORDER, then FLUX.2's VAE (small, like FLUX.1's, and last for the same
        reason)."""
        flux1 = self._shared.modules() if self._shared else {}
        encoders = sorted(
            ((k, m) for k, m in self._family_parts.items() if k != flux2.VAE), key=lambda km: -module_bytes(km[1])
        )
        order = [*encoders, *((n, flux1[n]) for n in SHARED_EVICTION_ORDER if n in flux1)]
        if flux2.VAE in self._family_parts:
            order.append((flux2.VAE, self._family_parts[flux2.VAE]))
        return order

    def _part_names(self, variant: Variant) -> tuple[str, ...]:
        """The names of the shared parts `variant` runs with."""
        return flux2.part_names(variant) if variant.family == FLUX2 else SHARED_EVICTION_ORDER

    def _bytes_to_place(self, name: str) -> int:
        """Bytes of variant `name`'s loaded parts that are not on the device yet (unloaded parts are unknown)."""
        shared = self.shared_modules()
        modules = [shared[p] for p in self._part_names(get_variant(name)) if p in shared]
        if name in self._transformers:
            modules.append(self._transformers[name])
        return sum(module_bytes(m) for m in modules if not self._on_device(m))
