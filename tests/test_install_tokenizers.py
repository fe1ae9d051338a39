"""Tokenizers for single text-encoder files, taken from the ComfyUI or Forge install a --models-dir folder
belongs to (fake installs holding the tiny tokenizers where those tools ship theirs), after the hub cache."""

from collections import Counter
from dataclasses import replace

import pytest

from flux_ui.models import installs, loading, sources
from flux_ui.tiny.files import write_comfyui_tree
from flux_ui.tiny.installs import SHARED, write_install_tokenizers

PROMPT = "a red fox in the snow, 35mm photo"


@pytest.fixture(scope="module")
def models(tiny_dir, tmp_path_factory):
    """A ComfyUI models folder of single files (text encoders included), copied into each fake install."""
    return write_comfyui_tree(tmp_path_factory.mktemp("files"), tiny_dir) / "models"


@pytest.mark.parametrize(
    ("tool", "inside"),
    [("comfyui", "models"), ("comfyui-2024", "models/clip"), ("forge", "")],
)
def test_tokenizers_come_from_the_install(settings, tiny_dir, models, tmp_path, monkeypatch, tool, inside):
    from transformers import CLIPTokenizer, T5TokenizerFast

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = tmp_path / "install"
    root.mkdir()
    (root / "models").symlink_to(models, target_is_directory=True)  # as a models folder on another disk
    write_install_tokenizers(root, tiny_dir, tool)
    s = replace(settings, models_dirs=(root / inside,), shared_repo="nobody/no-repo", model_root=None)
    assert sources.is_file(sources.shared_part_source(s, "clip"))  # single files: no tokenizer beside them
    assert installs.roots(s.models_dirs) == [root]
    clip, t5 = loading.tokenizers(s, Counter())
    want_clip = CLIPTokenizer.from_pretrained(tiny_dir / SHARED, subfolder="tokenizer")
    want_t5 = T5TokenizerFast.from_pretrained(tiny_dir / SHARED, subfolder="tokenizer_2")
    assert clip(PROMPT).input_ids == want_clip(PROMPT).input_ids
    assert t5(PROMPT).input_ids == want_t5(PROMPT).input_ids
    assert clip.model_max_length == 77  # not ComfyUI's 8192, which every prompt would be padded to


def test_the_shared_repo_on_disk_comes_before_the_install(settings, models, tmp_path):
    root = tmp_path / "install"
    root.mkdir()
    (root / "models").symlink_to(models, target_is_directory=True)
    broken = root / "comfy" / "sd1_tokenizer"
    broken.mkdir(parents=True)
    (broken / "tokenizer_config.json").write_text("not json")  # would fail if it were read
    s = replace(settings, models_dirs=(root,))
    assert installs.tokenizer_folder(s.models_dirs, "tokenizer") == broken
    clip, _ = loading.tokenizers(s, Counter())  # from the tiny shared repo below --model-root
    assert clip(PROMPT).input_ids


def test_no_install_above_a_plain_folder(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert installs.roots([tmp_path / "a" / "b"]) == []
    assert installs.tokenizer_folder([tmp_path / "a"], "tokenizer_2") is None
