"""Calls from outside the page, checked before Gradio reads them: file payloads must be this server's
uploads, values must fit their component, and clients written before an event gained trailing inputs get
the handler's defaults for them (see each function).
"""

from __future__ import annotations

import logging

import gradio as gr

from flux_ui.core.errors import InvalidInput
from flux_ui.media.uploads import checked_upload
from flux_ui.ui.common import invalid

log = logging.getLogger(__name__)


def refuse_foreign_files(demo: gr.Blocks) -> None:
    """Refuse, before Gradio touches it, any file payload of an event that names a path outside the
    upload folder, with a gr.Error naming the event's parameter ("image: is not a file uploaded to this
    server; upload it again"), whether or not the path exists.

    Gradio refuses such paths too (once the app counts as launched, see serve.build_app), but its message
    names the path and not the field, and it has no hook before it: so `preprocess_data` of this Blocks
    is wrapped. URLs are left to Gradio (it fetches only public addresses)."""
    from gradio import utils as gr_utils
    from gradio_client import utils as client_utils

    original = demo.preprocess_data

    async def preprocess_data(block_fn, inputs, *args, **kwargs):
        params = gr_utils.get_function_params(block_fn.fn) if block_fn.fn else []
        names = [name for name, *_ in params]
        inputs = with_trailing_defaults(block_fn, inputs, params)
        for i, value in enumerate(inputs):
            name = names[i] if i < len(names) else getattr(block_fn.inputs[i], "label", None) or f"input {i}"

            def check(payload: dict, name: str = name) -> dict:
                path = payload.get("path")
                if isinstance(path, str) and path and not client_utils.is_http_url_like(path):
                    try:
                        checked_upload(path, name)
                    except InvalidInput as err:
                        log.warning("refused a file payload for %r outside the upload folder", name)
                        raise invalid(err) from None
                return payload

            client_utils.traverse(value, check, client_utils.is_file_obj)
            check_shape(block_fn, i, value, name)
        return await original(block_fn, inputs, *args, **kwargs)

    demo.preprocess_data = preprocess_data


def with_trailing_defaults(block_fn, inputs: list, params: list) -> list:
    """`inputs` with the handler's defaults for trailing inputs a caller did not send.

    Fields are only ever added at the end of an event's inputs (Kontext's extra references, fast mode);
    a client written before one was added sends fewer values, and Gradio refuses those outright ("didn't
    receive enough input values"). Where every missing parameter has a default, the call goes on as the
    client meant it; otherwise Gradio's own error stands."""
    missing = range(len(inputs), len(block_fn.inputs))
    if not missing or len(params) < len(block_fn.inputs) or not all(params[i][1] for i in missing):
        return inputs
    return [*inputs, *(params[i][2] for i in missing)]


def check_shape(block_fn, index: int, value: object, name: str) -> None:
    """Gradio validates a value against its component's data model (a chat history must be a list of
    messages) and, if it does not fit, answers with pydantic's raw text and logs a traceback; here the
    same validation comes first and names the parameter."""
    from pydantic import ValidationError

    model = getattr(block_fn.inputs[index], "data_model", None)
    if model is None or value is None or index in block_fn.component_prop_inputs:
        return
    try:
        model.model_validate(value)
    except ValidationError as err:
        first = err.errors()[0] if err.errors() else {"msg": "does not fit", "loc": ()}
        where = "/".join(str(p) for p in first.get("loc", ())) or "the value"
        raise invalid(InvalidInput(name, f"is not in the expected form ({where}: {first['msg']})")) from None
