"""A tiny random-weight vision-language model of the default VQA model's architecture, in hub layout.

SmolVLM-Instruct is an Idefics3ForConditionalGeneration: a SigLIP vision encoder, a pixel-shuffle
connector (scale factor 3) and a Llama text model, with an Idefics3Processor (image splitting into tiles
plus a global view), a byte-level BPE tokenizer and a chat template. The tiny one keeps all of that at toy
sizes (96-pixel tiles, 32-wide layers) and is written with `save_pretrained`, so the app loads it with
the same `AutoProcessor` / `AutoModelForImageTextToText` calls as the real weights.

Its answers are gibberish, but visible gibberish: most of its vocabulary is syllables (" ka", " lom"...)
that decode to printable text, so a random model's greedy answer is non-empty text, not a run of special
or control tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch

# The chat template of HuggingFaceTB/SmolVLM-Instruct: "User:<image>question<end_of_utterance>\nAssistant:".
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
CONSONANTS = "bcdfghklmnprstvwz"
VOWELS = "aeiou"
TILE = 96  # pixels per image tile (384 in SmolVLM)
PATCH = 16  # vision patch size (14 in SmolVLM)
SCALE_FACTOR = 3  # pixel shuffle: 9 patches become one image token, as in SmolVLM
IMAGE_SEQ_LEN = (TILE // PATCH) ** 2 // SCALE_FACTOR**2  # image tokens per tile: 4 (81 in SmolVLM)


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins for bytes that byte-level BPE tokenizers use (GPT-2's table)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    extra = [b for b in range(256) if b not in keep]
    return [chr(b) for b in keep] + [chr(256 + i) for i in range(len(extra))]


def tiny_vlm_tokenizer():
    """SmolVLM's tokenizer layout (GPT-2 byte-level BPE, its special and image tokens) over a syllable
    vocabulary: 1,552 of its 1,851 ids decode to a space and a syllable."""
    from transformers import GPT2Tokenizer

    vocab = {tok: i for i, tok in enumerate(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])}
    for symbol in _byte_symbols():
        vocab[symbol] = len(vocab)
    merges: list[tuple[str, str]] = []

    def merge(a: str, b: str) -> None:
        merges.append((a, b))
        vocab.setdefault(a + b, len(vocab))

    for c in CONSONANTS + VOWELS:
        merge("\u0120", c)  # "Ġ" stands for the space byte
    for c in CONSONANTS:
        for v in VOWELS:
            merge("\u0120" + c, v)
            for end in CONSONANTS:
                merge("\u0120" + c + v, end)
    image_tokens = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
    tiles = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
    return GPT2Tokenizer(
        vocab=vocab,
        merges=merges,
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=image_tokens + tiles,
    )


def write_tiny_vlm(folder: Path, seed: int = 2000) -> None:
    """Write processor, tokenizer, chat template, config and random weights to `folder`."""
    from transformers import GenerationConfig, Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    tok = tiny_vlm_tokenizer()
    ids = tok.convert_tokens_to_ids
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": 2 * TILE},  # images are resized to at most 2x2 tiles (4x4 in SmolVLM)
        max_image_size={"longest_edge": TILE},
        do_image_splitting=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        resample=1,  # Lanczos, as in SmolVLM's preprocessor config
    )
    processor = Idefics3Processor(
        image_processor=image_processor, tokenizer=tok, image_seq_len=IMAGE_SEQ_LEN, chat_template=CHAT_TEMPLATE
    )
    special = {
        "bos_token_id": ids("<|im_start|>"),
        "eos_token_id": ids("<end_of_utterance>"),
        "pad_token_id": ids("<|im_end|>"),
    }
    config = Idefics3Config(
        text_config={
            "model_type": "llama",
            "vocab_size": len(tok),
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "max_position_embeddings": 16384,  # SmolVLM's context
            "rms_norm_eps": 1e-5,
            "rope_parameters": {"rope_type": "default", "rope_theta": 273768.0},
            "tie_word_embeddings": False,
            **special,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": TILE,
            "patch_size": PATCH,
        },
        scale_factor=SCALE_FACTOR,
        image_token_id=ids("<image>"),
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    model.generation_config = GenerationConfig(**special)
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
