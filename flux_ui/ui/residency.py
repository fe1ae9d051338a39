"""The residency panel's text: `Registry.status()` as Markdown a person reads at a glance.

Plain formatting, no gradio, so the tests check the words the Models tab shows.
"""

from __future__ import annotations

from flux_ui.models import downloads, first_start, startup

# Readable names of the shared parts in the table.
PART_LABELS = {
    "text_encoder": "CLIP-L text encoder",
    "text_encoder_2": "T5-XXL text encoder",
    "vae": "VAE",
}


def tier(device: str) -> str:
    """Where a model's weights are, in the words of the tiers: GPU, RAM, or offloaded per block."""
    if device == "offloaded":
        return "RAM, offloaded (each block copied to the GPU as it runs)"
    if device.startswith(("cuda", "mps")):
        return f"GPU ({device})"
    return "RAM"


def _gib(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f} GiB"


def _size(mib: float | None) -> str:
    """A model's size: GiB for FLUX-size models, MiB for small (and tiny) ones."""
    if mib is None:
        return "-"
    return f"{mib / 1024:.2f} GiB" if mib >= 1024 else f"{mib:.1f} MiB"


def memory_lines(status: dict) -> list[str]:
    mem = status.get("memory", {})
    lines = [
        f"**Memory policy:** `{status.get('policy')}` ({status.get('policy_reason')}) · "
        f"**speed profile:** `{status.get('speed')}` · **device:** `{status.get('device')}`"
    ]
    if gpu := mem.get("gpu"):
        lines.append(
            f"**GPU:** {_gib(gpu['allocated_gib'])} in use of {_gib(gpu['total_gib'])} "
            f"({_gib(gpu['reserved_gib'])} reserved by PyTorch)"
        )
    if ram := mem.get("ram"):
        lines.append(
            f"**RAM:** this process {_gib(ram['process_gib'])}; {_gib(ram['available_gib'])} available of "
            f"{_gib(ram['total_gib'])}"
        )
    budget = mem.get("ram_budget_gib")
    lines.append(
        f"**Warm tier:** {_size(mem.get('warm_tier_mib'))} of transformers in RAM, budget "
        f"{'unlimited' if budget is None else _gib(budget)} · up to {mem.get('gpu_transformers')} transformer(s) "
        f"on the GPU, {mem.get('transformer_cache')} cached"
    )
    return lines


def model_rows(status: dict) -> list[tuple[str, str, str, str]]:
    """(model, where, size, LoRAs loaded) for every loaded model: transformers, shared parts, auxiliary."""
    sizes, loras = status.get("sizes_mib", {}), status.get("loras", {})
    rows = []
    for t in status.get("transformers", []):
        key = f"transformer:{t['variant']}"
        label = f"transformer `{t['variant']}`" + (" (active)" if t["active"] else "")
        rows.append((label, tier(t["device"]), _size(sizes.get(key)), ", ".join(loras.get(key, [])) or "-"))
    for name, device in status.get("shared", {}).items():
        lora = ", ".join(loras.get(name, [])) or "-"
        rows.append((PART_LABELS.get(name, name), tier(device), _size(sizes.get(name)), lora))
    for key, device in status.get("aux", {}).items():
        rows.append((f"auxiliary `{key}`", tier(device), _size(sizes.get(key)), "-"))
    return rows


def markdown(status: dict) -> str:
    """The panel: memory figures, then one table row per loaded model."""
    lines = memory_lines(status)
    if status.get("startup") and (line := startup.describe(status["startup"])):
        lines.insert(0, line)
    if status.get("downloads") and (line := downloads.describe(status["downloads"])):
        lines.insert(0, line)
    if line := first_start.describe(status):
        lines.insert(0, line)
    rows = model_rows(status)
    table = ["| model | where | weights | LoRAs loaded |", "|---|---|---|---|"]
    table += [f"| {' | '.join(row)} |" for row in rows]
    body = "\n".join(table) if rows else "_No model loaded yet: the first request loads what it needs._"
    return "\n\n".join([*lines, body])


def files_markdown(rows: list[dict]) -> str:
    """The model files found in the --models-dir folders, as a table (rows from `models.file_report.report`);
    under --verify-weights with a column for each file's sha256 check, and files that failed it named first."""
    if not rows:
        return "No `--models-dir` folders given, or no model files in them."
    checked = any("verified" in r for r in rows)
    head = ["file", "recognised as", "format", "size", "on the GPU", "used for", "note"]
    head += ["sha256 check"] if checked else []
    lines = [f"| {' | '.join(head)} |", "|" + "---|" * len(head)]
    for r in rows:
        name = r["file"].rsplit("/", 1)[-1].replace("|", "\\|")
        size = f"{r['size_mb'] / 1000:.1f} GB" if r["size_mb"] >= 100 else f"{r['size_mb']:.1f} MB"
        note = str(r["note"]).replace("|", "\\|")
        gpu = str(r.get("on the GPU") or "—")
        cells = [f"`{name}`", r["recognised as"], r["format"], size, gpu, r["used for"] or "—", note]
        lines.append(f"| {' | '.join(cells + ([r.get('verified', '')] if checked else []))} |")
    bad = [r["file"].rsplit("/", 1)[-1] for r in rows if str(r.get("verified", "")).startswith("MISMATCH")]
    if bad:
        names = ", ".join(f"`{b}`" for b in bad)
        lines.insert(0, f"**Refused: {len(bad)} file(s) do not match their expected sha256: {names}.**\n")
    return "\n".join(lines)


def upscalers_markdown(rows: list[dict]) -> str:
    """The upscaler files found (rows from `models.upscalers.report`), as a table."""
    if not rows:
        return (
            "No upscaler models found: put them in `upscale_models/` (ComfyUI) or `ESRGAN/` (Forge, A1111) below "
            "a --models-dir folder. The Upscale tab resizes with Lanczos meanwhile."
        )
    lines = ["| name | architecture | scale | size | note |", "|---|---|---|---|---|"]
    for r in rows:
        scale = f"{r['scale']}x" if r["scale"] else "—"
        note = str(r["note"]).replace("|", "\\|") or "—"
        lines.append(f"| `{r['name']}` | {r['architecture'] or '—'} | {scale} | {r['size_mb']:.1f} MB | {note} |")
    return "\n".join(lines)
