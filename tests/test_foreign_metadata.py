"""Load parameters on PNGs from other tools, each written as that tool writes it:

- A1111 / Forge: `images.save_image` adds the infotext (prompt, "Negative prompt: ..." line, then one line of
  `Key: value` pairs joined by ", ") as a tEXt chunk `parameters` through PIL's PngInfo.add_text.
- ComfyUI: SaveImage adds `prompt` (the queued graph in API format) and `workflow` as tEXt chunks of
  `json.dumps(...)` (default separators), and saves with compress_level 4.
- SwarmUI: an iTXt chunk `parameters` with an empty language id, holding its JSON (2-space indented)
  `{"sui_image_params": {...}, "sui_models": [...]}`.
- InvokeAI: tEXt chunks `invokeai_metadata` and `invokeai_graph`, pydantic's compact JSON.

The fixtures are small (16x16) and made here.
"""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image, PngImagePlugin

from flux_ui.core.seeds import SEED_MAX
from flux_ui.media.foreign_metadata import OTHER_TOOLS_SEED, read_loaded, variant_for_model
from flux_ui.media.metadata import ImageMeta, png_info


def png(chunks: list[tuple[str, str, str]], compress_level: int = 6) -> Image.Image:
    """A 16x16 PNG with text chunks (kind "tEXt" or "iTXt", key, text), reopened as a reader sees it."""
    info = PngImagePlugin.PngInfo()
    for kind, key, text in chunks:
        if kind == "iTXt":
            info.add_itxt(key, text, lang="", tkey="")
        else:
            info.add_text(key, text)
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), "gray").save(buf, format="PNG", pnginfo=info, compress_level=compress_level)
    buf.seek(0)
    return Image.open(buf)


def has_note(loaded, *words: str) -> bool:
    return any(all(w in n for w in words) for n in loaded.notes)


# -- A1111 / Forge -----------------------------------------------------------------------------------

FORGE_HIRES = (
    "a lighthouse at dusk <lora:ink_style:0.8>\n"
    "Negative prompt: blurry, lowres\n"
    "Steps: 20, Sampler: Euler, Schedule type: Simple, CFG scale: 1, Distilled CFG Scale: 3.5, Seed: 1234, "
    "Size: 896x1152, Model hash: 8e91b68084, Model: flux1-schnell-fp8, Denoising strength: 0.45, "
    "Hires Module 1: Use same choices, Hires CFG Scale: 1, Hires upscale: 2, Hires steps: 10, "
    'Hires upscaler: 4x-UltraSharp, Lora hashes: "ink_style: 1e2b3c4d5e6f", '
    "Version: f2.0.1v1.10.1-previous-313-g8a042934, Module 1: ae, Module 2: clip_l, Module 3: t5xxl_fp8_e4m3fn"
)


def test_forge_png_with_negative_prompt_hires_and_a_schnell_file():
    loaded = read_loaded(png([("tEXt", "parameters", FORGE_HIRES)]))
    assert loaded.source == "A1111 / Forge"
    assert (loaded.prompt, loaded.variant, loaded.seed, loaded.steps) == (
        "a lighthouse at dusk <lora:ink_style:0.8>",
        "schnell",  # flux1-schnell-fp8, not [dev]
        1234,
        20,
    )
    assert (loaded.width, loaded.height, loaded.guidance) == (896, 1152, 3.5)  # the first pass
    assert has_note(loaded, "Negative prompt", "blurry, lowres")
    assert has_note(loaded, "Hires fix", "Hires upscale: 2", "4x-UltraSharp", "Denoising strength: 0.45")
    assert not any(n.startswith(("Model hash", "Module 1", "Version")) for n in loaded.notes)  # information only
    assert OTHER_TOOLS_SEED in loaded.notes


def test_a1111_keys_without_a_field_are_reported():
    text = (
        "a cat\nSteps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 5, Size: 512x768, Clip skip: 2"
    )
    loaded = read_loaded(png([("tEXt", "parameters", text)]))
    assert (loaded.variant, loaded.steps, loaded.width) == (None, 30, 512)
    assert has_note(loaded, "DPM++ 2M") and has_note(loaded, "Karras") and has_note(loaded, "CFG scale 7")
    assert has_note(loaded, "Clip skip: '2' is not carried over")


def test_our_own_png_loads_without_notes():
    meta = ImageMeta("a fox <lora:ink:0.5>", "krea-dev", 7, 28, 4.5, 1024, 768, loras=(("glow", 0.7),))
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, format="PNG", pnginfo=png_info(meta))
    loaded = read_loaded(Image.open(buf))
    assert loaded.source == "FLUX UI" and loaded.notes == ()
    assert (loaded.variant, loaded.seed, loaded.guidance, loaded.loras) == ("krea-dev", 7, 4.5, (("glow", 0.7),))


def test_prompt_only_pngs():
    for chunk in (
        ("tEXt", "parameters", "just a prompt, nothing else"),
        ("tEXt", "prompt", "just a prompt, nothing else"),
    ):
        loaded = read_loaded(png([chunk]))
        assert (loaded.source, loaded.prompt, loaded.seed, loaded.variant) == (
            "prompt only",
            "just a prompt, nothing else",
            None,
            None,
        )
        assert has_note(loaded, "Only a prompt")
    assert read_loaded(png([])) is None


# -- ComfyUI -----------------------------------------------------------------------------------------


def comfy_png(prompt: dict, workflow: dict | None = None) -> Image.Image:
    chunks = [("tEXt", "prompt", json.dumps(prompt))]
    chunks.append(("tEXt", "workflow", json.dumps(workflow or {"last_node_id": 13, "nodes": [], "links": []})))
    return png(chunks, compress_level=4)


def node(class_type: str, title: str | None = None, **inputs) -> dict:
    return {"inputs": inputs, "class_type": class_type, "_meta": {"title": title or class_type}}


# ComfyUI's FLUX.1 [dev] example as the API format queues it: SamplerCustomAdvanced with RandomNoise,
# BasicGuider, KSamplerSelect, BasicScheduler, FluxGuidance, EmptySD3LatentImage, a GGUF UNet and two LoRAs.
COMFY_CUSTOM = {
    "6": node("CLIPTextEncode", "CLIP Text Encode (Positive Prompt)", text="a cozy cabin in the woods", clip=["11", 0]),
    "8": node("VAEDecode", samples=["13", 0], vae=["10", 0]),
    "9": node("SaveImage", filename_prefix="ComfyUI", images=["8", 0]),
    "10": node("VAELoader", "Load VAE", vae_name="ae.safetensors"),
    "11": node("DualCLIPLoader", clip_name1="t5xxl_fp16.safetensors", clip_name2="clip_l.safetensors", type="flux"),
    "12": node("UnetLoaderGGUF", "Unet Loader (GGUF)", unet_name="flux1-dev-Q8_0.gguf"),
    "13": node(
        "SamplerCustomAdvanced",
        noise=["25", 0],
        guider=["22", 0],
        sampler=["16", 0],
        sigmas=["17", 0],
        latent_image=["27", 0],
    ),
    "16": node("KSamplerSelect", sampler_name="euler"),
    "17": node("BasicScheduler", scheduler="simple", steps=24, denoise=1.0, model=["30", 0]),
    "22": node("BasicGuider", model=["30", 0], conditioning=["26", 0]),
    "25": node("RandomNoise", noise_seed=987654321),
    "26": node("FluxGuidance", guidance=2.8, conditioning=["6", 0]),
    "27": node("EmptySD3LatentImage", width=1216, height=832, batch_size=1),
    "28": node("LoraLoaderModelOnly", lora_name="flux\\ink_style.safetensors", strength_model=0.8, model=["12", 0]),
    "29": node("LoraLoaderModelOnly", lora_name="glow.safetensors", strength_model=0.5, model=["28", 0]),
    "30": node("ModelSamplingFlux", max_shift=1.15, base_shift=0.5, width=1216, height=832, model=["29", 0]),
}


def test_comfyui_sampler_custom_advanced_graph():
    loaded = read_loaded(comfy_png(COMFY_CUSTOM))
    assert loaded.source == "ComfyUI"
    assert (loaded.prompt, loaded.seed, loaded.steps, loaded.guidance) == (
        "a cozy cabin in the woods",
        987654321,
        24,
        2.8,
    )
    assert (loaded.width, loaded.height, loaded.variant) == (1216, 832, "dev")  # flux1-dev-Q8_0.gguf
    assert loaded.loras == (("flux/ink_style", 0.8), ("glow", 0.5))
    assert loaded.notes == (OTHER_TOOLS_SEED,)


# The simple checkpoint workflow with KSampler, a negative prompt, a LoraLoader and a hires second pass.
COMFY_KSAMPLER = {
    "3": node(
        "KSampler",
        seed=18446744073709551614,  # ComfyUI's seeds reach 2**64
        steps=4,
        cfg=1.0,
        sampler_name="euler",
        scheduler="simple",
        denoise=1.0,
        model=["10", 0],
        positive=["6", 0],
        negative=["7", 0],
        latent_image=["5", 0],
    ),
    "4": node("CheckpointLoaderSimple", ckpt_name="flux1-schnell-fp8.safetensors"),
    "5": node("EmptyLatentImage", width=1024, height=1024, batch_size=2),
    "6": node("CLIPTextEncode", text=["20", 0], clip=["10", 1]),
    "7": node("CLIPTextEncode", text="watermark", clip=["10", 1]),
    "8": node("VAEDecode", samples=["12", 0], vae=["4", 2]),
    "9": node("SaveImage", filename_prefix="ComfyUI", images=["8", 0]),
    "10": node(
        "LoraLoader",
        lora_name="detail.safetensors",
        strength_model=0.6,
        strength_clip=1.0,
        model=["4", 0],
        clip=["4", 1],
    ),
    "11": node("LatentUpscaleBy", upscale_method="nearest-exact", scale_by=1.5, samples=["3", 0]),
    "12": node(
        "KSampler",
        seed=1,
        steps=4,
        cfg=1.0,
        sampler_name="euler",
        scheduler="simple",
        denoise=0.5,
        model=["10", 0],
        positive=["6", 0],
        negative=["7", 0],
        latent_image=["11", 0],
    ),
    "20": node("PrimitiveString", value="a fox in the snow"),
}


def test_comfyui_ksampler_graph_reports_what_it_cannot_carry():
    loaded = read_loaded(comfy_png(COMFY_KSAMPLER))
    assert (loaded.prompt, loaded.variant, loaded.steps, loaded.width, loaded.height) == (
        "a fox in the snow",  # through a primitive node
        "schnell",
        4,
        1024,
        1024,
    )
    assert loaded.seed is None and has_note(loaded, "18446744073709551614", str(SEED_MAX))
    assert loaded.loras == (("detail", 0.6),)
    assert has_note(loaded, "second sampler pass", "node 12")  # the hires pass, not the first
    assert has_note(loaded, "Negative prompt", "watermark")
    assert has_note(loaded, "CLIP strength 1.0") and has_note(loaded, "batch of 2")


def test_comfyui_img2img_and_unknown_nodes_are_reported():
    graph = json.loads(json.dumps(COMFY_CUSTOM))
    graph["27"] = node("VAEEncode", pixels=["40", 0], vae=["10", 0])
    graph["40"] = node("LoadImage", image="photo.png")
    graph["17"]["inputs"]["denoise"] = 0.6
    graph["26"] = node("ConditioningCombine", conditioning_1=["6", 0], conditioning_2=["6", 0])
    loaded = read_loaded(comfy_png(graph))
    assert loaded.prompt == "a cozy cabin in the woods" and loaded.width is None
    assert has_note(loaded, "VAEEncode") and has_note(loaded, "Denoise 0.6") and has_note(loaded, "ConditioningCombine")
    assert has_note(loaded, "does not say its size")


@pytest.mark.parametrize(
    "prompt, message",
    [
        ("{not json", "'prompt' is not valid JSON"),
        ('{"1": 5}', "node '1' is not a node"),
        ('{"1": {"class_type": "SaveImage", "inputs": {}}}', "no sampler node"),
        ('{"1": ' + "[" * 100_000, "'prompt' is not valid JSON"),  # nested too deep for the parser
    ],
    ids=["not-json", "not-a-node", "no-sampler", "too-deep"],
)
def test_malformed_comfyui_graphs_are_named(prompt, message):
    with pytest.raises(ValueError, match=message):
        read_loaded(png([("tEXt", "prompt", prompt)]))


# -- SwarmUI and InvokeAI ----------------------------------------------------------------------------

SWARM = {
    "sui_image_params": {
        "prompt": "a red fox, studio photo",
        "negativeprompt": "",
        "model": "Flux/flux1-krea-dev",
        "seed": 305223794,
        "steps": 28,
        "cfgscale": 1.0,
        "fluxguidancescale": 4.5,
        "aspectratio": "Custom",
        "width": 832,
        "height": 1216,
        "sampler": "euler",
        "scheduler": "simple",
        "loras": ["flux/ink_style"],
        "loraweights": ["0.7"],
        "vae": "ae.sft",
        "initimagecreativity": 0.6,
        "swarm_version": "0.9.6.2",
        "date": "2025-08-07",
        "generation_time": "0.01 (prep) and 12.40 (gen) seconds",
    },
    "sui_models": [{"name": "flux1-krea-dev.safetensors", "param": "model", "hash": "0x1234"}],
}


def test_swarmui_png():
    loaded = read_loaded(png([("iTXt", "parameters", json.dumps(SWARM, indent=2))]))
    assert loaded.source == "SwarmUI"
    assert (loaded.prompt, loaded.variant, loaded.seed, loaded.steps, loaded.guidance) == (
        "a red fox, studio photo",
        "krea-dev",
        305223794,
        28,
        4.5,
    )
    assert (loaded.width, loaded.height, loaded.loras) == (832, 1216, (("flux/ink_style", 0.7),))
    (note,) = (n for n in loaded.notes if n != OTHER_TOOLS_SEED)  # the rest is mapped or mere information
    assert "initimagecreativity" in note


INVOKE = {
    "generation_mode": "flux_txt2img",
    "positive_prompt": "an astronaut riding a horse",
    "width": 1024,
    "height": 768,
    "seed": 1797262340,
    "steps": 30,
    "guidance": 4,
    "scheduler": "euler",
    "model": {"key": "a1b2", "hash": "blake3:00ff", "name": "FLUX Schnell (Quantized)", "base": "flux", "type": "main"},
    "loras": [
        {
            "model": {"key": "c3", "hash": "blake3:11", "name": "ink_style", "base": "flux", "type": "lora"},
            "weight": 0.75,
        }
    ],
    "t5_encoder": {"key": "t5", "name": "t5_bnb_int8_quantized_encoder", "base": "any", "type": "t5_encoder"},
    "clip_embed_model": {"key": "clip", "name": "clip-vit-large-patch14", "base": "any", "type": "clip_embed"},
    "vae": {"key": "vae", "name": "FLUX.1-schnell_ae", "base": "flux", "type": "vae"},
    "app_version": "5.6.0",
}


def test_invokeai_png():
    graph = {"id": "flux_graph:abc", "nodes": {}, "edges": []}
    loaded = read_loaded(
        png(
            [
                ("tEXt", "invokeai_metadata", json.dumps(INVOKE, separators=(",", ":"))),
                ("tEXt", "invokeai_graph", json.dumps(graph, separators=(",", ":"))),
            ]
        )
    )
    assert loaded.source == "InvokeAI"
    assert (loaded.prompt, loaded.variant, loaded.seed, loaded.steps, loaded.guidance) == (
        "an astronaut riding a horse",
        "schnell",
        1797262340,
        30,
        4.0,
    )
    assert (loaded.width, loaded.height, loaded.loras) == (1024, 768, (("ink_style", 0.75),))
    assert loaded.notes == (OTHER_TOOLS_SEED,)


@pytest.mark.parametrize(
    "name, variant",
    [
        ("flux1-schnell-fp8", "schnell"),
        ("flux1-dev-Q8_0.gguf", "dev"),
        ("flux1-krea-dev", "krea-dev"),
        ("FLUX.1 [schnell]", "schnell"),
        ("models/unet/flux1-dev-fp8-e4m3fn.safetensors", "dev"),
        ("flux1-dev-bnb-nf4-v2", "dev"),
        ("flux1-kontext-dev.safetensors", "kontext-dev"),
        ("FLUX Schnell (Quantized)", "schnell"),
    ],
)
def test_foreign_model_names(name, variant):
    assert variant_for_model(name) == (variant, None)


def test_unknown_model_names_say_so():
    variant, note = variant_for_model("getphatFLUXReality_v8")
    assert variant == "dev" and "fine-tune" in note
    variant, note = variant_for_model("sd_xl_base_1.0")
    assert variant is None and "not a FLUX.1 model" in note


def test_load_parameters_endpoint_shows_the_notes(app_server, tmp_path):
    from gradio_client import Client, handle_file

    path = tmp_path / "comfy.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", json.dumps(COMFY_KSAMPLER))
    Image.new("RGB", (16, 16)).save(path, pnginfo=info, compress_level=4)
    values = Client(app_server[0], verbose=False).predict(handle_file(str(path)), api_name="/load_parameters")
    assert values[0] == "a fox in the snow <lora:detail:0.6>" and values[1] == "schnell" and values[4] == 4
    assert "Loaded from a ComfyUI image." in values[-1] and "watermark" in values[-1] and "second sampler" in values[-1]
