"""The small things a person meets every day: a prompt cut short is told, Control keeps the steps and
guidance a user set when the mode changes, limits are written as they are typed."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
import pytest

from flux_ui.core.errors import InvalidInput
from flux_ui.core.seeds import SEED_MAX
from flux_ui.tasks.batch import cut_notes
from flux_ui.tasks.params import check_seed
from flux_ui.ui.tabs.control import mode_defaults


@pytest.fixture(scope="module")
def tokenizers(tiny_dir):
    from transformers import AutoTokenizer

    root = tiny_dir / "black-forest-labs" / "FLUX.1-dev"
    return SimpleNamespace(
        tokenizer=AutoTokenizer.from_pretrained(root / "tokenizer"),
        tokenizer_2=AutoTokenizer.from_pretrained(root / "tokenizer_2"),
    )


def test_a_short_prompt_has_no_notes(tokenizers):
    assert cut_notes(tokenizers, "a red fox in the snow", 512) == []


def test_a_prompt_over_77_clip_tokens_is_told_where_it_is_cut(tokenizers):
    words = [f"fox{i}" if i % 2 else "fox" for i in range(120)]
    prompt = " ".join(words)
    notes = cut_notes(tokenizers, prompt, 512)
    clip = [n for n in notes if "CLIP" in n]
    assert len(clip) == 1
    count = len(tokenizers.tokenizer(prompt).input_ids)
    assert f"it is {count} CLIP tokens" in clip[0] and "first 77" in clip[0]
    kept = tokenizers.tokenizer.decode(
        tokenizers.tokenizer(prompt, truncation=True, max_length=77).input_ids, skip_special_tokens=True
    )
    assert kept.split()[-1] in clip[0]  # where the cut falls: the last word still read
    assert not any("T5" in n for n in notes)  # 512 T5 tokens hold it all


def test_a_prompt_over_the_t5_limit_is_told(tokenizers):
    words = 1
    while len(tokenizers.tokenizer_2(" ".join(["snow"] * words)).input_ids) <= 300:
        words += 1
    prompt = " ".join(["snow"] * words)  # a little over 300 T5 tokens
    notes = cut_notes(tokenizers, prompt, 256)  # [schnell] reads 256
    assert any("T5" in n and "first 256" in n for n in notes)
    assert not any("T5" in n for n in cut_notes(tokenizers, prompt, 512))


def test_the_notes_reach_the_results_warnings(registry):
    from flux_ui.output.deliver import deliver
    from flux_ui.tasks.text_to_image import SPEC, TextToImageParams

    job = SPEC.validate(TextToImageParams(" ".join(["fox"] * 100), "dev", 64, 64, 1, 3.5, 3), registry.settings, None)
    result = SPEC.run(registry, job, None, None)
    _, warnings = deliver(registry, result)
    assert len([w for w in warnings if "Prompt cut" in w and "CLIP" in w]) == 1


def test_control_mode_switch_keeps_what_the_user_changed():
    # Still at Canny's defaults (50 steps, guidance 30): both become Depth's (guidance 10).
    steps, guidance = mode_defaults("depth", 50, 30.0)
    assert (steps, guidance) == (50, 10.0)
    # Steps and guidance the user set are kept (left as they are).
    steps, guidance = mode_defaults("depth", 20, 12.5)
    assert isinstance(steps, type(gr.skip())) and isinstance(guidance, type(gr.skip()))
    # Only the one still at its default changes.
    steps, guidance = mode_defaults("canny", 33, 10.0)
    assert isinstance(steps, type(gr.skip())) and guidance == 30.0


def test_the_seed_limit_is_written_in_full():
    with pytest.raises(InvalidInput) as err:
        check_seed(SEED_MAX + 1)
    assert str(SEED_MAX) in str(err.value) and "e+" not in str(err.value)
