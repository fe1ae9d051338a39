"""Model names as other tools' clients send them, mapped to our text-to-image variants.

OpenAI clients name their own models ("dall-e-3", "gpt-image-1"); A1111 clients send a checkpoint title
("flux1-dev.safetensors [a1b2c3d4]"); people write the hub repo or the family name. All of these resolve
here, so the OpenAI and A1111 APIs accept the same names.
"""

from __future__ import annotations

import re

from flux_ui.core.errors import InvalidInput
from flux_ui.core.variants import VARIANTS, Variant

DEFAULT_VARIANT = "dev"  # what OpenAI's own model names (and no name at all) map to
OPENAI_PREFIXES = ("dall-e", "gpt-image")  # dall-e-2, dall-e-3, gpt-image-1, gpt-image-1-mini, ...
_HASH = re.compile(r"\s*\[[0-9a-f]{6,64}\]$")  # an A1111 title's trailing short hash


def text_to_image_variants() -> list[Variant]:
    return [v for v in VARIANTS.values() if v.task == "text_to_image"]


def aliases(variant: Variant) -> set[str]:
    """Every lower-case name `variant` answers to: dev, flux.1-dev, flux1-dev, flux-dev,
    black-forest-labs/flux.1-dev, FLUX.1 [dev] and the same with .safetensors."""
    repo = variant.repo_id.lower()
    short = repo.rsplit("/", 1)[-1]  # flux.1-dev, flux.1-krea-dev
    names = {variant.name, repo, short, short.replace(".", ""), short.replace("flux.1", "flux"), variant.label.lower()}
    return names | {f"{n}.safetensors" for n in names}


def resolve_variant(name: object, field: str, default: str = DEFAULT_VARIANT) -> str:
    """The text-to-image variant `name` means; None or "" gives `default`, and OpenAI's model names give
    DEFAULT_VARIANT. Raise InvalidInput naming `field` and the valid names otherwise."""
    if name is None or name == "":
        return default
    if not isinstance(name, str):
        raise InvalidInput(field, f"expected a model name, got {name!r}")
    key = _HASH.sub("", name.strip()).lower()
    if key.startswith(OPENAI_PREFIXES):
        return DEFAULT_VARIANT
    for variant in text_to_image_variants():
        if key in aliases(variant):
            return variant.name
    valid = ", ".join(v.name for v in text_to_image_variants())
    raise InvalidInput(field, f"unknown model {name!r:.80}; choose one of: {valid} (or their hub repo ids)")
