"""Loading LoRAs into the models they change, once, and choosing for each request which ones are active.

diffusers and PEFT do the work: `lora_state_dict` converts the formats people download (diffusers/PEFT,
Kohya, XLabs, ...) to diffusers' layout, `load_lora_into_transformer` and `load_lora_into_text_encoder`
attach a LoRA as a named PEFT adapter, and PEFT's layers weight, activate and disable adapters. Adapters
live inside the modules they change, so what is loaded is recorded per module, weakly: when the registry
drops a transformer, its adapters and their record go with it, and loading a LoRA into a second variant's
transformer is a second load. Activating loaded LoRAs, or changing their weights, reads no file.

FLUX.2 LoRAs go through diffusers' Flux2LoraLoaderMixin the same way (transformer part only: diffusers has
no text-encoder LoRA loading for FLUX.2's encoders).

A LoRA's CLIP part changes the CLIP text encoder that every variant shares: it is loaded into it once and
is active only while a request that names the LoRA holds the pipeline; every other use sees the plain
encoder. (diffusers drops T5 parts: it has no T5 LoRA support.)

Why not `pipe.load_lora_weights`: it loads the CLIP part again for each variant (and fails, the shared
CLIP already holding that adapter), and for Control LoRAs it widens the transformer's input layer and
overwrites norm weights in place, which no later "disable" undoes. So the two parts are loaded separately
here, and Control LoRAs are refused before anything is touched.

A compiled or float8 transformer (the speed profiles, the fp8-24gb policy) takes no PEFT layers: there a
LoRA's transformer part is kept as low-rank factors and merged into the weights for the request
(`lora_merge`); its CLIP part is a PEFT adapter as above.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import warnings
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from weakref import WeakKeyDictionary

import torch

from flux_ui.core.errors import InvalidInput
from flux_ui.models.loras import lycoris
from flux_ui.models.loras import merge as lora_merge
from flux_ui.models.loras.library import LoraFile, header_metadata

log = logging.getLogger(__name__)

LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # diffusers writes the LoraConfig (alpha, rank) here
# Keys of Control LoRAs (BFL's Canny/Depth LoRAs): they replace norm weights and widen the input layer.
_CONTROL_KEY = re.compile(r"(query_norm|key_norm)\.scale$|\.norm_(added_)?[qk]\.weight$")
# BFL's own module names, as their flux repo's LinearLora saves them (lora_A/lora_B under these).
_BFL_KEY = re.compile(
    r"^(diffusion_model\.)?(double_blocks|single_blocks|img_in|txt_in|time_in|vector_in|guidance_in|final_layer)\."
)
_TE_DOWN = re.compile(r"(lora_A\.weight|\.down\.weight)$")  # one per CLIP layer a LoRA changes, in any layout
# What conversion and loading raise on a file that does not fit: diffusers' converters pop keys (KeyError),
# assert shapes (AssertionError) and raise ValueError; PEFT and torch raise ValueError or RuntimeError.
LOAD_ERRORS = (ValueError, RuntimeError, KeyError, AssertionError, IndexError, TypeError)
LYCORIS = lycoris.MARKER
_FACTOR = re.compile(r"\.(?:lora_|lokr_|hada_)")  # where a layer's name ends in a LoRA/LyCORIS key


@contextmanager
def _expected_peft_warnings() -> Iterator[None]:
    """Silence what PEFT warns about by design here: several adapters in one model, and a new active
    adapter when an active one is deleted (each request sets the active ones anyway)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute", category=UserWarning)
        warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted", category=UserWarning)
        yield


def adapter_name(name: str) -> str:
    """PEFT keeps adapters in ModuleDicts, whose keys may not contain '.': a safe, unique name per LoRA."""
    slug = re.sub(r"\W", "_", name)[:40]
    return f"{slug}_{hashlib.sha1(name.encode()).hexdigest()[:8]}"


@dataclass
class Loaded:
    """One LoRA loaded into one module."""

    adapter: str  # its PEFT adapter name
    signature: tuple[str, int, int]  # the file it came from (path, mtime, size)
    has_text_encoder: bool = False  # the LoRA also carries CLIP weights (recorded on transformer entries)
    deltas: dict[str, lora_merge.Delta] | None = None  # merged per request instead of a PEFT adapter


class AdapterCache:
    """The LoRA adapters loaded into each module, least recently used first, at most `keep` per module.

    Not thread-safe by itself: the registry calls it under its lock.
    """

    def __init__(self, keep: int):
        self.keep = max(keep, 1)
        self._loaded: WeakKeyDictionary[torch.nn.Module, OrderedDict[str, Loaded]] = WeakKeyDictionary()
        # Per merging transformer: the LoRA set merged into its weights now, and what to copy back.
        self._merged: WeakKeyDictionary[torch.nn.Module, tuple[tuple, lora_merge.Merged]] = WeakKeyDictionary()

    def loaded(self, module: torch.nn.Module) -> list[str]:
        """Names of the LoRAs loaded into `module`, least recently used first."""
        return list(self._loaded.get(module, {}))

    def activate(
        self,
        pipe,
        model_label: str,
        requested: Sequence[tuple[LoraFile, float]],
        reads: Counter[str],
    ) -> None:
        """Make exactly `requested` active in `pipe` (its transformer and CLIP), with their weights.

        LoRAs not yet in these modules are read (counted in `reads["lora:NAME"]`) and loaded; with nothing
        requested every adapter is disabled, so the output is the base model's, bit for bit. A LoRA that
        does not fit raises InvalidInput (field `prompt`) and leaves the modules as they were.

        A compiled or float8 transformer gets the LoRAs merged into its weights, and they stay merged after
        the request, until a request asks for another set (or none) or `release` is called: the same LoRAs
        again cost nothing.
        """
        transformer, clip = pipe.transformer, pipe.text_encoder
        merging = lora_merge.needs_merge(transformer)
        for lora, _ in requested:
            self._ensure(pipe, model_label, lora, reads, merging)
        names = {lora.name for lora, _ in requested}
        self._evict(transformer, names)
        self._evict(clip, names)
        on_transformer = self._loaded.get(transformer, {})
        on_clip = self._loaded.get(clip, {})
        if merging:
            entries = [(on_transformer[lora.name], w) for lora, w in requested if w]
            key = tuple(sorted((e.signature, w) for e, w in entries))
            if key != self._merged.get(transformer, ((), None))[0]:
                self.release(transformer)
                if entries:
                    merged = lora_merge.merge(transformer, [(e.deltas, w) for e, w in entries], lora_merge.seed_of(key))
                    self._merged[transformer] = (key, merged)
        else:
            _apply(transformer, [(on_transformer[lora.name].adapter, w) for lora, w in requested])
        _apply(clip, [(on_clip[lora.name].adapter, w) for lora, w in requested if lora.name in on_clip])

    def deactivate(self, pipe) -> None:
        """Disable every adapter of `pipe`'s transformer and CLIP (the shared CLIP above all). LoRAs merged
        into the transformer stay until the next `activate` or `release`."""
        _apply(pipe.transformer, [])
        _apply(pipe.text_encoder, [])

    def release(self, module: torch.nn.Module) -> bool:
        """Copy the original weights back into `module` if LoRAs are merged into it; True if it had some.
        The registry calls this before moving a transformer and when it needs the device memory the
        originals take."""
        key_merged = self._merged.pop(module, None)
        if key_merged is None:
            return False
        lora_merge.restore(module, key_merged[1])
        return True

    def release_all(self) -> bool:
        """`release` every transformer with merged LoRAs; True if there was one."""
        released = [self.release(m) for m in list(self._merged.keys())]  # all of them, not up to the first
        return any(released)

    # -- loading ----------------------------------------------------------------------------------------

    def _ensure(self, pipe, label: str, lora: LoraFile, reads: Counter[str], merging: bool) -> None:
        """Load `lora` into the transformer (and its CLIP part into the CLIP) unless it is there already;
        `merging`: keep the transformer part as factors to merge, checked against the transformer."""
        on_transformer = self._loaded.setdefault(pipe.transformer, OrderedDict())
        on_clip = self._loaded.setdefault(pipe.text_encoder, OrderedDict())
        for module, cache in ((pipe.transformer, on_transformer), (pipe.text_encoder, on_clip)):
            old = cache.get(lora.name)
            if old is not None and old.signature != lora.signature:
                log.info("LoRA %r changed on disk: loading it afresh", lora.name)
                _drop(module, cache.pop(lora.name))
            elif old is not None:
                cache.move_to_end(lora.name)
        entry = on_transformer.get(lora.name)
        if entry is not None and not (entry.has_text_encoder and lora.name not in on_clip):
            return
        sd, alphas, meta = _read(pipe, lora, reads)
        adapter = adapter_name(lora.name)
        has_te = any(k.startswith("text_encoder.") for k in sd)
        loaded_now = entry is None
        if loaded_now and merging:
            on_transformer[lora.name] = Loaded(
                adapter, lora.signature, has_te, _merge_factors(pipe.transformer, label, lora.name, sd, alphas, meta)
            )
        elif loaded_now:
            _load_transformer_part(pipe, label, lora.name, adapter, sd, alphas, meta)
            on_transformer[lora.name] = Loaded(adapter, lora.signature, has_te)
        if has_te and lora.name not in on_clip:
            try:
                _load_clip_part(pipe, label, lora.name, adapter, sd, alphas, meta)
            except InvalidInput:
                if loaded_now:  # all or nothing: take the transformer part out again
                    _drop(pipe.transformer, on_transformer.pop(lora.name))
                raise
            on_clip[lora.name] = Loaded(adapter, lora.signature, True)

    def _evict(self, module: torch.nn.Module, keep: set[str]) -> None:
        cache = self._loaded.get(module)
        while cache and len(cache) > self.keep:
            victim = next((n for n in cache if n not in keep), None)
            if victim is None:
                return
            log.info("dropping LoRA %r from %s (least recently used)", victim, type(module).__name__)
            _drop(module, cache.pop(victim))


def _read(pipe, lora: LoraFile, reads: Counter[str]) -> tuple[dict, dict | None, dict | None]:
    """Read a LoRA file and convert it to diffusers' layout: (state dict, network alphas, LoraConfig)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(lora.path), framework="pt") as f:  # the header only: refuse before reading tensors
            keys = list(f.keys())
        header = header_metadata(lora.path)
    except (OSError, SafetensorError) as err:
        msg = f"{lora.path.name} is not a valid .safetensors file ({err})"
        raise InvalidInput("prompt", f"LoRA {lora.name!r}: {msg}") from None
    if lycoris.kind(keys):
        return lycoris.read(pipe, lora, reads)
    if not any("lora" in k.lower() for k in keys):
        msg = f"{lora.path.name} holds no LoRA weights (is it a full model?)"
        raise InvalidInput("prompt", f"LoRA {lora.name!r}: {msg}")
    if control := next((k for k in keys if _CONTROL_KEY.search(k)), None):
        raise InvalidInput(
            "prompt",
            f"LoRA {lora.name!r} is a Control LoRA (it replaces norm weights such as {control} and widens the "
            "model's input): it turns [dev] into a Canny/Depth model and cannot be applied as a style LoRA",
        )
    reads[f"lora:{lora.name}"] += 1
    log.info("reading LoRA %r from %s", lora.name, lora.path)
    try:
        state = load_file(lora.path)
    except (OSError, SafetensorError) as err:
        raise InvalidInput("prompt", f"LoRA {lora.name!r}: {lora.path.name} could not be read ({err})") from None
    flux2 = _is_flux2(pipe)
    try:
        if flux2:  # Flux2LoraLoaderMixin: diffusers, Kohya, PEFT, ai-toolkit and LyCORIS LoKr; no alphas apart
            sd, _ = pipe.lora_state_dict(state, return_lora_metadata=True)
            alphas = None
        else:
            sd, alphas, _ = pipe.lora_state_dict(_bfl_to_kohya(state), return_alphas=True, return_lora_metadata=True)
    except LOAD_ERRORS as err:
        raise InvalidInput(
            "prompt", f"LoRA {lora.name!r} is in no FLUX LoRA layout diffusers can read ({_brief(err)})"
        ) from None
    if flux2 and any(k.startswith("text_encoder.") for k in sd):
        # diffusers 0.42.1 loads no text-encoder LoRA into FLUX.2's Qwen3 / Mistral encoders: that part goes,
        # as diffusers drops T5 parts of FLUX.1 LoRAs.
        log.info("LoRA %r: its text-encoder part is not applied to FLUX.2", lora.name)
        sd = {k: v for k, v in sd.items() if not k.startswith("text_encoder.")}
    # diffusers 0.42.1's Kohya converter leaves the layers outside the blocks (img_in, txt_in, time_in,
    # vector_in, guidance_in, final_layer) without the "transformer." prefix its loader filters on, so they
    # would be dropped without a word: give them the prefix (and the fit check below its due).
    sd = {k if k.startswith(("transformer.", "text_encoder.")) else f"transformer.{k}": v for k, v in sd.items()}
    if not any(k.startswith("transformer.") for k in sd):
        raise InvalidInput("prompt", f"LoRA {lora.name!r} holds no weights for the FLUX transformer")
    raw = header.get(LORA_ADAPTER_METADATA_KEY)
    meta = json.loads(raw) if raw and not alphas else None  # diffusers takes one or the other
    return sd, alphas or None, meta


def _is_flux2(pipe) -> bool:
    """A FLUX.2 pipeline: its LoRA loader (Flux2LoraLoaderMixin) reads other layouts and takes no alphas."""
    return type(pipe).__name__.startswith("Flux2")


def _bfl_to_kohya(state: dict) -> dict:
    """Respell BFL's own layout (`double_blocks.0.img_attn.qkv.lora_A.weight`, maybe under
    `diffusion_model.`) in Kohya's (`lora_down`/`lora_up`): diffusers 0.42.1 converts BFL's module names
    only in that spelling, and takes BFL-named lora_A/lora_B keys for its own layout, loading nothing.
    Without alpha keys the scale stays 1, as in BFL's LinearLora."""
    if not state or any("processor" in k or ".lora_down." in k for k in state):  # XLabs or Kohya already
        return state
    if not all(_BFL_KEY.match(k) for k in state):
        return state
    out = {}
    for key, value in state.items():
        key = key if key.startswith("diffusion_model.") else f"diffusion_model.{key}"
        out[key.replace(".lora_A.weight", ".lora_down.weight").replace(".lora_B.weight", ".lora_up.weight")] = value
    return out


def _load_transformer_part(pipe, label: str, name: str, adapter: str, sd: dict, alphas, meta) -> None:
    transformer = pipe.transformer
    expected = {_FACTOR.split(k.removeprefix("transformer."))[0] for k in sd if k.startswith("transformer.")}
    kind = (meta or {}).get(LYCORIS)
    try:
        with _expected_peft_warnings():
            if kind == "LoHa":
                lycoris.load_loha(transformer, sd, alphas, adapter)
            else:
                pipe.load_lora_into_transformer(
                    sd,
                    **({} if _is_flux2(pipe) else {"network_alphas": alphas}),  # FLUX.2's loader takes none
                    transformer=transformer,
                    adapter_name=adapter,
                    metadata=None if kind else meta,
                    _pipeline=pipe,
                    # The adapter layers are made empty and filled from the file, not randomly initialised first.
                    low_cpu_mem_usage=True,
                )
    except LOAD_ERRORS as err:
        _purge(transformer, adapter)
        raise _misfit(name, label, _brief(err)) from None
    _check_arrived(transformer, adapter, expected, name, label)


def _check_arrived(transformer, adapter: str, expected: set[str], name: str, label: str) -> None:
    """Keys naming layers the model lacks are skipped by PEFT with a log line only: a partial LoRA would
    pass for a working one, so count what arrived."""
    missing = expected - _modules_with(transformer, adapter)
    if missing:
        _purge(transformer, adapter)
        raise _misfit(
            name, label, f"{len(missing)} of the {len(expected)} layers it changes are not in it, e.g. {min(missing)}"
        )


def _merge_factors(transformer, label: str, name: str, sd: dict, alphas, meta) -> dict[str, lora_merge.Delta]:
    """The transformer part as factors to merge, checked to fit `transformer` (kept in RAM, pinned when
    there is a GPU, so merging copies them to it asynchronously)."""
    if kind := (meta or {}).get(LYCORIS):
        reason = f"a LyCORIS {kind} is not a low-rank pair to merge into compiled or float8 weights; use --speed off"
        raise _misfit(name, label, reason)
    try:
        deltas = lora_merge.pin(lora_merge.parse(sd, alphas, meta))
        lora_merge.check_fit(transformer, deltas)
    except lora_merge.MergeError as err:
        raise _misfit(name, label, str(err)) from None
    except LOAD_ERRORS as err:
        raise _misfit(name, label, _brief(err)) from None
    return deltas


def _load_clip_part(pipe, label: str, name: str, adapter: str, sd: dict, alphas, meta) -> None:
    clip = pipe.text_encoder
    expected = sum(1 for k in sd if k.startswith("text_encoder.") and _TE_DOWN.search(k))
    try:
        with _expected_peft_warnings():
            pipe.load_lora_into_text_encoder(
                sd,
                network_alphas=alphas,
                text_encoder=clip,
                prefix="text_encoder",
                adapter_name=adapter,
                metadata=meta,
                _pipeline=pipe,
            )
    except LOAD_ERRORS as err:
        _purge(clip, adapter)
        raise _misfit(name, label, f"its CLIP text-encoder part: {_brief(err)}") from None
    got = len(_modules_with(clip, adapter))
    if got < expected:
        _purge(clip, adapter)
        raise _misfit(name, label, f"{expected - got} of the {expected} CLIP layers it changes are not in the encoder")


def _modules_with(module: torch.nn.Module, adapter: str) -> set[str]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {
        n
        for n, m in module.named_modules()
        if isinstance(m, BaseTunerLayer) and any(adapter in getattr(m, a) for a in m.adapter_layer_names)
    }


def _apply(module: torch.nn.Module, active: list[tuple[str, float]]) -> None:
    """Activate exactly these (adapter, weight) pairs in `module`, or disable its adapters if none: what
    diffusers' `set_adapters` and `disable_lora` do, for any module (the FLUX transformer or CLIP)."""
    from diffusers.utils.peft_utils import set_adapter_layers, set_weights_and_activate_adapters

    if not active:
        set_adapter_layers(module, enabled=False)  # adapter-free forward: the base output, bit for bit
        return
    # PEFT adds the adapters' outputs in the order given; a fixed order makes a set of LoRAs give the same
    # image, bit for bit, however the prompt orders its tags.
    active = sorted(active)
    set_weights_and_activate_adapters(module, [a for a, _ in active], [w for _, w in active])
    set_adapter_layers(module, enabled=True)


def _drop(module: torch.nn.Module, entry: Loaded) -> None:
    """Forget a loaded LoRA: factors kept for merging just go; a PEFT adapter is purged from `module`."""
    if entry.deltas is None:
        _purge(module, entry.adapter)


def _purge(module: torch.nn.Module, adapter: str) -> None:
    """Remove every trace of `adapter` from `module`, including what a failed load left half-registered;
    once no adapter is left, unwrap the PEFT layers so the module is structurally the original again."""
    from diffusers.utils.peft_utils import recurse_remove_peft_layers
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in module.modules() if isinstance(m, BaseTunerLayer)]
    with _expected_peft_warnings():
        for layer in layers:
            layer.delete_adapter(adapter)
    config = getattr(module, "peft_config", None)
    if isinstance(config, dict):
        config.pop(adapter, None)
    if not any(getattr(m, a) for m in layers for a in m.adapter_layer_names):
        recurse_remove_peft_layers(module)
        if hasattr(module, "peft_config"):
            del module.peft_config
        if hasattr(module, "_hf_peft_config_loaded"):
            module._hf_peft_config_loaded = False


def _brief(err: BaseException) -> str:
    """The telling line of a loading error (torch's size-mismatch line where there is one), shortened."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()] or [type(err).__name__]
    line = next((ln for ln in lines if "size mismatch" in ln), lines[0])
    return line if len(line) <= 300 else line[:297] + "..."


def _misfit(name: str, label: str, reason: str) -> InvalidInput:
    return InvalidInput("prompt", f"LoRA {name!r} does not fit {label}: {reason}. The model is left as it was")
