"""A tiny random-weight image classifier in the layout of the safety checker's, for --tiny and the tests."""

from __future__ import annotations

from pathlib import Path

import torch

from flux_ui.output.safety import FLAGGED_LABEL


def write_tiny_safety_classifier(folder: Path, seed: int = 5000) -> None:
    """A tiny random-weight ViT classifier with the real model's labels, and its processor at 32 px."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        id2label={0: "normal", 1: FLAGGED_LABEL},
        label2id={"normal": 0, FLAGGED_LABEL: 1},
    )
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
