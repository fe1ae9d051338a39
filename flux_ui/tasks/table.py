"""The task table: every task by its API name, as the UI tabs, the REST API, MCP and the Python API offer them.

A new task is one module in this package ending with its `SPEC`, one entry here, and one tab layout.
"""

from __future__ import annotations

from flux_ui.tasks import (
    TaskSpec,
    control,
    fill,
    flux2_edit,
    flux2_inpaint,
    image_to_image,
    kontext,
    redux,
    text_to_image,
    upscale,
    vqa,
)

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        text_to_image.SPEC,
        image_to_image.SPEC,
        upscale.SPEC,
        kontext.SPEC,
        redux.SPEC,
        fill.SPEC,
        control.SPEC,
        flux2_edit.SPEC,
        flux2_inpaint.SPEC,
        vqa.SPEC,
    )
}
