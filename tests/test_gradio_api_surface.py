"""The Gradio API that gradio_client users call: every named endpoint keeps its name, its parameters (names,
order, components) and its outputs. Scripts call these by api_name with positional or keyword inputs, so a
change here breaks them; a deliberate change updates this table and the README's API section."""

from __future__ import annotations

import gradio as gr
import pytest

from flux_ui.core.settings import Settings
from flux_ui.models.registry import Registry
from flux_ui.ui.app import build_ui

# api_name: ((parameter:Component, ...), (returned Component, ...)), in the order gradio_client takes them
ENDPOINTS = {
    "loras": ((), ("Api",)),
    "text_to_image": (
        (
            "prompt:Textbox",
            "variant:Dropdown",
            "width:Slider",
            "height:Slider",
            "steps:Slider",
            "guidance:Slider",
            "seed:Number",
            "num_images:Slider",
            "fast:Checkbox",
        ),
        ("Gallery", "Number", "Markdown"),
    ),
    "load_parameters": (
        ("file:File",),
        (
            "Textbox",
            "Dropdown",
            "Slider",
            "Slider",
            "Slider",
            "Slider",
            "Number",
            "Dropdown",
            "Markdown",
            "Checkbox",
            "Markdown",
        ),
    ),
    "image_to_image": (
        (
            "image:Image",
            "prompt:Textbox",
            "strength:Slider",
            "variant:Dropdown",
            "size:Dropdown",
            "steps:Slider",
            "guidance:Slider",
            "seed:Number",
            "num_images:Slider",
            "fast:Checkbox",
        ),
        ("Gallery", "Number", "Markdown"),
    ),
    "upscale": (
        (
            "image:Image",
            "prompt:Textbox",
            "scale:Slider",
            "upscaler:Dropdown",
            "strength:Slider",
            "variant:Dropdown",
            "steps:Slider",
            "guidance:Slider",
            "seed:Number",
            "tiling:Dropdown",
        ),
        ("Gallery", "Number", "Markdown"),
    ),
    "kontext_edit": (
        (
            "image:Image",
            "instruction:Textbox",
            "size:Dropdown",
            "steps:Slider",
            "guidance:Slider",
            "seed:Number",
            "num_images:Slider",
            "image_2:Image",
            "image_3:Image",
            "image_4:Image",
            "fast:Checkbox",
        ),
        ("Gallery", "Number", "Markdown"),
    ),
    "redux_variation": (
        (
            "image_1:Image",
            "image_2:Image",
            "image_3:Image",
            "image_4:Image",
            "strength_1:Slider",
            "strength_2:Slider",
            "strength_3:Slider",
            "strength_4:Slider",
            "prompt:Textbox",
            "prompt_embeds_scale:Slider",
            "pooled_prompt_embeds_scale:Slider",
            "width:Slider",
            "height:Slider",
            "steps:Slider",
            "guidance:Slider",
            "seed:Number",
            "num_images:Slider",
            "fast:Checkbox",
        ),
        ("Gallery", "Number", "Markdown"),
    ),
    "vqa": (("image:Image", "question:Textbox", "history:Chatbot", "max_new_tokens:Slider"), ("Textbox", "Chatbot")),
    "describe_as_prompt": (("image:Image", "history:Chatbot"), ("Textbox", "Chatbot")),
    "suggest_edit": (("image:Image", "history:Chatbot"), ("Textbox", "Chatbot")),
    "fill": (
        (
            "image:Image",
            "mask:Image",
            "prompt:Textbox",
            "left:Slider",
            "right:Slider",
            "top:Slider",
            "bottom:Slider",
            "steps:Slider",
            "guidance:Slider",
            "seed:Number",
            "num_images:Slider",
            "fast:Checkbox",
        ),
        ("Gallery", "Number", "Markdown"),
    ),
    "control_map": (("image:Image", "mode:Radio", "low_threshold:Slider", "high_threshold:Slider"), ("Image",)),
    "control": (
        (
            "image:Image",
            "prompt:Textbox",
            "mode:Radio",
            "route:Radio",
            "control_image:Image",
            "low_threshold:Slider",
            "high_threshold:Slider",
            "lora_scale:Slider",
            "steps:Slider",
            "guidance:Slider",
            "seed:Number",
            "num_images:Slider",
            "fast:Checkbox",
        ),
        ("Gallery", "Image", "Number", "Markdown"),
    ),
    "flux2_edit": (
        (
            "image_1:Image",
            "image_2:Image",
            "image_3:Image",
            "image_4:Image",
            "instruction:Textbox",
            "variant:Dropdown",
            "size:Dropdown",
            "steps:Slider",
            "guidance:Slider",
            "seed:Number",
            "num_images:Slider",
        ),
        ("Gallery", "Number", "Markdown"),
    ),
    "flux2_inpaint": (
        (
            "image:Image",
            "mask:Image",
            "prompt:Textbox",
            "variant:Dropdown",
            "strength:Slider",
            "steps:Slider",
            "guidance:Slider",
            "seed:Number",
            "num_images:Slider",
        ),
        ("Gallery", "Number", "Markdown"),
    ),
    "train_lora": (
        (
            "images:File",
            "captions:Textbox",
            "trigger:Textbox",
            "name:Textbox",
            "preset:Dropdown",
            "steps:Number",
            "learning_rate:Number",
            "rank:Number",
            "resolution:Number",
            "sample_prompts:Textbox",
            "sample_every:Number",
            "checkpoint_every:Number",
            "seed:Number",
            "folder:Textbox",
            "compile:Checkbox",
        ),
        ("Markdown", "Lineplot", "Gallery", "Markdown"),
    ),
    "resume_training": (
        ("name:Textbox", "steps:Number", "compile:Checkbox"),
        ("Markdown", "Lineplot", "Gallery", "Markdown"),
    ),
    "caption_images": (("images:File", "template:Textbox", "folder:Textbox"), ("Textbox",)),
    "history": (("query:Api", "task:Api", "model:Api", "lora:Api", "since:Api", "until:Api", "page:Api"), ("Api",)),
    "history_delete": (("record_id:Api",), ("Api",)),
    "status": ((), ("Json",)),
    "free_memory": ((), ("Json",)),
    "model_files": ((), ("Json",)),
    "upscaler_files": ((), ("Json",)),
}


@pytest.fixture(scope="module")
def app(tiny_dir, tmp_path_factory) -> gr.Blocks:
    outputs = tmp_path_factory.mktemp("outputs")
    return build_ui(Registry(Settings(tiny=True, tiny_dir=tiny_dir, outputs_dir=outputs)))


def described(endpoint: dict) -> tuple[tuple[str, ...], tuple[str, ...]]:
    params = tuple(f"{p['parameter_name']}:{p['component']}" for p in endpoint["parameters"])
    return params, tuple(r["component"] for r in endpoint["returns"])


def test_every_named_endpoint_keeps_its_inputs_and_outputs(app):
    named = app.get_api_info()["named_endpoints"]
    got = {name.removeprefix("/"): described(endpoint) for name, endpoint in named.items()}
    assert sorted(got) == sorted(ENDPOINTS), "endpoints added or removed"
    for name, expected in ENDPOINTS.items():
        assert got[name] == expected, name


def test_every_callable_event_is_named_and_unnamed_ones_are_private(app):
    # An event without api_visibility="private" is callable by gradio_client: it must be one of the table's
    # (or an example loader, which Gradio names and keeps undocumented).
    config = app.get_config_file()
    callable_events = [d for d in config["dependencies"] if d.get("api_visibility") != "private"]
    names = {d["api_name"] for d in callable_events if d.get("api_visibility") == "public"}
    assert names == set(ENDPOINTS)
    others = [d["api_name"] for d in callable_events if d.get("api_visibility") != "public"]
    assert all(name.startswith("load_example") for name in others), others
