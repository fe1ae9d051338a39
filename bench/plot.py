"""Bar chart of a speed benchmark's results (seconds per image), drawn with Pillow.

python bench/plot.py bench/results/2026-11-22-h100-run6-main.json docs/performance.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw

WIDTH, ROW, LEFT, RIGHT = 1000, 46, 430, 90


def plot(results: Path, out: Path) -> None:
    data = json.loads(results.read_text())
    rows = [(r["config"], r["median_s"]) for r in data["rows"]]
    top = 60
    img = Image.new("RGB", (WIDTH, top + ROW * len(rows) + 40), "white")
    draw = ImageDraw.Draw(img)
    draw.text(
        (10, 10), "FLUX.1 [dev] 1024x1024, 28 steps: seconds per image (median of 3), lower is better", fill="black"
    )
    draw.text(
        (10, 28), f"{data['gpu']}, {data['date']}, torch {data['torch']}, diffusers {data['diffusers']}", fill="gray"
    )
    longest = max(s for _, s in rows)
    scale = (WIDTH - LEFT - RIGHT) / longest
    for i, (label, seconds) in enumerate(rows):
        y = top + i * ROW
        draw.text((10, y + 12), label[:62], fill="black")
        colour = (70, 110, 200) if not label.startswith("app path") else (220, 120, 40)
        draw.rectangle((LEFT, y + 6, LEFT + seconds * scale, y + ROW - 10), fill=colour)
        draw.text((LEFT + seconds * scale + 8, y + 12), f"{seconds:.2f} s", fill="black")
    goal_x = LEFT + 1.9 * scale
    draw.line((goal_x, top - 4, goal_x, top + ROW * len(rows)), fill=(200, 0, 0), width=2)
    draw.text((goal_x + 4, top + ROW * len(rows) + 4), "goal 1.9 s", fill=(200, 0, 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)


if __name__ == "__main__":
    plot(Path(sys.argv[1]), Path(sys.argv[2]))
