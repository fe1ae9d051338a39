"""Tiny random-weight models of the real FLUX.1 architectures, written once in hub layout.

`ensure_tiny_models(root)` writes `<root>/black-forest-labs/FLUX.1-dev/...` (and the other repos) exactly
as the real repos are laid out: model_index.json, transformer/, text_encoder/ (CLIP-L), text_encoder_2/
(T5), tokenizer/, tokenizer_2/, vae/, scheduler/; FLUX.1-Redux-dev has image_encoder/ (SigLIP),
feature_extractor/ and image_embedder/; the VQA model
has its own layout (see tiny_vlm.py). The app then loads them with the same `from_pretrained` calls it
uses for real weights. Their outputs are noise: they exist to exercise code.

For Fill, Canny and Depth only transformer/ and scheduler/ are written (the registry reads nothing else
from those repos); BFL's Canny/Depth LoRAs are written as the single safetensors file their repos hold;
the depth estimator as a transformers DepthAnything model with its image processor. The FLUX.2 repos are
written by `flux2.py`.
"""

from __future__ import annotations

import logging
import os
import shutil
import string
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from flux_ui.core.flags import DEFAULT_VQA_MODEL
from flux_ui.core.variants import CONTROL_LORAS, FLUX2, VARIANTS, Variant
from flux_ui.tiny.common import SCHEDULER_DEV, WORDS, bytes_to_unicode

log = logging.getLogger(__name__)

# Bump when the tiny architectures change, so stale folders are rewritten.
TINY_FORMAT = "1"
MARKER = "flux_ui_tiny.txt"

# [schnell] uses a plain schedule, the [dev]-style models (SCHEDULER_DEV) shift it by resolution.
SCHEDULER_SCHNELL = {"shift": 1.0, "use_dynamic_shifting": False}

TEXT_DIM = 32  # T5 d_model in the tiny models (4096 in FLUX.1)
CLIP_DIM = 32  # CLIP hidden size in the tiny models (768 in FLUX.1)
SIGLIP_DIM = 16  # SigLIP hidden size in the tiny Redux image encoder (1152 in FLUX.1 Redux)
SIGLIP_IMAGE = 32  # SigLIP input side in pixels (384 in FLUX.1 Redux); 16 patches of 8 px, not 729 of 14
LATENT_CHANNELS = 16  # as in FLUX.1: 16 latent channels, packed 2x2 into 64 transformer channels


def _t5_tokenizer():
    """A SentencePiece-style unigram tokenizer with T5's special tokens, built from a word list."""
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -3.0 - 0.01 * len(w)) for w in WORDS]
    vocab += [(c, -8.0) for c in string.ascii_letters + string.digits + string.punctuation]
    tok = T5TokenizerFast(vocab=vocab, extra_ids=0)
    tok.model_max_length = 512
    return tok


def _clip_tokenizer():
    """A byte-level BPE tokenizer with CLIP's special tokens and end-of-word suffix."""
    from transformers import CLIPTokenizer

    chars = bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    merges = []
    for w in WORDS:  # one merge chain per word so common words become single tokens
        cur = w[0]
        for ch in w[1:-1]:
            merges.append((cur, ch))
            cur += ch
            vocab.setdefault(cur, len(vocab))
        if len(w) > 1:
            merges.append((cur, w[-1] + "</w>"))
            vocab.setdefault(w + "</w>", len(vocab))
    merges = list(dict.fromkeys(merges))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=merges)
    tok.model_max_length = 77
    return tok


def _text_encoders():
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    t5_tok, clip_tok = _t5_tokenizer(), _clip_tokenizer()
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(clip_tok),
            hidden_size=CLIP_DIM,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=CLIP_DIM,
            bos_token_id=clip_tok.bos_token_id,
            eos_token_id=clip_tok.eos_token_id,
            pad_token_id=clip_tok.pad_token_id,
        )
    )
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tok),
            d_model=TEXT_DIM,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",  # T5 v1.1, as in FLUX's T5-XXL
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    return clip, clip_tok, t5, t5_tok


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),  # four blocks: 8x downsampling, as in FLUX.1's VAE
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=0.3611,  # FLUX.1 VAE's published latent scale and shift
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def tiny_transformer(guidance_embeds: bool, in_channels: int = LATENT_CHANNELS * 4, out_channels: int | None = None):
    """A two-block FluxTransformer2DModel; in_channels differs for Fill/Canny/Depth variants."""
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=in_channels,
        out_channels=out_channels or LATENT_CHANNELS * 4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_DIM,
        pooled_projection_dim=CLIP_DIM,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim, like (16, 56, 56) sums to 128
    )


def _write_flux_repo(folder: Path, pipeline_class: str, guidance: bool, seed: int) -> None:
    """A complete FLUX.1 repo (text encoders, VAE, transformer, scheduler) for `pipeline_class`."""
    import diffusers
    from diffusers import FlowMatchEulerDiscreteScheduler

    torch.manual_seed(seed)
    clip, clip_tok, t5, t5_tok = _text_encoders()
    pipe = getattr(diffusers, pipeline_class)(
        scheduler=FlowMatchEulerDiscreteScheduler(**(SCHEDULER_DEV if guidance else SCHEDULER_SCHNELL)),
        vae=_vae(),
        text_encoder=clip,
        tokenizer=clip_tok,
        text_encoder_2=t5,
        tokenizer_2=t5_tok,
        transformer=tiny_transformer(guidance_embeds=guidance),
    )
    pipe.save_pretrained(folder, safe_serialization=True)


def _write_redux_repo(folder: Path, seed: int) -> None:
    """FLUX.1-Redux-dev's layout: a SigLIP vision tower, its image processor and the Redux embedder that
    projects SigLIP features into T5's embedding space (no text encoders: Redux borrows [dev]'s)."""
    from diffusers import FluxPriorReduxPipeline
    from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder
    from transformers import SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(seed)
    encoder = SiglipVisionModel(
        SiglipVisionConfig(
            hidden_size=SIGLIP_DIM,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=SIGLIP_IMAGE,
            patch_size=8,
        )
    )
    processor = SiglipImageProcessorPil(
        size={"height": SIGLIP_IMAGE, "width": SIGLIP_IMAGE},
        image_mean=[0.5, 0.5, 0.5],  # as in SigLIP's published processor config
        image_std=[0.5, 0.5, 0.5],
    )
    embedder = ReduxImageEncoder(redux_dim=SIGLIP_DIM, txt_in_features=TEXT_DIM)
    pipe = FluxPriorReduxPipeline(image_encoder=encoder, feature_extractor=processor, image_embedder=embedder)
    pipe.save_pretrained(folder, safe_serialization=True)


def _writer(variant: Variant, seed: int) -> Callable[[Path], None] | None:
    """How to write the tiny repo of `variant`, or None where it has none yet."""
    if variant.pipeline_class in ("FluxPipeline", "FluxKontextPipeline"):
        return lambda folder: _write_flux_repo(folder, variant.pipeline_class, variant.uses_guidance, seed)
    if variant.pipeline_class == "FluxPriorReduxPipeline":
        return lambda folder: _write_redux_repo(folder, seed)
    if variant.family == FLUX2:
        from flux_ui.tiny.flux2 import write_flux2_repo

        return partial(
            write_flux2_repo,
            pipeline_class=variant.pipeline_class,
            encoder=variant.text_encoder,
            distilled=variant.distilled,
            seed=seed,
        )
    return None


def _write_once(folder: Path, label: str, write: Callable[[Path], None]) -> None:
    """Run `write(folder)` unless a current tiny model is already there."""
    marker = folder / MARKER
    if marker.is_file() and marker.read_text() == TINY_FORMAT:
        return
    log.info("writing tiny random-weight %s to %s", label, folder)
    # Written beside the target and renamed, so a reader never sees a half-written repo.
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    (tmp / MARKER).write_text(TINY_FORMAT)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


# Transformer input channels of the tool variants: Fill concatenates the masked image's latents (64) and
# the 8x8-packed mask (256) to the 64 latent channels; Canny/Depth concatenate the control map's latents.
TOOL_IN_CHANNELS = {"fill": LATENT_CHANNELS * 4 + LATENT_CHANNELS * 4 + 8 * 8 * 4, "control": LATENT_CHANNELS * 8}


def _write_tool_repo(folder: Path, in_channels: int, seed: int) -> None:
    """transformer/ and scheduler/ of a Fill, Canny or Depth repo."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    torch.manual_seed(seed)
    model = tiny_transformer(guidance_embeds=True, in_channels=in_channels, out_channels=LATENT_CHANNELS * 4)
    model.save_pretrained(folder / "transformer", safe_serialization=True)
    FlowMatchEulerDiscreteScheduler(**SCHEDULER_DEV).save_pretrained(folder / "scheduler")


def _write_control_lora(folder: Path, weight_name: str, seed: int, rank: int = 4) -> None:
    """A control LoRA for the tiny [dev] transformer: LoRA A/B (with B biases, as BFL trains them) on every
    Linear layer, x_embedder widened to 128 inputs, and q/k norm scales, as the real file holds.

    Keys are in diffusers' naming (what diffusers converts BFL's file to): its BFL converter hard-codes the
    full model's 19 + 38 blocks and 3072 width, so BFL's own key layout cannot describe a tiny model.
    """
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in tiny_transformer(guidance_embeds=True).named_modules():
        if isinstance(module, torch.nn.Linear):
            fan_in = TOOL_IN_CHANNELS["control"] if name == "x_embedder" else module.in_features
            tensors[f"transformer.{name}.lora_A.weight"] = torch.randn(rank, fan_in, generator=g) / fan_in**0.5
            tensors[f"transformer.{name}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=g) * 0.1
            tensors[f"transformer.{name}.lora_B.bias"] = torch.randn(module.out_features, generator=g) * 0.01
        for norm in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
            if name.endswith(f"attn.{norm}"):
                tensors[f"transformer.{name}.weight"] = 0.5 + torch.rand(module.weight.shape, generator=g)
    folder.mkdir(parents=True)
    save_file(tensors, folder / weight_name)


def _write_depth_estimator(folder: Path, seed: int) -> None:
    """A DepthAnything model (tiny DINOv2 backbone) with the DPT image processor the real one uses."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config
    from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil

    torch.manual_seed(seed)
    backbone = Dinov2Config(
        image_size=56,
        patch_size=14,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        out_indices=[1, 2, 3, 4],
        reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=32,
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
    )
    DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    # As the real processor (518 px, aspect kept, multiples of 14, bicubic, ImageNet statistics), at 56 px.
    DPTImageProcessorPil(
        size={"height": 56, "width": 56},
        keep_aspect_ratio=True,
        ensure_multiple_of=14,
        resample=3,
        do_pad=False,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(folder)


def _tiny_repos() -> list[tuple[str, str, Callable[[Path], None]]]:
    """(repo id, label, writer) for every tiny model; each writer gets its own seed."""
    from flux_ui.media.control_maps import DEPTH_ESTIMATOR_REPO
    from flux_ui.output.safety import SAFETY_MODEL
    from flux_ui.tiny.safety import write_tiny_safety_classifier
    from flux_ui.tiny.vlm import write_tiny_vlm

    repos: list[tuple[str, str, Callable[[Path], None]]] = []
    for i, v in enumerate(VARIANTS.values()):
        if (write := _writer(v, seed=1000 + i)) is not None:
            repos.append((v.repo_id, v.label, write))
    for i, v in enumerate(v for v in VARIANTS.values() if v.task in TOOL_IN_CHANNELS):
        write = partial(_write_tool_repo, in_channels=TOOL_IN_CHANNELS[v.task], seed=2000 + i)
        repos.append((v.repo_id, v.label, write))
    for i, lora in enumerate(CONTROL_LORAS.values()):
        write = partial(_write_control_lora, weight_name=lora.weight_name, seed=3000 + i)
        repos.append((lora.repo_id, lora.label, write))
    repos.append((DEPTH_ESTIMATOR_REPO, "depth estimator", partial(_write_depth_estimator, seed=4000)))
    # Under the default model's repo id, so --tiny finds it where --vqa-model points by default.
    repos.append((DEFAULT_VQA_MODEL, "VQA model", write_tiny_vlm))
    repos.append((SAFETY_MODEL, "safety classifier", write_tiny_safety_classifier))
    return repos


def ensure_tiny_models(root: Path) -> Path:
    """Write the tiny repos under `root` unless they are already there; return `root`.

    Each repo gets its own seed, so variants differ as real ones do. Writing takes a few seconds on a
    CPU and happens once per folder.
    """
    for repo_id, label, write in _tiny_repos():
        _write_once(root / repo_id, label, write)
    return root
