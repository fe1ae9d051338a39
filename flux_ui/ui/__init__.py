"""The Gradio UI: the app factory, shared tab helpers, one module per tab, hand-off, residency panel."""
