"""The Gradio app, built by a factory from the tabs (flux_ui/ui/tabs/), the hand-off and the Models tab."""

from __future__ import annotations

import gradio as gr

from flux_ui import __version__
from flux_ui.models import downloads, file_report, files, first_start, startup, upscalers, verify
from flux_ui.models.registry import Registry
from flux_ui.ui import residency
from flux_ui.ui.api_guard import refuse_foreign_files
from flux_ui.ui.common import GPU, UiContext


def _models_tab(ctx: UiContext) -> list:
    """The residency panel: what is loaded where, memory in use, the policy; and a button that frees memory.
    Then the model files and the upscaler files found, scanned again when the tab opens and on Rescan.

    The API endpoints (`/status`, `/free_memory`) return the raw status JSON, as before; the readable
    panel is rendered from that JSON in a follow-up event that is not part of the API. Returns the events
    after which the upscaler list is fresh (for the Upscale tab's menu).
    """

    def status():
        """What the registry has loaded, and where, with the memory policy and memory in use."""
        return ctx.registry.status()

    def model_files() -> list[dict]:
        """Every model file in the --models-dir folders: what it was recognised as (by its tensors), its
        format and size, what it is used for, what its weights take on the GPU under this memory policy, or
        why it was skipped; under --verify-weights, each file's sha256 check. Scans again."""
        found = files.scan(ctx.settings.models_dirs, fresh=True)
        rows = file_report.report(found, ctx.settings)
        return verify.annotate(rows, ctx.settings.verify_weights)

    def upscaler_files() -> list[dict]:
        """Every upscaler model file found (upscale_models/ or ESRGAN/ below a --models-dir folder): its name
        (as the Upscale tab and the APIs call it), file, architecture and scale as spandrel reads them, size
        in MB, and why it cannot be used, if so. Scans again."""
        return upscalers.report(ctx.settings)

    def free_memory():
        """Drop cached transformers and auxiliary models (the shared encoders and VAE stay)."""
        ctx.registry.free_memory()
        return ctx.registry.status()

    with gr.Tab("Models", id="models") as tab:
        gr.Markdown(
            f"Memory policy **{ctx.settings.memory_policy}** ({ctx.settings.policy_reason}): "
            f"{ctx.settings.policy.summary}. Speed profile **{ctx.settings.speed}**.",
            elem_id="memory-policy",
        )
        panel = gr.Markdown(elem_id="residency")
        with gr.Row():
            refresh_btn = gr.Button("Refresh")
            free_btn = gr.Button("Free memory")
        with gr.Accordion("Model files found (--models-dir)", open=bool(ctx.settings.models_dirs)):
            files_panel = gr.Markdown(elem_id="model-files")
            files_json = gr.JSON(visible=False)
            rescan_btn = gr.Button("Rescan model files", elem_id="model-files-rescan")
        with gr.Accordion("Upscaler models found (upscale_models/, ESRGAN/)", open=False):
            upscalers_panel = gr.Markdown(elem_id="upscaler-files")
            upscalers_json = gr.JSON(visible=False)
        with gr.Accordion("Raw status (JSON)", open=False):
            status_json = gr.JSON(label="Registry")
    render = {"fn": residency.markdown, "inputs": status_json, "outputs": panel, "api_visibility": "private"}
    refresh_btn.click(status, None, status_json, api_name="status").then(**render)
    free_btn.click(free_memory, None, status_json, api_name="free_memory", concurrency_id=GPU).then(**render)
    tab.select(status, None, status_json, api_visibility="private").then(**render)
    show_files = {"fn": residency.files_markdown, "inputs": files_json, "outputs": files_panel}
    rescan_btn.click(model_files, None, files_json, api_name="model_files").then(**show_files, api_visibility="private")
    tab.select(model_files, None, files_json, api_visibility="private").then(**show_files, api_visibility="private")
    show_upscalers = {"fn": residency.upscalers_markdown, "inputs": upscalers_json, "outputs": upscalers_panel}
    return [
        rescan_btn.click(upscaler_files, None, upscalers_json, api_name="upscaler_files").then(
            **show_upscalers, api_visibility="private"
        ),
        tab.select(upscaler_files, None, upscalers_json, api_visibility="private").then(
            **show_upscalers, api_visibility="private"
        ),
    ]


def _startup_line(registry: Registry) -> None:
    """What the first Generate will need (`first_start`: a download, no weights, no GPU), the --preload
    phases and any download from the hub, above the tabs: re-read every second while the check or either
    runs; the preload's outcome stays ("Ready in 45 s (...)"). Where models may come from the hub, the line
    keeps looking every IDLE_TICK_S for a download (the first Generate's, say) and drops the first-start
    note about weights once they are loaded. Read from the registry's
    status, which never waits for a load."""
    hub = registry.settings.model_root is None

    def watch() -> bool:  # downloads may come: models from the hub, or weights the check found missing
        return hub or bool(registry.first_start.snapshot().get("missing"))

    def text() -> str:
        s = registry.status()
        lines = (first_start.describe(s), startup.describe(s["startup"]), downloads.describe(s["downloads"]))
        return "\n\n".join(line for line in lines if line)

    def tick():
        busy = registry.startup.active or registry.downloads.active or registry.first_start.checking
        return text(), gr.Timer(1.0 if busy else IDLE_TICK_S, active=busy or watch())

    line = gr.Markdown(text(), elem_id="startup")
    timer = gr.Timer(1.0)
    timer.tick(tick, None, [line, timer], queue=False, show_progress="hidden", api_visibility="private")


IDLE_TICK_S = 5.0  # how often the start-up line looks for a download when none runs


def build_ui(registry: Registry) -> gr.Blocks:
    """Build the Blocks app around `registry`; call `.queue(...)` and `.launch()` on the result."""
    from flux_ui.ui import handoff
    from flux_ui.ui.tabs import (
        control,
        fill,
        flux2_edit,
        flux2_inpaint,
        history,
        image_to_image,
        kontext,
        redux,
        text_to_image,
        train,
        upscale,
        vqa,
    )

    ctx = UiContext(registry)
    with gr.Blocks(title="FLUX UI") as demo:
        gr.Markdown(f"# FLUX UI <small>v{__version__}</small>")
        said = registry.first_start.snapshot()
        # Preloading, models from the hub, or a first-start check with something to say (or still checking).
        if ctx.settings.preload or ctx.settings.model_root is None or said["notes"] or said["state"] == "checking":
            _startup_line(registry)
        if ctx.settings.tiny:
            gr.Markdown(
                "⚠️ **Tiny mode: these models have random weights.** Images are noise; this mode exists to "
                "try the interface and run the tests without downloading FLUX.",
                elem_id="tiny-banner",
            )
        with gr.Tabs() as tabs:
            ctx.tabs["t2i"] = text_to_image.build(ctx)
            ctx.tabs["i2i"] = image_to_image.build(ctx)
            ctx.tabs["upscale"] = upscale.build(ctx)
            ctx.tabs["kontext"] = kontext.build(ctx)
            ctx.tabs["redux"] = redux.build(ctx)
            ctx.tabs["vqa"] = vqa.build(ctx)
            ctx.tabs["fill"] = fill.build(ctx)
            ctx.tabs["control"] = control.build(ctx)
            ctx.tabs["flux2_edit"] = flux2_edit.build(ctx)
            ctx.tabs["flux2_inpaint"] = flux2_inpaint.build(ctx)
            ctx.tabs["train"] = train.build(ctx)
            if ctx.settings.history:
                ctx.tabs["history"] = history.build(ctx)
            upscaler_scans = _models_tab(ctx)
        handoff.wire(ctx, tabs)  # after every tab exists: each gallery gets buttons for the tabs present
        # "Suggest an edit" in VQA: the instruction becomes the Kontext tab's instruction.
        vqa_tab, kontext_tab = ctx.tabs["vqa"], ctx.tabs["kontext"]
        vqa_tab.suggest_event.success(
            lambda text: text, vqa_tab.suggested_edit, kontext_tab.instruction, api_visibility="private"
        )
        # A LoRA trained in the Train tab is in the Text to image tab's picker at once.
        t2i = ctx.tabs["t2i"]
        for done in ctx.tabs["train"].done:
            done.success(t2i.refresh_loras, None, t2i.loras, api_visibility="private")
        # The Models tab's scan of the upscaler folders refreshes the Upscale tab's menu.
        upscale_tab = ctx.tabs["upscale"]
        for scan in upscaler_scans:
            scan.then(
                upscale_tab.refresh_upscalers, upscale_tab.upscaler, upscale_tab.upscaler, api_visibility="private"
            )
    refuse_foreign_files(demo)
    return demo
