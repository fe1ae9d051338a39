"""A small script for the page's <head>: keyboard shortcuts, and a word when a slider clamps a value.

Gradio binds no keys to buttons: Ctrl+Enter (Cmd+Enter on a Mac) clicks the first visible button of
`MAIN_ACTIONS` (only the open tab's is visible), and each gets a tooltip naming the key.

A slider's number box silently puts a typed value back in range (500 steps become 100), so the server's
validator never sees it and cannot name the fix: the script reads the typed value before Gradio clamps
it and writes under the slider what was changed ("500 is over the limit; set to 100").
"""

from __future__ import annotations

import json

# elem_id of each tab's main button; only the open tab's is visible at a time
MAIN_ACTIONS = (
    "generate",
    "i2i-generate",
    "upscale-run",
    "kontext-edit",
    "redux-generate",
    "vqa-ask",
    "fill-run",
    "control-generate",
)
TOOLTIP = "Ctrl+Enter (⌘+Enter on a Mac)"


def head() -> str:
    """The <script> for the page's <head> (`gr.mount_gradio_app(..., head=head())`)."""
    return f"""<script>
(() => {{
  const ids = {json.dumps(list(MAIN_ACTIONS))};
  const tip = {json.dumps(TOOLTIP)};
  const buttons = () => ids.map((id) => document.getElementById(id)).filter(Boolean);
  // Captured before any textbox sees it: a prompt box's own Enter must not run the action a second time.
  document.addEventListener("keydown", (e) => {{
    if (e.key !== "Enter" || !(e.ctrlKey || e.metaKey)) return;
    const open = buttons().find((b) => b.offsetParent !== null && !b.disabled);
    if (!open) return;
    e.preventDefault();
    e.stopPropagation();
    open.click();
  }}, true);
  setInterval(() => buttons().forEach((b) => {{ if (!b.title) b.title = tip; }}), 1000);
  const clampNote = (e) => {{
    const box = e.target;
    if (!(box instanceof HTMLInputElement) || box.type !== "number") return;
    if (e.type === "keydown" && e.key !== "Enter") return;
    const block = box.closest(".block");
    if (!block || !block.querySelector("input[type=range]")) return;
    const value = parseFloat(box.value), low = parseFloat(box.min), high = parseFloat(box.max);
    let note = block.querySelector(".clamp-note");
    let text = "";
    const range = `use ${{low}} to ${{high}}`;
    if (!isNaN(value) && value < low) text = `${{value}} is under the limit; set to ${{low}} (${{range}})`;
    if (!isNaN(value) && value > high) text = `${{value}} is over the limit; set to ${{high}} (${{range}})`;
    if (!text) {{ if (note) note.remove(); return; }}
    if (!note) {{
      note = document.createElement("div");
      note.className = "clamp-note";
      note.setAttribute("role", "status");
      note.style.cssText = "font-size: var(--text-sm); color: var(--color-accent); padding-top: 2px;";
      block.appendChild(note);
    }}
    note.textContent = text;
  }};
  document.addEventListener("keydown", clampNote, true);
  document.addEventListener("focusout", clampNote, true);
}})();
</script>"""
