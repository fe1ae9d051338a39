"""Tiny random-weight FLUX.2 models ([klein] 4B and 9B, distilled and base, and [dev]), in the real repos' layout.

Each repo is written as `save_pretrained` of its diffusers pipeline writes it: model_index.json,
transformer/ (Flux2Transformer2DModel), vae/ (AutoencoderKLFlux2), text_encoder/ and tokenizer/, scheduler/.
[klein] has a Qwen3 causal LM with a Qwen2 tokenizer (Qwen3-4B for 4B, Qwen3-8B for 9B: the tiny 9B
encoder is wider than the 4B one, as the real ones differ); [dev] has Mistral Small 3.2
(Mistral3ForConditionalGeneration) with its Pixtral processor. The tokenizers are built here from a word
list: diffusers' own tests download theirs from the hub, which tests and CI cannot reach.

The pipelines read the text encoders' hidden states at fixed layers (9, 18, 27 for Qwen3; 10, 20, 30 for
Mistral), so the tiny encoders are that deep, and narrow: the app calls them exactly as the real ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from flux_ui.tiny.common import SCHEDULER_DEV, WORDS, bytes_to_unicode

LATENT_CHANNELS = 4  # 32 in FLUX.2's VAE; packed 2x2 into the transformer's 16 (128) input channels
QWEN_LAYERS = 27  # the klein pipelines read hidden_states[9], [18] and [27]
MISTRAL_LAYERS = 30  # the [dev] pipeline reads hidden_states[10], [20] and [30]
ENCODER_WIDTH = {"qwen3-4b": 16, "qwen3-8b": 24, "mistral-small-3.2": 16}  # 2560, 4096 and 5120 in the real ones

# Qwen3's chat template, reduced to what the klein pipelines render: user turns, and the empty thinking
# block that `enable_thinking=False` adds after the generation prompt.
QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
# Mistral Small 3.1's template, reduced to text content: the system prompt and user turns.
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m.content is string %}{% set text = m.content %}"
    "{% else %}{% set text = m.content | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') %}"
    "{% endif %}"
    "{% if m.role == 'system' %}[SYSTEM_PROMPT]{{ text }}[/SYSTEM_PROMPT]"
    "{% elif m.role == 'user' %}[INST]{{ text }}[/INST]{% else %}{{ text }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)
# Words of FLUX.2 [dev]'s system message, so that it takes a few tokens, as with the real tokenizer.
_SYSTEM_WORDS = "user assistant system You are AI that reasons about image descriptions give structured"
_SYSTEM_WORDS += " responses focusing object relationships attribution actions without speculation"
MISTRAL_SPECIALS = ["[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[IMG]", "[IMG_BREAK]", "[IMG_END]"]


def _byte_bpe(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE vocabulary and merges in which each of `words`, after a space, is one token."""
    chars = bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(chars)}
    merges: list[tuple[str, str]] = []
    space = "\u0120"  # byte-level BPE's stand-in for " "
    for w in dict.fromkeys([*words, *_SYSTEM_WORDS.split()]):
        cur = space
        for ch in w:
            merges.append((cur, ch))
            cur += ch
            vocab.setdefault(cur, len(vocab))
    return vocab, list(dict.fromkeys(merges))


def qwen_tokenizer():
    """A Qwen2 tokenizer (byte-level BPE, Qwen's special tokens and chat template) from a word list."""
    from transformers import AddedToken, Qwen2Tokenizer

    vocab, merges = _byte_bpe(WORDS)
    for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"):
        vocab[special] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges)
    tok.add_tokens([AddedToken(t, special=True) for t in ("<|im_start|>", "<|im_end|>", "<think>", "</think>")])
    tok.chat_template = QWEN_CHAT_TEMPLATE
    tok.model_max_length = 40960
    return tok


def mistral_tokenizer():
    """Mistral Small 3.1's tokenizer, as a byte-level BPE from a word list with its special tokens and a chat
    template (the text half of its Pixtral processor: the [dev] pipeline sends the processor text only)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab, merges = _byte_bpe(WORDS)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    tok.add_special_tokens({"additional_special_tokens": MISTRAL_SPECIALS})
    tok.chat_template = MISTRAL_CHAT_TEMPLATE
    tok.model_max_length = 131072
    return tok


def _write_pixtral_processor_files(folder: Path) -> None:
    """The image half of the Pixtral processor, beside the tokenizer, as the real tokenizer/ folder holds it.
    (transformers' PixtralProcessor itself needs torchvision, which the app does not install.)"""
    from transformers import PixtralImageProcessorPil

    PixtralImageProcessorPil(size={"longest_edge": 30}, patch_size=6).save_pretrained(folder)
    processor = {
        "image_break_token": "[IMG_BREAK]",
        "image_end_token": "[IMG_END]",
        "image_token": "[IMG]",
        "patch_size": 6,
        "processor_class": "PixtralProcessor",
        "spatial_merge_size": 1,
    }
    (folder / "processor_config.json").write_text(json.dumps(processor, indent=2))


def qwen_encoder(width: int, vocab_size: int):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    return Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=vocab_size,
            hidden_size=width,
            intermediate_size=width * 2,
            num_hidden_layers=QWEN_LAYERS,
            num_attention_heads=2,
            num_key_value_heads=1,  # grouped-query attention, as in Qwen3
            head_dim=8,
            max_position_embeddings=1024,
            tie_word_embeddings=True,
        )
    )


def mistral_encoder(width: int, tok):
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    ids = {k: tok.convert_tokens_to_ids(t) for k, t in (("bos", "<s>"), ("eos", "</s>"), ("pad", "<pad>"))}
    config = Mistral3Config(
        text_config={
            "model_type": "mistral",
            "vocab_size": len(tok),
            "hidden_size": width,
            "intermediate_size": width * 2,
            "max_position_embeddings": 1024,
            "num_attention_heads": 2,
            "num_hidden_layers": MISTRAL_LAYERS,
            "num_key_value_heads": 1,
            "head_dim": 8,
            "rms_norm_eps": 1e-05,
            "rope_theta": 1000000000.0,
            "sliding_window": None,
            "bos_token_id": ids["bos"],
            "eos_token_id": ids["eos"],
            "pad_token_id": ids["pad"],
        },
        vision_config={
            "model_type": "pixtral",
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
            "image_size": 30,
            "patch_size": 6,
            "num_channels": 3,
        },
        image_token_index=tok.convert_tokens_to_ids("[IMG]"),
        spatial_merge_size=1,
        vision_feature_layer=-1,
    )
    return Mistral3ForConditionalGeneration(config)


def tiny_flux2_transformer(joint_attention_dim: int, guidance_embeds: bool):
    """A one-double-block, one-single-block Flux2Transformer2DModel (8 + 48 blocks of 6144 in [dev])."""
    from diffusers import Flux2Transformer2DModel

    return Flux2Transformer2DModel(
        patch_size=1,
        in_channels=LATENT_CHANNELS * 4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=joint_attention_dim,
        timestep_guidance_channels=256,  # fixed in BFL's code
        axes_dims_rope=(4, 4, 4, 4),  # sums to attention_head_dim, as (32, 32, 32, 32) sums to 128
        guidance_embeds=guidance_embeds,
    )


def tiny_flux2_vae():
    from diffusers import AutoencoderKLFlux2

    return AutoencoderKLFlux2(
        block_out_channels=(8, 8, 16, 16),  # four blocks: 8x downsampling, as in FLUX.2's VAE
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=4,
        sample_size=64,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def write_flux2_repo(folder: Path, pipeline_class: str, encoder: str, distilled: bool, seed: int) -> None:
    """A complete FLUX.2 repo: `pipeline_class` is Flux2Pipeline ([dev]) or Flux2KleinPipeline; `encoder` a
    key of ENCODER_WIDTH. The encoder and its tokenizer are seeded by `encoder` alone, so repos that ship
    the same text encoder (klein 4B and klein base 4B) hold the same weights, as the real ones do."""
    import diffusers
    from diffusers import FlowMatchEulerDiscreteScheduler

    width = ENCODER_WIDTH[encoder]
    torch.manual_seed(sum(map(ord, encoder)))
    if encoder.startswith("mistral"):
        tokenizer = mistral_tokenizer()
        text_encoder = mistral_encoder(width, tokenizer)
    else:
        tokenizer = qwen_tokenizer()
        text_encoder = qwen_encoder(width, len(tokenizer))
    torch.manual_seed(7)  # one FLUX.2 VAE in every repo
    vae = tiny_flux2_vae()
    torch.manual_seed(seed)
    transformer = tiny_flux2_transformer(3 * width, guidance_embeds=pipeline_class == "Flux2Pipeline")
    extra = {} if pipeline_class == "Flux2Pipeline" else {"is_distilled": distilled}
    pipe = getattr(diffusers, pipeline_class)(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_DEV),  # the pipelines compute their own shift
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        **extra,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    if encoder.startswith("mistral"):  # the real repo's tokenizer/ is a Pixtral processor
        _write_pixtral_processor_files(folder / "tokenizer")
        index = json.loads((folder / "model_index.json").read_text())
        index["tokenizer"] = ["transformers", "PixtralProcessor"]
        (folder / "model_index.json").write_text(json.dumps(index, indent=2))


# (module, in, out) of the tiny FLUX.2 transformers' block layers a tiny LoRA changes (the same in every one).
LORA_TARGETS = (
    ("transformer_blocks.0.attn.to_q", 32, 32),
    ("transformer_blocks.0.attn.to_v", 32, 32),
    ("transformer_blocks.0.ff.linear_in", 32, 192),
    ("single_transformer_blocks.0.attn.to_qkv_mlp_proj", 32, 288),
    ("single_transformer_blocks.0.attn.to_out", 128, 32),
)


def flux2_lora_state(seed: int, rank: int = 4) -> dict[str, torch.Tensor]:
    """A tiny FLUX.2 LoRA in diffusers' layout (`transformer.<module>.lora_A/B.weight`), as diffusers'
    Flux2 LoRA trainers save it."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, n_in, n_out in LORA_TARGETS:
        state[f"transformer.{name}.lora_A.weight"] = torch.randn(rank, n_in, generator=g) / n_in**0.5
        state[f"transformer.{name}.lora_B.weight"] = torch.randn(n_out, rank, generator=g) * 0.5
    return state
