"""LoRA training on FLUX.1 [dev] from the user's own images: presets by GPU memory (`presets`), the request
and its checks (`params`), the training set and its encoding (`data`), the base model, LoRA and loss
(`model`), the run itself (`run`) and the LoRA file it leaves (`export`). Nothing here imports gradio.
"""
