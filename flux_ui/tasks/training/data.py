"""The training set as the model sees it: images cut to aspect-ratio buckets, encoded once into latents,
captions encoded once into text embeddings, and the batches of each step.

Encoding once is what lets the text encoders and the VAE's encoder leave the GPU before the first step:
T5-XXL alone is 9.5 GB in bf16. Batches are drawn from a generator seeded by (seed, step), so a resumed
run draws the same batches, noise and timesteps it would have drawn without the pause.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

PATCH = 16  # pixels per transformer token side: the VAE's 8x, then 2x2 packing


@dataclass
class Example:
    """One training image, encoded."""

    latents: torch.Tensor  # (16, h, w), scaled and shifted as the transformer expects, float32
    prompt_embeds: torch.Tensor  # (tokens, 4096) T5 embedding of the caption
    pooled: torch.Tensor  # (768,) CLIP pooled embedding
    bucket: tuple[int, int]  # (width, height) in pixels


def bucket_step(resolution: int) -> int:
    """Side steps between buckets: 64 px at 1024, 32 at 512, never under one token (16 px)."""
    return max(PATCH, resolution // 16 // PATCH * PATCH)


def buckets(resolution: int) -> list[tuple[int, int]]:
    """(width, height) pairs of at most resolution² pixels, sides multiples of `bucket_step`, aspect ratios
    from 1:2 to 2:1: for each width the tallest height that fits."""
    step = bucket_step(resolution)
    out = []
    for w in range(max(step, resolution // 2 // step * step), 2 * resolution + 1, step):
        h = min(resolution * resolution // w // step * step, 2 * w)
        if h >= max(step, w // 2):
            out.append((w, h))
    return out


def bucket_for(size: tuple[int, int], choices: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest the image's (in log scale: 1:2 is as far from 1:1 as 2:1)."""
    ratio = np.log(size[0] / size[1])
    return min(choices, key=lambda b: abs(np.log(b[0] / b[1]) - ratio))


def fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`image` scaled to cover `size` and cropped at the centre (the crop loses the least of the subject)."""
    return ImageOps.fit(image, size, method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB image -> (3, H, W) in [-1, 1], as the VAE reads pixels."""
    arr = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0)
    return arr.permute(2, 0, 1)


@torch.no_grad()
def encode_prompts(pipe, prompts: list[str], device: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(T5 embedding, CLIP pooled embedding) per prompt, with the pipeline's own encoders and lengths
    (512 T5 tokens for [dev], as at inference), in float32 in CPU RAM."""
    out = []
    for prompt in prompts:
        embeds, pooled, _ = pipe.encode_prompt(prompt, prompt_2=None, device=device, max_sequence_length=512)
        out.append((embeds[0].float().cpu(), pooled[0].float().cpu()))  # to the GPU per step: 8 MB each
    return out


@torch.no_grad()
def encode_images(vae, images: tuple[Image.Image, ...], resolution: int, device: str) -> list[tuple]:
    """(latents, bucket) per image: cut to its bucket, encoded by the VAE (the mean of its latent
    distribution, as kohya's cache stores it), shifted and scaled as the pipelines do before decoding."""
    choices = buckets(resolution)
    out = []
    for image in images:
        bucket = bucket_for(image.size, choices)
        pixels = to_tensor(fit(image, bucket))[None].to(device, vae.dtype)
        latents = vae.encode(pixels).latent_dist.mode()
        latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
        out.append((latents[0].float().cpu(), bucket))
    return out


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of one step: the same batch, noise and timesteps for the same (seed, step)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % 2**63)


def draw_batch(examples: list[Example], batch: int, gen: torch.Generator) -> list[Example]:
    """One image at random, then up to `batch - 1` others from its bucket (a batch shares one size)."""
    by_bucket: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        by_bucket[ex.bucket].append(i)
    first = int(torch.randint(len(examples), (1,), generator=gen))
    mates = [i for i in by_bucket[examples[first].bucket] if i != first]
    order = torch.randperm(len(mates), generator=gen).tolist()
    return [examples[first], *(examples[mates[j]] for j in order[: batch - 1])]
