"""Example prompts and input images for each tab, as the official FLUX Spaces offer them.

The images are in `assets/examples/` (drawn by `assets/examples/draw.py`, CC0). A click on an example
fills the tab's fields; nothing runs until the user presses the tab's button."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

FOLDER = Path(__file__).resolve().parents[2] / "assets" / "examples"

TEXT_TO_IMAGE = [
    "A red fox curled up asleep in fresh snow at dawn, soft pink light, shallow depth of field",
    "A hand-painted wooden sign reading 'FRESH BREAD' hanging outside a village bakery, morning mist",
    "Isometric cutaway of a tiny apartment with a cat on the sofa, pastel colours, clean 3D render",
    "Portrait of an elderly fisherman with a weathered face and a yellow raincoat, overcast harbour light",
]
IMAGE_TO_IMAGE = [
    ["cottage.png", "An oil painting of a cottage on rolling hills at sunset, thick brush strokes", 0.75],
    ["still_life.png", "A photo of a blue ceramic mug and a red apple on an oak table, window light", 0.8],
]
KONTEXT = [
    ["cottage.png", "Make it winter: snow on the roof and the hills, the sky grey"],
    ["still_life.png", "Replace the apple with a lemon"],
]
UPSCALE = [["cottage.png", "A cottage on green hills under an evening sky, a tree, a path to the door"]]
REDUX = [["cottage.png"], ["still_life.png"]]
FILL = ["A steaming cup of coffee", "A bunch of sunflowers in a vase"]
CONTROL = [
    ["shapes.png", "A futuristic city skyline at night, neon lights, rain"],
    ["cottage.png", "A gingerbread house on hills of frosting, whimsical"],
]
VQA = [
    ["still_life.png", "What objects are on the table, and what colour is each?"],
    ["cottage.png", "What time of day is it, and how can you tell?"],
]


def offer(inputs: list, rows: list, label: str = "Examples") -> gr.Examples:
    """Examples for `inputs` (components in order); a row's strings ending in .png name files of the
    examples folder. Rows are filled in, never run, so they cost no GPU time and need no api_name."""

    def value(cell: object) -> object:
        return str(FOLDER / cell) if isinstance(cell, str) and cell.endswith(".png") else cell

    examples = [[value(c) for c in (row if isinstance(row, list) else [row])] for row in rows]
    return gr.Examples(examples, inputs, label=label, examples_per_page=len(examples))
