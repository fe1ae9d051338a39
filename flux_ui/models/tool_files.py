"""The files of FLUX.1's tools as ComfyUI users keep them, told by their tensors: the Redux image embedder
(`models/style_models/flux1-redux-dev.safetensors`), the SigLIP vision tower it reads images with
(`models/clip_vision/sigclip_vision_patch14_384.safetensors`) and BFL's Canny/Depth control LoRAs
(`models/loras/flux1-canny-dev-lora.safetensors`, `flux1-depth-dev-lora.safetensors`).

`identify(header, name)` reads only tensor names and shapes (as `files.classify` hands them over) and says
which of those a file is, or None. The key layouts:

- Redux (BFL's file, which ComfyUI's `StyleModelLoader` reads as it is): `redux_up.{weight,bias}` and
  `redux_down.{weight,bias}`, the same names diffusers' `ReduxImageEncoder` uses.
- SigLIP (Comfy-Org's `sigclip_vision_patch14_384.safetensors`, which ComfyUI's `comfy/clip_vision.py`
  recognises by `vision_model.encoder.layers.22.layer_norm1.weight`, a width of 1152 and 729 positions):
  transformers' `SiglipVisionModel` keys under `vision_model.` (as transformers 4 saved them). Unlike the
  CLIP vision towers kept in the same folder it has no class embedding and no pre-layernorm.
- Control LoRAs: BFL's own layer names (`img_in.lora_A.weight`, `double_blocks.0.img_attn.qkv.lora_B.bias`,
  `...query_norm.scale`), or diffusers' (`transformer.x_embedder.lora_A.weight`); either way the input layer
  takes 128 channels (the latents and the control map's), twice what FLUX.1's takes. Canny and Depth have
  the same tensors, so the file name tells them apart.
"""

from __future__ import annotations

KINDS = ("redux", "siglip", "control_lora")  # what `identify` recognises
SIGLIP_PREFIXES = ("vision_model.", "")  # ComfyUI's (transformers 4's) layout, and transformers 5's
CONTROL_IN_CHANNELS = 128  # a control LoRA's input layer: 64 latent channels + 64 of the control map
CONTROL_INPUTS = ("img_in.lora_A.weight", "transformer.x_embedder.lora_A.weight")  # BFL's, diffusers' name
CONTROL_VARIANTS = {"canny": "canny-dev-lora", "depth": "depth-dev-lora"}  # name hint -> core.variants name


def _redux(header) -> dict | None:
    if "redux_up.weight" not in header or "redux_down.weight" not in header:
        return None
    width = header["redux_up.weight"][1][1]
    return {"kind": "redux", "prefix": "", "variant": "redux-dev", "note": f"reads SigLIP features {width} wide"}


def _siglip(header) -> dict | None:
    for prefix in SIGLIP_PREFIXES:
        patch = header.get(prefix + "embeddings.patch_embedding.weight")
        if patch is None or prefix + "post_layernorm.weight" not in header:
            continue
        if prefix + "embeddings.class_embedding" in header or prefix + "pre_layrnorm.weight" in header:
            return {"skip": "a CLIP vision tower (IP-Adapter's?); FLUX.1 Redux reads images with SigLIP"}
        if len(patch[1]) != 4:
            return {"skip": "a SigLIP 2 NaFlex vision tower; FLUX.1 Redux reads images with SigLIP (384 px)"}
        positions = header[prefix + "embeddings.position_embedding.weight"][1][0]
        note = f"{patch[1][0]} wide, {positions} image positions"
        return {"kind": "siglip", "prefix": prefix, "variant": None, "note": note}
    return None


def _control_lora(header, name: str) -> dict | None:
    key = next((k for k in CONTROL_INPUTS if k in header), None)
    if key is None or header[key][1][1] != CONTROL_IN_CHANNELS:
        return None
    lower = name.lower()
    variant = next((v for hint, v in CONTROL_VARIANTS.items() if hint in lower), None)
    note = "Canny or Depth from the file name: the tensors are the same shape"
    if variant is None:
        note = "Canny or Depth cannot be told from the tensors and the file name says neither: rename it"
    layout = "bfl" if key.startswith("img_in") else "diffusers"
    return {"kind": "control_lora", "prefix": "", "variant": variant, "note": f"{layout} keys; {note}"}


def identify(header: dict[str, tuple[str, tuple[int, ...]]], name: str) -> dict | None:
    """{"kind", "prefix", "variant", "note"} of a Redux, SigLIP or control-LoRA file, {"skip": reason} for a
    file of the same sort that FLUX.1 cannot use, or None for any other file; `name` is the file's name."""
    return _redux(header) or _siglip(header) or _control_lora(header, name)
