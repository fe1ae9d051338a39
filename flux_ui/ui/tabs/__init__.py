"""One module per tab of the UI; each has `build(ctx)`, called inside the app's `gr.Tabs()`."""
