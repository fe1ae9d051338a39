import threading
from dataclasses import replace

import numpy as np
import pytest
import torch

from flux_ui.core.errors import ModelUnavailableError
from flux_ui.models.registry import Registry
from flux_ui.tasks.text_to_image import TextToImageParams, text_to_image, validate_text_to_image


def run(registry, variant="dev", seed=3, **kw):
    params = TextToImageParams(prompt="a red fox", variant=variant, width=64, height=64, steps=2, seed=seed, **kw)
    return text_to_image(registry, validate_text_to_image(params, registry.settings))


def test_shared_parts_are_the_same_objects_in_every_variant(registry):
    seen = []
    for name in ("dev", "schnell", "krea-dev"):
        with registry.pipeline(name) as pipe:
            seen.append(pipe)
    first = seen[0]
    for pipe in seen[1:]:
        assert pipe.text_encoder is first.text_encoder
        assert pipe.text_encoder_2 is first.text_encoder_2
        assert pipe.tokenizer is first.tokenizer
        assert pipe.tokenizer_2 is first.tokenizer_2
        assert pipe.vae is first.vae
        assert pipe.transformer is not first.transformer
    for part in ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae"):
        assert registry.load_counts[part] == 1


def test_each_variant_gets_its_own_scheduler_config(registry):
    with registry.pipeline("dev") as dev:
        assert dev.scheduler.config.use_dynamic_shifting
    with registry.pipeline("schnell") as schnell:
        assert not schnell.scheduler.config.use_dynamic_shifting
    assert type(dev).__name__ == "FluxPipeline"


def test_switching_back_costs_no_reload(registry):
    for name in ("dev", "schnell", "dev", "schnell", "dev"):
        registry.transformer(name)
    assert registry.load_counts["transformer:dev"] == 1
    assert registry.load_counts["transformer:schnell"] == 1


def test_lru_evicts_the_least_recently_used(settings):
    registry = Registry(replace(settings, transformer_cache=2))
    registry.transformer("dev")
    registry.transformer("schnell")
    registry.transformer("dev")  # dev is now the most recent
    registry.transformer("krea-dev")  # evicts schnell, not dev
    cached = [t["variant"] for t in registry.status()["transformers"]]
    assert cached == ["dev", "krea-dev"]
    registry.transformer("dev")
    assert registry.load_counts["transformer:dev"] == 1
    registry.transformer("schnell")
    assert registry.load_counts["transformer:schnell"] == 2


def test_status_reports_what_is_where(registry):
    assert registry.status()["transformers"] == []
    registry.transformer("schnell")
    with registry.pipeline("dev"):
        pass
    st = registry.status()
    assert st["device"] == "cpu" and st["dtype"] == "float32"
    assert st["shared"] == {"text_encoder": "cpu", "text_encoder_2": "cpu", "vae": "cpu"}
    assert st["transformers"] == [
        {"variant": "schnell", "device": "cpu", "active": False},
        {"variant": "dev", "device": "cpu", "active": True},
    ]


def test_free_memory_keeps_shared_parts(registry):
    with registry.pipeline("dev") as pipe:
        vae = pipe.vae
    registry.free_memory()
    assert registry.status()["transformers"] == []
    with registry.pipeline("dev") as pipe:
        assert pipe.vae is vae
    assert registry.load_counts["transformer:dev"] == 2


def test_missing_model_is_explained_and_registry_stays_usable(settings, tmp_path):
    registry = Registry(replace(settings, model_paths={"krea-dev": str(tmp_path / "nowhere")}))
    with pytest.raises(ModelUnavailableError) as err:
        registry.transformer("krea-dev")
    msg = str(err.value)
    assert "FLUX.1 Krea [dev] transformer" in msg and "nowhere" in msg and "--model krea-dev" in msg
    assert registry.status()["transformers"] == []
    assert run(registry).images[0].image.size == (64, 64)


def test_unknown_variant(registry):
    with pytest.raises(ValueError, match="choose one of"), registry.pipeline("flux-pro"):
        pass


def test_concurrent_requests_for_different_variants_get_what_they_asked_for(settings):
    reference = Registry(settings)
    expected = {v: np.asarray(run(reference, v).images[0].image) for v in ("dev", "schnell", "krea-dev")}
    assert not np.array_equal(expected["dev"], expected["schnell"])

    registry = Registry(replace(settings, transformer_cache=1))  # forces a swap on every switch
    results, errors = {}, []

    def worker(variant, i):
        try:
            results[(variant, i)] = np.asarray(run(registry, variant).images[0].image)
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(v, i)) for i in range(3) for v in expected]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for (variant, _), image in results.items():
        np.testing.assert_array_equal(image, expected[variant])


def test_aux_models_load_once_and_are_evicted_before_flux_parts(registry):
    loads = []

    def loader():
        loads.append(1)
        return torch.nn.Linear(2, 2)

    a = registry.aux("probe", "probe model", "tiny", "--probe", loader)
    assert registry.aux("probe", "probe model", "tiny", "--probe", loader) is a and len(loads) == 1
    with registry.pipeline("dev") as pipe:
        vae = pipe.vae
    assert registry.status()["aux"] == {"probe": "cpu"}
    assert registry.evict_aux() == ["probe"]  # on the CPU already: dropped
    assert registry.status()["aux"] == {}
    with registry.pipeline("dev") as pipe:
        assert pipe.vae is vae  # the shared parts stayed
    assert registry.load_counts["transformer:dev"] == 1


def test_aux_loading_failure_is_explained(registry):
    def loader():
        raise OSError("no file named config.json")

    with pytest.raises(ModelUnavailableError, match="probe model"):
        registry.aux("probe", "probe model", "/no/such/dir", "--probe", loader)
    assert registry.status()["aux"] == {}


def test_warm_tier_packs_weights_into_one_buffer_without_changing_them(registry):
    """The packing behind the pinned warm tier (pinning itself needs CUDA; the layout does not)."""
    from flux_ui.models.tiers import PinnedWeights

    model = registry.transformer("dev")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    packed = PinnedWeights(model, pin=False)
    assert packed.matches(model)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
        assert value.untyped_storage().data_ptr() == packed.buffer.untyped_storage().data_ptr()
    packed.place(model, "cpu")
    run_after = run(registry)
    registry.free_memory()
    assert np.array_equal(np.asarray(run_after.images[0].image), np.asarray(run(registry).images[0].image))
