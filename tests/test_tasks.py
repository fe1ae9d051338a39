import numpy as np
import pytest
import torch

from flux_ui.core.errors import Cancelled
from flux_ui.models.preview import LatentPreviewer
from flux_ui.tasks.jobs import Job
from flux_ui.tasks.text_to_image import TextToImageParams, text_to_image, validate_text_to_image


def params(settings, **kw):
    base = {"prompt": "a red fox", "width": 96, "height": 64, "steps": 3, "seed": 11}
    return validate_text_to_image(TextToImageParams(**{**base, **kw}), settings)


def pixels(result, i=0):
    return np.asarray(result.images[i].image)


def test_same_seed_same_image_other_seed_other_image(registry, settings):
    a = text_to_image(registry, params(settings))
    b = text_to_image(registry, params(settings))
    c = text_to_image(registry, params(settings, seed=12))
    assert a.images[0].image.size == (96, 64)
    np.testing.assert_array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))


def test_batch_uses_consecutive_seeds(registry, settings):
    batch = text_to_image(registry, params(settings, num_images=2))
    single = text_to_image(registry, params(settings, seed=12))
    assert [i.meta.seed for i in batch.images] == [11, 12]
    np.testing.assert_array_equal(pixels(batch, 1), pixels(single))


def test_random_seed_is_reported(registry, settings):
    result = text_to_image(registry, params(settings, seed=-1))
    assert 0 <= result.seed < 2**32 and result.images[0].meta.seed == result.seed


def test_meta_records_the_request(registry, settings):
    meta = text_to_image(registry, params(settings, variant="schnell", steps=2)).images[0].meta
    assert (meta.prompt, meta.variant, meta.steps, meta.guidance, meta.width, meta.height) == (
        "a red fox",
        "schnell",
        2,
        None,
        96,
        64,
    )


def test_prompt_changes_the_image(registry, settings):
    a = text_to_image(registry, params(settings))
    b = text_to_image(registry, params(settings, prompt="a blue chair"))
    assert not np.array_equal(pixels(a), pixels(b))


def test_step_events_and_previews(registry, settings):
    events = []
    text_to_image(registry, params(settings, num_images=2), on_step=events.append)
    assert [(e.image_index, e.step, e.done, e.total) for e in events] == [
        (0, 1, 1, 6),
        (0, 2, 2, 6),
        (0, 3, 3, 6),
        (1, 1, 4, 6),
        (1, 2, 5, 6),
        (1, 3, 6, 6),
    ]
    previews = [e.preview for e in events if e.preview is not None]
    assert len(previews) == 4  # every step but the last of each image (preview_every=1)
    assert all(p.size == (96, 64) for p in previews)


def test_cancel_stops_after_the_current_step(registry, settings):
    events = []
    with pytest.raises(Cancelled):
        text_to_image(registry, params(settings, steps=5), on_step=events.append, should_stop=lambda: len(events) >= 2)
    assert len(events) == 2


def test_job_streams_events_and_returns_the_result(registry, settings):
    job = Job(lambda on_step, stop: text_to_image(registry, params(settings), on_step, stop))
    assert [e.step for e in job] == [1, 2, 3]
    assert job.result.images[0].image.size == (96, 64)


def test_abandoned_job_is_cancelled_and_joined(registry, settings):
    job = Job(lambda on_step, stop: text_to_image(registry, params(settings, steps=20), on_step, stop))
    it = iter(job)
    next(it)
    it.close()  # what a cancelled Gradio event does to its generator
    assert job.cancel_event.is_set()
    assert job.result is None
    with registry.pipeline("dev"):  # the lock is free again
        pass


def test_job_reraises_task_errors():
    def boom(on_step, stop):
        raise RuntimeError("out of luck")

    with pytest.raises(RuntimeError, match="out of luck"):
        list(Job(boom))


class LinearVAE(torch.nn.Module):
    """A VAE whose encoder is a known linear map of 8x8-pooled RGB, so a correct fit can be checked.

    The tiny random VAE cannot serve here: its untrained encoder carries almost no colour, whatever the fit.
    """

    def __init__(self):
        super().__init__()
        self.mix = torch.nn.Parameter(torch.randn(16, 3, generator=torch.Generator().manual_seed(0)))
        self.config = type("Config", (), {"shift_factor": 0.1159, "scaling_factor": 0.3611})()

    def encode(self, images):
        pooled = torch.nn.functional.avg_pool2d(images, 8)
        mean = torch.einsum("lc,bchw->blhw", self.mix, pooled) / self.config.scaling_factor
        return type("Out", (), {"latent_dist": type("Dist", (), {"mean": mean + self.config.shift_factor})()})()


def test_preview_projection_recovers_colours_of_a_linear_vae():
    vae = LinearVAE()
    prev = LatentPreviewer(vae, seed=1)
    colour = torch.tensor([0.8, -0.6, 0.1])
    latents = torch.einsum("lc,c->l", vae.mix.detach(), colour).view(1, 16, 1, 1).expand(1, 16, 4, 4)
    rgb = np.asarray(prev.to_image(latents)).reshape(-1, 3).mean(0) / 127.5 - 1
    np.testing.assert_allclose(rgb, colour.numpy(), atol=0.02)


def test_preview_of_tiny_model_is_sized_to_the_image(registry):
    latents = torch.randn(1, 16, 8, 12)
    assert registry.previewer().to_image(latents, (96, 64)).size == (96, 64)
