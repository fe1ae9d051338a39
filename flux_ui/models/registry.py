"""The pipeline registry: the one owner of every model, and the only shared mutable state.

Shared parts (CLIP-L and T5-XXL text encoders with their tokenizers, the VAE) are loaded once and handed
to every variant's pipeline by identity. Each variant brings only its transformer; transformers are kept
in an LRU cache so that switching back to a recent variant loads nothing. One lock serialises every model
move and every pipeline run, so concurrent requests for different variants never interleave. LoRAs are
loaded into the models once (see `lora_adapters`) and each pipeline use activates the set it asks for.

FLUX.2 is a second family with shared parts of its own (`flux2_parts`): one VAE for all its variants, and a
text encoder per key (Qwen3-4B, Qwen3-8B, Mistral Small 3.2), each loaded once and handed by identity to
every variant that names it. Its transformers share the LRU cache with FLUX.1's.

Where models live and how they move (the warm tier, eviction under pressure) is `placement.Placement`,
which the registry builds on. Task-specific lending (BFL's control LoRAs, the depth estimator) is the
control task's (`flux_ui.tasks.control`), on the public methods here.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from flux_ui.core import memory, policies
from flux_ui.core.errors import InvalidInput, ModelUnavailableError
from flux_ui.core.memory import WORKSPACE_BYTES, module_bytes
from flux_ui.core.settings import Settings
from flux_ui.core.turns import Line, Workers
from flux_ui.core.variants import FLUX1, FLUX2, Variant, get_variant
from flux_ui.models import (
    context_parallel,
    downloads,
    float8_store,
    flux2,
    hashes,
    loading,
    placement,
    redux_files,
    sources,
    speed,
)
from flux_ui.models.first_start import FirstStart
from flux_ui.models.loading import SharedParts
from flux_ui.models.loras.library import LoraLibrary, LoraRequest
from flux_ui.models.placement import Placement
from flux_ui.models.preview import LatentPreviewer
from flux_ui.models.startup import Startup

log = logging.getLogger(__name__)


class Registry(Placement):
    """Loads, caches and lends out models; see the module docstring."""

    def __init__(self, settings: Settings):
        super().__init__(settings)
        self._scheduler_configs: dict[str, dict] = {}
        self._previewers: dict[str, LatentPreviewer] = {}  # per family: each has its own VAE
        self._tokenizers: tuple[object, object] | None = None  # read alone, before the shared parts
        self.load_counts: Counter[str] = Counter()  # component -> loads from disk or hub
        self.loras = LoraLibrary(settings.lora_dirs, settings.hub_loras)  # the LoRAs a prompt can name
        self.line = Line(settings.replicas)  # turns at the GPU(s) for every surface's jobs, in arrival order
        # Where tasks run (`TaskSpec.execute`): None, on this registry's models; with --replicas, the Ray
        # Serve replicas (flux_ui/serving/replicas.py), each with a registry of its own on its own GPU.
        self.workers: Workers | None = None
        self.startup = Startup()  # the phases of --preload (flux_ui.tasks.preload), for the UI and /status
        self.downloads = downloads.progress  # downloads from the hub (the process's one record), likewise
        self.float8_writes: list[threading.Thread] = []  # --keep-float8 files being written (tests wait on them)
        self.first_start = FirstStart()  # what the first image will need (flux_ui.models.first_start), likewise
        self._lock.take = self._residency  # what `status` reads while a load or a run holds the lock
        self._lock.publish()  # nothing loaded yet: what status shows if the first load is under way

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
        if variant.family == FLUX2:
            return flux2.load_transformer(self.settings, variant, self.load_counts)
        return loading.load_transformer(self.settings, variant, self.load_counts)

    def _load_flux2_vae(self, variant: Variant) -> torch.nn.Module:  # a hook, as _load_shared
        return flux2.load_vae(self.settings, variant, self.load_counts)

    def _load_flux2_encoder(self, variant: Variant) -> tuple[torch.nn.Module, object]:  # a hook, as _load_shared
        return flux2.load_text_encoder(self.settings, variant, self.load_counts)

    def flux2_parts(self, variant: Variant) -> tuple[torch.nn.Module, object, torch.nn.Module]:
        """FLUX.2 `variant`'s text encoder, its tokenizer and the FLUX.2 VAE, loaded on first use, kept, and
        placed on the device: the same objects for every variant that shares them."""
        key = flux2.encoder_key(variant)
        with self._lock:
            if flux2.VAE not in self._family_parts:
                vae = self._load_flux2_vae(variant)
                self._move(flux2.VAE, vae, self.settings.device)
                speed.optimize_vae(vae, self.settings.speed)
                self._family_parts[flux2.VAE] = vae
            if key not in self._family_parts:
                model, tokenizer = self._load_flux2_encoder(variant)
                placement.prepare(self.settings.policy, "flux2_text_encoder", model, self.settings.device)
                self._move(key, model, self.settings.device)
                self._family_parts[key], self._flux2_tokenizers[key] = model, tokenizer
            for name in (key, flux2.VAE):  # back on the device after make_room
                self._move(name, self._family_parts[name], self.settings.device)
            return self._family_parts[key], self._flux2_tokenizers[key], self._family_parts[flux2.VAE]

    def _prior_parts(self, variant: Variant) -> dict[str, object]:
        """Redux's SigLIP image encoder, its image processor and the Redux embedder, as auxiliary entries, each
        from a folder or repo in hub layout or from a single file (see `redux_files`)."""
        parts = redux_files.prior_parts(self.settings, variant, self._source(variant.name, variant.repo_id))
        return {
            name: self.aux(
                f"{variant.name}:{name}", f"{variant.label} {p.what}", p.source, p.setting, p.load, p.subfolder
            )
            for name, p in parts.items()
        }

    def fresh_transformer(self, name: str) -> torch.nn.Module:
        """A copy of variant `name`'s transformer read afresh from its source, in RAM, in the settings' dtype,
        neither cached nor placed: for LoRA training, which changes its layers (adapters, 4-bit weights,
        gradient checkpointing) and so must never share it with inference. The caller places it."""
        variant = get_variant(name)
        if not variant.has_transformer:
            raise ValueError(f"variant: {variant.label} has no transformer of its own; use {variant.base!r}")
        return self._load_transformer(variant)

    def tokenizers(self) -> tuple[object, object]:
        """The shared CLIP and T5 tokenizers, read without their encoders when those are not loaded yet
        (training checks caption lengths with them before any model is placed)."""
        with self._lock:
            if self._shared is not None:
                return self._shared.tokenizer, self._shared.tokenizer_2
            if self._tokenizers is None:
                self._tokenizers = loading.tokenizers(self.settings, self.load_counts)
            return self._tokenizers

    def scheduler(self, name: str):
        """A fresh scheduler of variant `name` (training reads its sigmas, samples run with it)."""
        return self._scheduler(get_variant(name))

    def _scheduler(self, variant: Variant):
        """A fresh scheduler per run (schedulers hold per-run state); its config is read once."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        if variant.name not in self._scheduler_configs:
            self._scheduler_configs[variant.name] = loading.scheduler_config(self.settings, variant)
        return FlowMatchEulerDiscreteScheduler.from_config(self._scheduler_configs[variant.name])

    def previewer(self, family: str = FLUX1) -> LatentPreviewer:
        """The latent-to-RGB preview projection of `family`'s VAE, fitted once (FLUX.2's VAE must be loaded:
        it is while one of its pipelines runs)."""
        with self._lock:
            if family not in self._previewers:
                vae = self._family_parts[flux2.VAE] if family == FLUX2 else self.shared().vae
                self._previewers[family] = LatentPreviewer(vae)
            return self._previewers[family]

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
                kept = float8_store.entry(self.settings, variant)
                if kept is not None and kept.is_file():
                    self.load_counts[f"transformer:{name}:float8"] += 1
                    model = float8_store.load(kept, self.settings.device)
                else:
                    model = self._load_transformer(variant)  # raises before the cache changes on failure
                    placement.prepare(self.settings.policy, "transformer", model, self.settings.device)
                self._move(f"transformer:{name}", model, self.settings.device)
                if self.settings.context_parallel > 1:  # before compiling: the split is part of what compiles
                    context_parallel.shard(model, self.settings)
                speed.optimize_transformer(model, self.settings.speed)
                if (
                    kept is not None
                    and not kept.is_file()
                    and (writing := float8_store.save_in_background(model, kept))
                ):
                    self.float8_writes.append(writing)
                self._transformers[name] = model
                self._evict_beyond(self.settings.transformer_cache)
            self._active = name
            model = self._transformers[name]
            self._move(f"transformer:{name}", model, self.settings.device)
            self._enforce_ram_budget()
            return model

    def file_hashes(self, variant: Variant, loras: LoraRequest) -> tuple[str, tuple[tuple[str, str], ...]]:
        """A1111's `Model hash` of the transformer file `variant` runs ("" unless it is a single file: a
        diffusers folder is no one file Civitai knows) and each LoRA's hash, for the images' metadata.
        Each file is hashed once (see `hashes`)."""
        if not variant.has_transformer:
            variant = get_variant(variant.base)
        src = sources.resolve_source(self.settings, variant.name, variant.repo_id)
        try:
            model = hashes.model_hash(src) if sources.is_file(src) else ""
            return model, tuple((name, hashes.lora_hash(self.loras.fetch(name).path)) for name, _ in loras)
        except (OSError, InvalidInput) as err:  # a file gone since it was loaded: the images go without hashes
            log.warning("file hashes for the images' metadata: %s", err)
            return "", ()

    def aux(
        self,
        key: str,
        what: str,
        source: str,
        setting: str,
        loader: Callable[[], object],
        subfolder: str | None = downloads.WHOLE_REPO,
        filename: str | None = None,
    ) -> object:
        """A model other than FLUX's own (the Redux image encoder, the VQA model, a depth estimator...),
        loaded once through `sources.load` and kept; torch modules are placed on the device.

        `key` identifies the entry ("vqa", "redux-encoder"), `what`, `source` and `setting` go into the
        error message if loading fails. Under memory pressure these go first: see `evict_aux`. A hub repo's
        files are downloaded first, with their progress shown: the whole repo, or its `subfolder` or file
        `filename` where the loader reads only that (see `sources.load`).
        """
        with self._lock:
            if key in self._aux:
                self._aux.move_to_end(key)
            else:
                self.load_counts[key] += 1
                self._aux[key] = sources.load(what, source, setting, loader, subfolder, filename)
            model = self._aux[key]
            if isinstance(model, torch.nn.Module) and not self._on_device(model):
                self.make_room(module_bytes(model) + WORKSPACE_BYTES, keep=(key,))
                self._move(key, model, self.settings.device)
            return model

    @contextmanager
    def lend_aux(
        self, key: str, what: str, source: str, setting: str, loader: Callable[[], object], **fetch: str | None
    ) -> Iterator[object]:
        """`aux(...)`, holding the lock while the caller runs the model, so no other request moves it meanwhile;
        `fetch`: aux's `subfolder` or `filename`."""
        with self._lock:
            model = self.aux(key, what, source, setting, loader, **fetch)
            self._lock.publish()
            yield model

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
        self._check_fits(variant)
        files = [(self.loras.fetch(n), w) for n, w in loras]  # before the lock: a hub LoRA may download
        with self._lock:
            # Only auxiliary models (and the other family's parts) may be evicted for a FLUX run: its own parts
            # are all needed on the device.
            parts = [*self._part_names(variant), f"transformer:{name}"]
            self.make_room(self._bytes_to_place(name) + WORKSPACE_BYTES, keep=parts)
            pipe_cls = getattr(diffusers, pipeline_class or variant.pipeline_class)
            if variant.family == FLUX2:
                text_encoder, tokenizer, vae = self.flux2_parts(variant)
                pipe = pipe_cls(
                    scheduler=self._scheduler(variant),
                    vae=vae,
                    text_encoder=text_encoder,
                    tokenizer=tokenizer,
                    transformer=self.transformer(name),
                    **flux2.pipeline_kwargs(variant, pipe_cls.__name__),
                )
            else:
                pipe = self._flux1_pipeline(variant, pipe_cls)
            pipe.set_progress_bar_config(disable=True)
            self._lock.publish()  # status shows the models this run holds while it runs
            if not variant.has_transformer:
                if files:
                    raise InvalidInput("prompt", f"LoRAs apply to a transformer; {variant.label} has none")
                yield pipe
                return
            self._adapters.activate(pipe, variant.label, files, self.load_counts)
            try:
                yield pipe
            finally:
                self._adapters.deactivate(pipe)  # the text encoders are shared: leave no LoRA active in them

    def _flux1_pipeline(self, variant: Variant, pipe_cls: type):
        """`pipe_cls` around FLUX.1's shared parts and `variant`'s transformer (or, for an image prior such as
        Redux, its own image encoder parts: what it returns conditions the pipeline of `variant.base`)."""
        shared = self.shared()
        text = {
            "text_encoder": shared.text_encoder,
            "tokenizer": shared.tokenizer,
            "text_encoder_2": shared.text_encoder_2,
            "tokenizer_2": shared.tokenizer_2,
        }
        if not variant.has_transformer:
            return pipe_cls(**self._prior_parts(variant), **text)
        return pipe_cls(
            scheduler=self._scheduler(variant), vae=shared.vae, transformer=self.transformer(variant.name), **text
        )

    def _check_fits(self, variant: Variant) -> None:
        """Refuse, before loading anything, a model that cannot fit the GPU under the memory policy (FLUX.2
        [dev] resident below the 141 GB class), naming the policy that would fit."""
        total = (memory.device_usage(self.settings.device) or {}).get("total_gib")
        if variant.weights_gib is None or total is None:
            return
        if why := policies.misfit(self.settings.policy, variant.label, variant.weights_gib, total):
            raise ModelUnavailableError(variant.label, variant.repo_id, why, "See the README's memory policy table.")

    def _loaded_loras(self) -> dict[str, list[str]]:
        """LoRAs loaded into each model, least recently used first."""
        modules = {f"transformer:{n}": m for n, m in self._transformers.items()}
        if self._shared is not None:
            modules["text_encoder"] = self._shared.text_encoder
        return {key: names for key, m in modules.items() if (names := self._adapters.loaded(m))}

    def status(self) -> dict:
        """What is loaded where: shared parts, cached transformers (LRU order) and the active one, the
        memory policy, and memory in use ("memory": GiB figures; "sizes_mib": each loaded model's weights);
        the start-up preload, downloads and the first-start check (`first_start`).

        Never waits for a load or a run: while one holds the registry (`busy`), what is loaded is as it was
        `snapshot_age_s` seconds ago, when the registry last let go or the run began (see `snapshots`); the
        rest is read live. A group-offloaded model's device reads "offloaded": its weights are in RAM, its
        hooks bring each block to the GPU as it runs."""
        held, age = self._lock.read()
        return {
            "policy": self.settings.memory_policy,
            "policy_reason": self.settings.policy_reason,
            "speed": self.settings.speed,
            **held,
            "memory": {
                "gpu": memory.device_usage(self.settings.device),
                "ram": memory.ram_usage(),
                **held.get("memory", {}),
            },
            "device": self.settings.device,
            "dtype": str(self.settings.dtype).removeprefix("torch."),
            "startup": self.startup.snapshot(),
            "downloads": self.downloads.snapshot(),
            "first_start": self.first_start.snapshot(),
            "busy": age is not None,
            "snapshot_age_s": round(age or 0.0, 1),
        }

    def _residency(self) -> dict:
        """The part of `status` that reads the models: taken under the lock (`snapshots.SnapshotLock`)."""

        def where(module: torch.nn.Module) -> str:
            return "offloaded" if placement.is_group_offloaded(module) else str(next(module.parameters()).device)

        models = dict(self.shared_modules())
        models |= {f"transformer:{n}": m for n, m in self._transformers.items()}
        models |= {k: m for k, m in self._aux.items() if isinstance(m, torch.nn.Module)}
        budget = self.settings.ram_budget_bytes
        return {
            "memory": {
                "warm_tier_mib": round(self.warm_bytes() / 2**20, 1),
                "ram_budget_gib": None if budget is None else round(budget / memory.GIB, 2),
                "gpu_transformers": self.settings.gpu_transformers,
                "transformer_cache": self.settings.transformer_cache,
            },
            "sizes_mib": {k: round(module_bytes(m) / 2**20, 1) for k, m in models.items()},
            "shared": {k: where(m) for k, m in self.shared_modules().items()},
            "transformers": [
                {"variant": n, "device": where(m), "active": n == self._active} for n, m in self._transformers.items()
            ],
            "aux": {k: where(m) if isinstance(m, torch.nn.Module) else "cpu" for k, m in self._aux.items()},
            "loras": self._loaded_loras(),
            "load_counts": dict(self.load_counts),
        }
