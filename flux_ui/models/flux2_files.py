"""Reading FLUX.2's parts from single files, as ComfyUI users keep them (see `flux2_layouts` for what each
file holds and how it is told apart).

- Transformers (BFL / ComfyUI keys, or diffusers'; safetensors, float8 dequantised, or GGUF kept quantised)
  through `Flux2Transformer2DModel.from_single_file`, which converts BFL's keys with diffusers' own
  `convert_flux2_transformer_checkpoint_to_diffusers`.
- The VAE (`flux2-vae.safetensors`): diffusers 0.42.1 has no single-file loader for AutoencoderKLFlux2, so
  its LDM-layout tensors go through diffusers' `convert_ldm_vae_checkpoint` (the converter behind FLUX.1's
  `ae.safetensors`) and into the model built from its config; the batch norm's statistics are its own keys.
- The text encoders (`qwen_3_4b.safetensors`, `mistral_3_small_flux2_bf16.safetensors`): transformers'
  keys of the language model, read by transformers' `from_pretrained(None, config=..., state_dict=...)`
  into a causal LM built from the shipped config. [dev]'s Mistral Small 3.2 comes as its text model alone
  (MistralForCausalLM): the pipeline sends it text only, and its hidden states are those of the full model.

The configurations come from assets/configs (the published ones), or with --tiny the tiny repos.
"""

from __future__ import annotations

from pathlib import Path

import torch

from flux_ui.core.errors import ModelUnavailableError
from flux_ui.core.settings import Settings
from flux_ui.core.variants import Variant
from flux_ui.models import files, flux2_layouts, hashes, quantized, single_file, sources

# The shipped configs that describe each variant's parts: the base [klein] models have the distilled ones'
# architecture, and every FLUX.2 repo the same VAE.
CONFIG_REPOS = {
    "black-forest-labs/FLUX.2-klein-base-4B": "black-forest-labs/FLUX.2-klein-4B",
    "black-forest-labs/FLUX.2-klein-base-9B": "black-forest-labs/FLUX.2-klein-9B",
}
VAE_CONFIG_REPO = "black-forest-labs/FLUX.2-dev"


def config_folder(settings: Settings, variant: Variant, part: str) -> Path:
    """The folder (hub layout) whose `part`/ config (transformer, vae, text_encoder, scheduler) describes
    `variant`'s part read from a single file."""
    if settings.tiny:
        return settings.tiny_dir / variant.repo_id
    if part == "vae":
        return single_file.CONFIGS / VAE_CONFIG_REPO
    return single_file.CONFIGS / CONFIG_REPOS.get(variant.repo_id, variant.repo_id)


def variant_family(variant: Variant) -> str:
    """The transformer family (files.FAMILIES) a FLUX.2 variant's file must show."""
    return "flux2-dev" if variant.pipeline_class == "Flux2Pipeline" else "flux2-klein"


def _header(path: Path, gguf: bool) -> dict[str, tuple[str, tuple[int, ...]]]:
    return quantized.gguf_header(path)[1] if gguf else files.read_header(path)


def _check_shapes(found: files.FoundFile, variant: Variant, config: dict, what: str, setting: str) -> None:
    """Refuse a transformer of another size ([klein] 9B's file for [klein] 4B, say) before reading it."""
    header = _header(found.path, found.format.startswith("gguf"))
    probes = flux2_layouts.TRANSFORMER_PROBES
    x_in, txt_in = next(pr[:2] for p, lay, pr in probes if p == found.parts["transformer"] and lay == found.layout)
    prefix = found.parts["transformer"]
    width, context = header[prefix + x_in][1][0], header[prefix + txt_in][1][-1]
    want = (config["num_attention_heads"] * config["attention_head_dim"], config["joint_attention_dim"])
    if (width, context) != want:
        raise ModelUnavailableError(
            what,
            str(found.path),
            f"the file's transformer is {width} wide and reads text {context} wide; {variant.label}'s is "
            f"{want[0]} wide and reads {want[1]} (another FLUX.2 model's file?)",
            f"Point {setting} at a {variant.label} file.",
        )


def transformer(settings: Settings, variant: Variant, source: str) -> torch.nn.Module:
    """`variant`'s Flux2Transformer2DModel from a single file (see the module docstring)."""
    from diffusers import Flux2Transformer2DModel

    path, what, setting = Path(source).expanduser(), f"{variant.label} transformer", f"--model {variant.name}=FILE"
    found = single_file.identify_part(what, path, setting, "transformer")
    single_file.check_family(found, variant_family(variant), variant, what, setting)
    root = config_folder(settings, variant, "transformer")
    _check_shapes(found, variant, Flux2Transformer2DModel.load_config(root / "transformer"), what, setting)
    hashes.start(path)  # the images' `Model hash`, read beside the load
    prefix, gguf = found.parts["transformer"], found.format.startswith("gguf")

    def load():
        if gguf:  # kept quantised: diffusers' GGUF layers dequantise each weight as it is used
            state = quantized.gguf_tensors(path, prefix, settings.dtype)
            extra = {"quantization_config": quantized.gguf_config(settings.dtype)}
        else:
            state, extra = files.read_tensors(path, prefix), {}
        return Flux2Transformer2DModel.from_single_file(
            state, config=str(root), subfolder="transformer", torch_dtype=settings.dtype, local_files_only=True, **extra
        )

    return single_file.complete(sources.load_file(what, path, setting, load, settings), what, path, setting)


def vae(settings: Settings, variant: Variant, source: str) -> torch.nn.Module:
    """The FLUX.2 VAE from `flux2-vae.safetensors` (BFL's keys; see the module docstring)."""
    from diffusers import AutoencoderKLFlux2
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    path, what, setting = Path(source).expanduser(), "FLUX.2 VAE", f"--model {files.FLUX2_VAE}=FILE"
    found = single_file.identify_part(what, path, setting, "flux2_vae")
    config = AutoencoderKLFlux2.load_config(config_folder(settings, variant, "vae") / "vae")

    def load():
        ldm, bn = flux2_layouts.vae_to_ldm(files.read_tensors(path, found.parts["flux2_vae"]))
        bn.setdefault("bn.num_batches_tracked", torch.tensor(0))  # bookkeeping some files leave out; unused
        state = convert_ldm_vae_checkpoint(ldm, config) | bn
        state = {k: v.to(settings.dtype) if v.is_floating_point() else v for k, v in state.items()}
        with torch.device("meta"):
            model = AutoencoderKLFlux2.from_config(config)
        if unexpected := sorted(state.keys() - model.state_dict().keys()):
            raise ValueError(f"the file holds tensors this VAE has not (the first: {unexpected[0]})")
        model.load_state_dict(state, strict=False, assign=True)  # what the file lacks stays on meta: see complete
        return model

    return single_file.complete(sources.load_file(what, path, setting, load, settings), what, path, setting)


def text_encoder(settings: Settings, variant: Variant, source: str) -> torch.nn.Module:
    """`variant`'s text encoder (Qwen3 for [klein], Mistral Small 3.2's text model for [dev]) from a single
    file (see the module docstring)."""
    from transformers import AutoConfig, MistralForCausalLM, Qwen3ForCausalLM

    mistral = variant.pipeline_class == "Flux2Pipeline"
    part = "mistral" if mistral else "qwen3"
    path, what = Path(source).expanduser(), f"{variant.label} text encoder"
    setting = f"--model {variant.text_encoder}=FILE"
    found = single_file.identify_part(what, path, setting, part)
    root = config_folder(settings, variant, "text_encoder")

    def load():
        config = AutoConfig.from_pretrained(root / "text_encoder")
        config = config.text_config if mistral else config
        state = flux2_layouts.lm_state(files.read_tensors(path, ""), found.parts[part])
        if "lm_head.weight" not in state:
            # ComfyUI's files hold the language model without its output head. The FLUX.2 pipelines read
            # hidden states, never logits: the head is tied to the embedding (shared, no memory) and unused.
            config.tie_word_embeddings = True
        model_cls = MistralForCausalLM if mistral else Qwen3ForCausalLM
        model, info = model_cls.from_pretrained(
            None, config=config, state_dict=state, dtype=settings.dtype, output_loading_info=True
        )
        if info["missing_keys"]:  # transformers would leave them randomly initialised
            raise KeyError(sorted(info["missing_keys"])[0])
        return model

    return single_file.complete(sources.load_file(what, path, setting, load, settings), what, path, setting)
