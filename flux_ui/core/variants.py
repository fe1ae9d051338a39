"""The FLUX models as data: one frozen record per variant, with the defaults its authors publish.

Two families: FLUX.1 (T5-XXL and CLIP-L text encoders, a 16-channel VAE, shared by every variant) and
FLUX.2 (a 32-channel VAE shared by every variant; a Qwen3 text encoder for [klein], Qwen3-4B for 4B and
Qwen3-8B for 9B, shared by the distilled and base models of one size; Mistral Small 3.2 for [dev]).
"""

from __future__ import annotations

from dataclasses import dataclass

DEV_LICENSE = "flux-1-dev-non-commercial-license"
SCHNELL_LICENSE = "apache-2.0"
FLUX2_DEV_LICENSE = "flux-dev-non-commercial-license"  # FLUX.2 [dev]: the FLUX [dev] Non-Commercial License
KLEIN_9B_LICENSE = "flux-non-commercial-license"  # FLUX.2 [klein] 9B: the FLUX Non-Commercial License

FLUX1 = "flux1"
FLUX2 = "flux2"

# (width, height) pairs near one megapixel, all multiples of 16, for text-to-image.
SQUARE_AND_WIDE = (
    (1024, 1024),
    (1152, 896),
    (896, 1152),
    (1216, 832),
    (832, 1216),
    (1344, 768),
    (768, 1344),
    (1536, 640),
    (640, 1536),
)

# The resolutions Kontext [dev] was trained on (listed by its authors); the output size is picked
# from these by the input's aspect ratio.
KONTEXT_RESOLUTIONS = (
    (672, 1568),
    (688, 1504),
    (720, 1456),
    (752, 1392),
    (800, 1328),
    (832, 1248),
    (880, 1184),
    (944, 1104),
    (1024, 1024),
    (1104, 944),
    (1184, 880),
    (1248, 832),
    (1328, 800),
    (1392, 752),
    (1456, 720),
    (1504, 688),
    (1568, 672),
)


@dataclass(frozen=True)
class Variant:
    """One FLUX model and how to run it."""

    name: str  # short key used in the UI, the API and the metadata
    label: str  # human name shown in the UI
    repo_id: str  # Hugging Face repo in diffusers layout
    pipeline_class: str  # diffusers pipeline class name
    task: str  # which tab uses it: text_to_image, kontext, fill, control, redux
    default_steps: int  # denoising steps the authors recommend
    default_guidance: float | None  # distilled guidance; None for guidance-free models
    max_sequence_length: int  # text tokens the model was trained with (T5's for FLUX.1)
    resolutions: tuple[tuple[int, int], ...]  # preferred (width, height) pairs
    license: str  # SPDX-like license id of the weights
    has_transformer: bool = True  # False for Redux, which reuses [dev]'s transformer
    base: str | None = None  # variant whose transformer this one runs on (Redux)
    family: str = FLUX1  # FLUX1 or FLUX2: which shared parts (text encoders, VAE) it runs with
    text_encoder: str | None = None  # FLUX.2: the text encoder it shares with variants of the same key
    inpaint_pipeline_class: str | None = None  # FLUX.2: the pipeline that repaints a masked region, if any
    weights_gib: float | None = None  # FLUX.2: bf16 transformer + text encoder, GiB (what the policies place)

    @property
    def uses_guidance(self) -> bool:
        return self.default_guidance is not None

    @property
    def commercial_use(self) -> bool:
        return self.license == SCHNELL_LICENSE

    @property
    def distilled(self) -> bool:
        """FLUX.2 [klein]: the step-distilled models take no guidance; the base models use CFG."""
        return self.default_guidance is None


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            name="dev",
            label="FLUX.1 [dev]",
            repo_id="black-forest-labs/FLUX.1-dev",
            pipeline_class="FluxPipeline",
            task="text_to_image",
            default_steps=28,
            default_guidance=3.5,
            max_sequence_length=512,
            resolutions=SQUARE_AND_WIDE,
            license=DEV_LICENSE,
        ),
        Variant(
            name="schnell",
            label="FLUX.1 [schnell]",
            repo_id="black-forest-labs/FLUX.1-schnell",
            pipeline_class="FluxPipeline",
            task="text_to_image",
            default_steps=4,
            default_guidance=None,
            max_sequence_length=256,
            resolutions=SQUARE_AND_WIDE,
            license=SCHNELL_LICENSE,
        ),
        Variant(
            name="krea-dev",
            label="FLUX.1 Krea [dev]",
            repo_id="black-forest-labs/FLUX.1-Krea-dev",
            pipeline_class="FluxPipeline",
            task="text_to_image",
            default_steps=28,
            default_guidance=4.5,
            max_sequence_length=512,
            resolutions=SQUARE_AND_WIDE,
            license=DEV_LICENSE,
        ),
        Variant(
            name="kontext-dev",
            label="FLUX.1 Kontext [dev]",
            repo_id="black-forest-labs/FLUX.1-Kontext-dev",
            pipeline_class="FluxKontextPipeline",
            task="kontext",
            default_steps=28,
            default_guidance=2.5,
            max_sequence_length=512,
            resolutions=KONTEXT_RESOLUTIONS,
            license=DEV_LICENSE,
        ),
        Variant(
            name="fill-dev",
            label="FLUX.1 Fill [dev]",
            repo_id="black-forest-labs/FLUX.1-Fill-dev",
            pipeline_class="FluxFillPipeline",
            task="fill",
            default_steps=50,
            default_guidance=30.0,
            max_sequence_length=512,
            resolutions=SQUARE_AND_WIDE,
            license=DEV_LICENSE,
        ),
        Variant(
            name="canny-dev",
            label="FLUX.1 Canny [dev]",
            repo_id="black-forest-labs/FLUX.1-Canny-dev",
            pipeline_class="FluxControlPipeline",
            task="control",
            default_steps=50,
            default_guidance=30.0,
            max_sequence_length=512,
            resolutions=SQUARE_AND_WIDE,
            license=DEV_LICENSE,
        ),
        Variant(
            name="depth-dev",
            label="FLUX.1 Depth [dev]",
            repo_id="black-forest-labs/FLUX.1-Depth-dev",
            pipeline_class="FluxControlPipeline",
            task="control",
            default_steps=50,
            default_guidance=10.0,
            max_sequence_length=512,
            resolutions=SQUARE_AND_WIDE,
            license=DEV_LICENSE,
        ),
        Variant(
            name="redux-dev",
            label="FLUX.1 Redux [dev]",
            repo_id="black-forest-labs/FLUX.1-Redux-dev",
            pipeline_class="FluxPriorReduxPipeline",
            task="redux",
            default_steps=28,
            default_guidance=2.5,
            max_sequence_length=512,
            resolutions=SQUARE_AND_WIDE,
            license=DEV_LICENSE,
            has_transformer=False,
            base="dev",
        ),
        Variant(
            name="flux2-dev",
            label="FLUX.2 [dev]",
            repo_id="black-forest-labs/FLUX.2-dev",
            pipeline_class="Flux2Pipeline",
            task="text_to_image",
            default_steps=50,  # BFL's reference; 28 trades a little detail for speed
            default_guidance=4.0,  # distilled guidance, embedded as in FLUX.1 [dev]
            max_sequence_length=512,
            resolutions=SQUARE_AND_WIDE,
            license=FLUX2_DEV_LICENSE,
            family=FLUX2,
            text_encoder="mistral-small-3.2",
            weights_gib=104.7,  # 32.2B transformer + 24.0B Mistral Small 3.2
        ),
        *(
            Variant(
                name=f"flux2-klein-{kind}{size.lower()}",
                label=f"FLUX.2 [klein] {'base ' if kind else ''}{size}",
                repo_id=f"black-forest-labs/FLUX.2-klein-{kind}{size}",
                pipeline_class="Flux2KleinPipeline",
                task="text_to_image",
                default_steps=50 if kind else 4,  # the distilled models are made for 4 steps
                default_guidance=4.0 if kind else None,  # base: classifier-free guidance; distilled: none
                max_sequence_length=512,
                resolutions=SQUARE_AND_WIDE,
                license=SCHNELL_LICENSE if size == "4B" else KLEIN_9B_LICENSE,
                family=FLUX2,
                text_encoder="qwen3-4b" if size == "4B" else "qwen3-8b",
                inpaint_pipeline_class="Flux2KleinInpaintPipeline",
                # 3.9B transformer + 4.0B Qwen3-4B; 9.1B + 8.2B Qwen3-8B
                weights_gib=14.7 if size == "4B" else 32.2,
            )
            for kind in ("", "base-")
            for size in ("4B", "9B")
        ),
    )
}


@dataclass(frozen=True)
class ControlLora:
    """BFL's structural-control LoRA: turns the [dev] transformer into a Canny or Depth model while loaded."""

    name: str  # short key, also the --model NAME for its source
    label: str  # human name shown in the UI and the metadata
    repo_id: str  # Hugging Face repo holding the LoRA file
    weight_name: str  # the safetensors file in that repo
    base: str  # variant whose transformer it is applied to
    full: str  # the full-transformer variant it stands in for (same guidance and steps)
    default_scale: float = 0.85  # the LoRA scale BFL's reference CLI uses


CONTROL_LORAS: dict[str, ControlLora] = {
    "canny": ControlLora(
        name="canny-dev-lora",
        label="FLUX.1 Canny [dev] LoRA",
        repo_id="black-forest-labs/FLUX.1-Canny-dev-lora",
        weight_name="flux1-canny-dev-lora.safetensors",
        base="dev",
        full="canny-dev",
    ),
    "depth": ControlLora(
        name="depth-dev-lora",
        label="FLUX.1 Depth [dev] LoRA",
        repo_id="black-forest-labs/FLUX.1-Depth-dev-lora",
        weight_name="flux1-depth-dev-lora.safetensors",
        base="dev",
        full="depth-dev",
    ),
}


def get_variant(name: str) -> Variant:
    """Return the variant called `name`; raise a ValueError that lists the valid names otherwise."""
    try:
        return VARIANTS[name]
    except KeyError:
        valid = ", ".join(VARIANTS)
        raise ValueError(f"variant: unknown variant {name!r}; choose one of: {valid}") from None


def variants_for(task: str, family: str | None = None) -> list[Variant]:
    """The variants a tab offers, in table order; only those of `family` when given."""
    return [v for v in VARIANTS.values() if v.task == task and family in (None, v.family)]


def family_variants(family: str) -> list[Variant]:
    """Every variant of `family`, in table order."""
    return [v for v in VARIANTS.values() if v.family == family]


def nearest_resolution(width: int, height: int, resolutions: tuple[tuple[int, int], ...]) -> tuple[int, int]:
    """The (width, height) of `resolutions` whose aspect ratio is closest to width:height; ties go to the
    smaller width. This is the rule Kontext's authors use to pick its working size from an input image."""
    aspect = width / height
    _, w, h = min((abs(aspect - w / h), w, h) for w, h in resolutions)
    return w, h
