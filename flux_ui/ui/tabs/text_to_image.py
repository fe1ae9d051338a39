"""The text-to-image tab: FLUX.1 [dev], [schnell], Krea [dev] and the FLUX.2 models."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
from PIL import Image

from flux_ui.core.errors import InvalidInput
from flux_ui.core.settings import Settings
from flux_ui.core.variants import Variant, get_variant, variants_for
from flux_ui.media.foreign_metadata import read_loaded
from flux_ui.media.uploads import checked_upload
from flux_ui.models import fast
from flux_ui.models.loras.library import LoraInfo, tagged_names, with_tags
from flux_ui.tasks.text_to_image import SPEC, TextToImageParams
from flux_ui.ui import examples, fast_mode, forms
from flux_ui.ui.common import UiContext, image_event, invalid
from flux_ui.ui.handoff import Receiver, track_selection


@dataclass
class TextToImageTab:
    """Components other tabs hand images and prompts to."""

    prompt: gr.Textbox
    gallery: gr.Gallery
    selected: gr.State  # index of the gallery image the user clicked
    send_row: gr.Row  # where the hand-off buttons go
    parameters: Receiver  # fills the form from the parameters embedded in a PNG
    loras: gr.Dropdown  # the LoRA picker; `refresh_loras` gives its choices after the library changed
    refresh_loras: object  # () -> the picker's update, from a rescan of the LoRA folders


def variant_note(name: str) -> str:
    v = get_variant(name)
    use = "commercial use allowed" if v.commercial_use else "non-commercial license"
    return f"`{v.repo_id}` · {v.default_steps} steps by default · {use} (`{v.license}`)"


def text_to_image_variant(name: str) -> Variant:
    """The text-to-image variant to redo an image with: its own, or the one it builds on (Redux -> [dev]).
    Kontext and the other image-to-image models have no text-to-image counterpart; [dev] stands in."""
    variant = get_variant(name)
    if variant.task == "text_to_image":
        return variant
    return get_variant(variant.base or "dev")


def form_values(file: str | None, settings: Settings) -> tuple:
    """Read the generation parameters embedded in a PNG (ours, A1111 / Forge, ComfyUI, SwarmUI, InvokeAI, or
    a prompt alone) and return them as the form's values: prompt, variant, width, height, steps, guidance,
    seed, aspect preset, variant note, fast mode, and the notes on what could not be carried over. A field
    the image does not say is left as it is (gr.skip()): fast mode is set only from our own images, which
    say either way. gr.Error if it carries none, or a malformed value."""
    if not file:
        raise invalid(ValueError("image: upload a PNG made by FLUX UI or another SD UI"))
    try:
        with Image.open(checked_upload(file, "image")) as img:
            loaded = read_loaded(img)
    except InvalidInput as err:
        raise invalid(err) from None
    except ValueError as err:
        if str(err).startswith("image parameters:"):
            raise invalid(err) from None
        raise invalid(ValueError("image: not a readable PNG; upload a PNG made by FLUX UI or another SD UI")) from None
    except (OSError, SyntaxError, Image.DecompressionBombError):
        raise invalid(ValueError("image: not a readable PNG; upload a PNG made by FLUX UI or another SD UI")) from None
    if loaded is None:
        raise invalid(ValueError("image: it carries no generation parameters"))
    variant = text_to_image_variant(loaded.variant) if loaded.variant else None
    notes = list(loaded.notes)
    if variant is not None and variant.name != loaded.variant:
        notes.insert(0, f"It was made with {get_variant(loaded.variant).label}; {variant.label} stands in.")
    guidance = loaded.guidance
    if guidance is None and variant is not None:
        guidance = variant.default_guidance or 0.0
    # Prompts keep their tags; LoRAs named elsewhere (a "LoRAs:" entry, loader nodes) become tags, so nothing is lost.
    names = [*tagged_names(loaded.prompt), *(n for n, _ in loaded.loras)]
    prompt = with_tags(loaded.prompt, names, dict(loaded.loras))

    def kept(value):
        return gr.skip() if value is None else value

    fast_mode_on = loaded.fast
    if fast_mode_on and (reason := fast.unavailable(settings)):
        notes.append(f"It was made in fast mode, which {reason}; it is left off (the exact image is made).")
        fast_mode_on = False

    source = f"Loaded from a {loaded.source} image." if loaded.source != "prompt only" else ""
    return (
        prompt,
        kept(variant and variant.name),
        kept(loaded.width),
        kept(loaded.height),
        kept(loaded.steps),
        kept(guidance),
        kept(loaded.seed),
        forms.CUSTOM if loaded.width is not None else gr.skip(),
        variant_note(variant.name) if variant is not None else gr.skip(),
        kept(fast_mode_on),
        "\n".join([source, *(f"- {n}" for n in notes)]).strip(),
    )


def lora_note(names: list[str], entries: list[LoraInfo]) -> str:
    """One line per picked LoRA with its trigger words, so they can be typed into the prompt."""
    known = {e.name: e for e in entries}
    lines = []
    for name in names:
        info = known.get(name)
        if info is None:
            lines.append(f"- **{name}**: not in the LoRA folders (Rescan looks again)")
        elif info.trigger_words:
            lines.append(f"- **{name}**: trigger words " + ", ".join(f"`{w}`" for w in info.trigger_words))
        else:
            lines.append(f"- **{name}**: no trigger words recorded in the file")
    return "\n".join(lines)


def build(ctx: UiContext) -> TextToImageTab:
    settings = ctx.settings
    library = ctx.registry.loras

    def generate(
        prompt: str,
        variant: str = "dev",
        width: int = 1024,
        height: int = 1024,
        steps: int = 28,
        guidance: float = 3.5,
        seed: int = -1,
        num_images: int = 1,
        fast: bool = False,
        request: gr.Request = None,
        progress: gr.Progress = gr.Progress(),
    ):
        """Generate images from a prompt with FLUX.1 [dev], [schnell] or Krea [dev].

        Args:
            prompt: what the image should show; <lora:NAME:WEIGHT> tags apply LoRAs (see /loras).
            variant: dev, schnell, krea-dev, or a FLUX.2 model: flux2-dev, flux2-klein-4b, flux2-klein-9b,
                flux2-klein-base-4b, flux2-klein-base-9b.
            width: pixels, a multiple of 16.
            height: pixels, a multiple of 16.
            steps: denoising steps (dev 28, schnell 4).
            guidance: distilled guidance (dev 3.5, Krea 4.5, FLUX.2 [dev] 4), or [klein] base's CFG scale (4);
                ignored by schnell and FLUX.2 [klein].
            seed: -1 for a random seed; image i of a batch uses seed + i.
            num_images: how many images to generate.
            fast: fast mode: about half the steps computed in full (cache-dit's step cache), softer detail.
        """
        raw = TextToImageParams(prompt, variant, width, height, steps, guidance, seed, num_images, fast=fast)
        yield from forms.gallery_seed_info(ctx, SPEC, raw, request, progress)

    def on_variant(name: str):
        return (*forms.variant_defaults(name), variant_note(name))

    def show_guidance(name: str):
        return gr.update(visible=get_variant(name).uses_guidance)

    def receive_parameters(path: str):
        """A hand-off fills the form as loading the file does, and shows guidance only where it applies."""
        values = list(form_values(path, settings))
        if isinstance(values[1], str):
            values[5] = gr.update(value=values[5], visible=get_variant(values[1]).uses_guidance)
        return tuple(values)

    def reuse_last(last: float | None, request: gr.Request):
        """The seed of this session's last finished run; before one, the seed is left as it is ("Seed used"
        is empty, and the browser may send it as 0)."""
        with ctx.lock:
            ran = (request.session_hash, SPEC.name) in ctx.shown
        if last is None or not ran:
            gr.Info("No image made yet in this session: the seed is left as it is.", title="Nothing to reuse")
            return gr.skip()
        return int(last)

    def on_preset(label: str):
        return forms.PRESETS.get(label, (gr.skip(), gr.skip()))

    def check_parameters(file: str | None) -> None:
        form_values(file, settings)  # raises gr.Error naming what is wrong with the file

    def load_parameters(file: str | None):
        """Read the generation parameters embedded in a PNG and return them as form values."""
        return form_values(file, settings)

    def on_pick(picked: list[str] | None, text: str):
        """The picker rewrites the prompt's LoRA tags: picking adds <lora:NAME:1>, unpicking removes it."""
        picked = list(picked or [])
        return with_tags(text, picked), lora_note(picked, library.entries())

    def on_prompt(text: str):
        """Typing a tag (or loading parameters) selects it in the picker."""
        names = tagged_names(text)
        return gr.update(value=names), lora_note(names, library.entries())

    def refresh_loras(text: str):
        entries = library.refresh()
        choices = [(e.label, e.name) for e in entries]
        return gr.update(choices=choices), lora_note(tagged_names(text), entries)

    def list_loras() -> list[dict]:
        """The LoRAs a prompt can apply with <lora:NAME:WEIGHT>, with the trigger words their files record.
        Rescans the LoRA folders."""
        return [{"name": e.name, "trigger_words": list(e.trigger_words)} for e in library.refresh()]

    with gr.Tab("Text to image", id="t2i"), gr.Row():
        with gr.Column(scale=1):
            prompt = gr.Textbox(label="Prompt", lines=3, placeholder="A red fox in fresh snow…", elem_id="prompt")
            examples.offer([prompt], examples.TEXT_TO_IMAGE, label="Example prompts")
            with gr.Row(equal_height=True):
                lora_pick = gr.Dropdown(
                    [(e.label, e.name) for e in library.entries()],
                    value=[],
                    multiselect=True,
                    allow_custom_value=True,  # tags typed into the prompt show here even if unknown
                    label="LoRAs",
                    info="Picking one adds <lora:NAME:1> to the prompt; edit the number there to weight it",
                    elem_id="loras",
                    scale=4,
                )
                lora_refresh = gr.Button("Rescan", scale=0, min_width=80, elem_id="loras-refresh")
            lora_info = gr.Markdown(elem_id="lora-info")
            with gr.Row():
                choices = [(v.label, v.name) for v in variants_for("text_to_image")]
                variant = gr.Dropdown(choices, value="dev", label="Model", elem_id="variant", min_width=200)
                preset = gr.Dropdown(
                    [*forms.PRESETS, forms.CUSTOM], value=next(iter(forms.PRESETS)), label="Aspect ratio", min_width=200
                )
            note = gr.Markdown(variant_note("dev"))
            with gr.Row():
                width = gr.Slider(64, forms.MAX_SLIDER_SIDE, value=1024, step=16, label="Width", elem_id="width")
                height = gr.Slider(64, forms.MAX_SLIDER_SIDE, value=1024, step=16, label="Height", elem_id="height")
            steps, guidance = forms.steps_and_guidance(settings, 28, 3.5, "steps", elem_id="guidance")
            with gr.Row():
                seed = forms.seed_box("seed")
                random_btn = gr.Button("Random", scale=0, min_width=80)  # words: not every system has emoji
                reuse_btn = gr.Button("Reuse last", scale=0, min_width=80)
                num_images = gr.Slider(1, settings.max_images, value=1, step=1, label="Images")
            fast = fast_mode.checkbox(settings, "fast")
            generate_btn, cancel_btn = forms.run_and_cancel("Generate", "generate", "cancel")
            with gr.Accordion("Load parameters from image", open=False):
                params_file = gr.File(label="PNG with parameters", file_types=[".png"], elem_id="params-file")
                params_notes = gr.Markdown(elem_id="params-notes")  # what the image said that the form cannot take
        with gr.Column(scale=1):
            gallery = forms.result_gallery("Images", "gallery")
            send_row, last_seed, info = forms.result_footer("seed-used", "info", label="info")
        selected = track_selection(gallery)  # inside the tab: a component between tabs confuses the tab bar
        gr.api(list_loras, api_name="loras")  # inside the tab for the same reason

    # .input, not .change: loading parameters from an image must not reset steps and guidance.
    variant.input(on_variant, variant, [steps, guidance, note], api_visibility="private")
    preset.input(on_preset, preset, [width, height], api_visibility="private")
    lora_pick.input(on_pick, [lora_pick, prompt], [prompt, lora_info], queue=False, api_visibility="private")
    prompt.change(
        on_prompt, prompt, [lora_pick, lora_info], queue=False, show_progress="hidden", api_visibility="private"
    )
    lora_refresh.click(refresh_loras, prompt, [lora_pick, lora_info], api_visibility="private")
    random_btn.click(lambda: -1, None, seed, api_visibility="private")
    reuse_btn.click(reuse_last, last_seed, seed, api_visibility="private")
    inputs = [prompt, variant, width, height, steps, guidance, seed, num_images, fast]
    run = gr.on(
        [generate_btn.click, prompt.submit],
        generate,
        inputs,
        [gallery, last_seed, info],
        api_name="text_to_image",
        **image_event(settings),
    )
    forms.finish_run(ctx, run, last_seed, cancel_btn)
    form = [*inputs[:-2], preset, note, fast, params_notes]  # the number of images is not a parameter
    # The file is checked first, in an event with no outputs: Gradio marks every output of a failed event
    # with a red "Error" pill that stays until that output changes again; the toast says what is wrong.
    params_file.upload(check_parameters, params_file, None, show_progress="hidden", api_visibility="private").success(
        load_parameters, params_file, form, api_name="load_parameters"
    ).success(show_guidance, variant, guidance, api_visibility="private")
    return TextToImageTab(
        prompt=prompt,
        gallery=gallery,
        selected=selected,
        send_row=send_row,
        parameters=Receiver(form, receive_parameters),
        loras=lora_pick,
        refresh_loras=lambda: gr.update(choices=[(e.label, e.name) for e in library.entries()]),
    )
