"""The tiny T5 encoder written as the GGUF files people run FLUX.1's text encoder from on small GPUs (city96's
`t5-v1_1-xxl-encoder-Q8_0.gguf`, made with llama.cpp's converter): architecture `t5encoder`, llama.cpp's tensor
names (from the `gguf` package's own name map, the one transformers reads them back with), the T5 settings and
the SentencePiece vocabulary in the header, written by the `gguf` package's writer and quantizer.
"""

from __future__ import annotations

import json
from pathlib import Path


def write_t5_gguf(path: Path, model, tokenizer_json: Path, qtype: str = "Q8_0") -> Path:
    """`model` (a T5EncoderModel) as a GGUF file of `qtype`: 2-D weights quantised where their rows fill whole
    blocks (else F16), norms in F32, as llama.cpp's converter does; `tokenizer_json` gives the vocabulary."""
    import gguf

    cfg = model.config
    arch = gguf.MODEL_ARCH.T5ENCODER
    names = gguf.get_tensor_name_map(arch, cfg.num_layers)
    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name("t5-v1_1-xxl-encoder")
    writer.add_context_length(getattr(cfg, "n_positions", 512))
    writer.add_embedding_length(cfg.d_model)
    writer.add_feed_forward_length(cfg.d_ff)
    writer.add_block_count(cfg.num_layers)
    writer.add_head_count(cfg.num_heads)
    writer.add_key_length(cfg.d_kv)
    writer.add_value_length(cfg.d_kv)
    writer.add_layer_norm_eps(cfg.layer_norm_epsilon)
    writer.add_layer_norm_rms_eps(cfg.layer_norm_epsilon)
    writer.add_relative_attn_buckets_count(cfg.relative_attention_num_buckets)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(getattr(gguf.LlamaFileType, f"MOSTLY_{qtype}"))
    vocab = json.loads(tokenizer_json.read_text())["model"]["vocab"]  # [[piece, score], ...] in id order
    pieces = [p for p, _ in vocab] + [f"<extra_{i}>" for i in range(cfg.vocab_size - len(vocab))]
    writer.add_tokenizer_model("t5")
    writer.add_token_list(pieces)
    writer.add_token_scores([float(s) for _, s in vocab] + [0.0] * (cfg.vocab_size - len(vocab)))
    writer.add_pad_token_id(cfg.pad_token_id)
    writer.add_eos_token_id(cfg.eos_token_id)
    target = gguf.GGMLQuantizationType[qtype]
    for name, tensor in model.state_dict().items():
        if name == "encoder.embed_tokens.weight":  # tied to `shared`, stored once
            continue
        stem, _, suffix = name.rpartition(".")
        gguf_name = names.get_name(stem)
        if gguf_name is None:
            raise KeyError(f"no GGUF name for {name}")
        data = tensor.float().numpy()
        kind = gguf.GGMLQuantizationType.F32 if tensor.ndim == 1 else target
        if "attn_rel_b" in gguf_name:
            kind = gguf.GGMLQuantizationType.F32 if tensor.ndim == 1 else gguf.GGMLQuantizationType.F16
        try:
            raw = gguf.quants.quantize(data, kind)
        except gguf.QuantError:  # rows not a multiple of the block size
            kind = gguf.GGMLQuantizationType.F16
            raw = gguf.quants.quantize(data, kind)
        writer.add_tensor(f"{gguf_name}.{suffix}", raw, raw_dtype=kind)
    return save(writer, path)


def save(writer, path: Path) -> Path:
    """Write a filled `gguf.GGUFWriter` to `path` (its folder made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer.write_header_to_file(path=str(path))
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
