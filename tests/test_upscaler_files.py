"""The Models tab lists the upscaler files found (name, architecture, scale, size, and why one cannot be
used), and its scan refreshes the Upscale tab's menu: checked on the built app's own events (no browser)."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch

from flux_ui.models import upscalers
from flux_ui.models.registry import Registry
from flux_ui.tiny.upscalers import TINY_UPSCALER, write_tiny_upscaler
from flux_ui.ui.app import build_ui
from flux_ui.ui.residency import upscalers_markdown


@pytest.fixture(scope="module")
def esrgan(tiny_dir):
    return write_tiny_upscaler(tiny_dir)


@pytest.fixture
def forge(tmp_path):
    """A Forge-style models folder with an ESRGAN/ folder, empty for now."""
    folder = tmp_path / "forge"
    (folder / "models" / "ESRGAN").mkdir(parents=True)
    return folder


def test_report_names_architecture_scale_size_and_problems(settings, esrgan, forge):
    shutil.copy(esrgan, forge / "models" / "ESRGAN" / "2x-copy.pth")
    shutil.copy(esrgan, forge / "models" / "ESRGAN" / f"{TINY_UPSCALER}.pth")  # the same name as --model-root's
    torch.save({"conv.weight": torch.zeros(3, 3, 1, 1)}, forge / "models" / "ESRGAN" / "broken.pth")
    rows = {(r["name"], r["file"]): r for r in upscalers.report(dataclasses.replace(settings, models_dirs=(forge,)))}
    assert len(rows) == 4
    copy = rows[("2x-copy", str(forge / "models" / "ESRGAN" / "2x-copy.pth"))]
    assert (copy["architecture"], copy["scale"], copy["note"]) == ("ESRGAN", 4, "")
    assert copy["size_mb"] == round(esrgan.stat().st_size / 1e6, 1)
    broken = rows[("broken", str(forge / "models" / "ESRGAN" / "broken.pth"))]
    assert broken["architecture"] == "" and "not an upscaler model spandrel knows" in broken["note"]
    shadowed = rows[(TINY_UPSCALER, str(esrgan))]  # found after the --models-dir one of the same name
    assert shadowed["note"] == f"not used: {forge / 'models' / 'ESRGAN' / TINY_UPSCALER}.pth has the same name"
    table = upscalers_markdown(list(rows.values()))
    assert "| `2x-copy` | ESRGAN | 4x |" in table and "not an upscaler model" in table
    assert "No upscaler models found" in upscalers_markdown([])


def dependencies(demo) -> tuple[dict, dict]:
    config = demo.config
    ids = {c["id"]: c["props"].get("elem_id") for c in config["components"]}
    return {d["id"]: d for d in config["dependencies"]}, ids


def test_a_models_tab_scan_refreshes_the_upscale_menu(settings, esrgan, forge):
    demo = build_ui(Registry(dataclasses.replace(settings, models_dirs=(forge,))))
    deps, ids = dependencies(demo)
    menu = next(i for i, e in ids.items() if e == "upscale-upscaler")
    (shown,) = [c for c in demo.config["components"] if c["id"] == menu]
    assert [c[1] for c in shown["props"]["choices"]] == ["auto", "lanczos", TINY_UPSCALER]

    shutil.copy(esrgan, forge / "models" / "ESRGAN" / "4x-new.pth")  # a file added while the app runs
    listing = next(d for d in deps.values() if d.get("api_name") == "upscaler_files")
    rows = demo.fns[listing["id"]].fn()
    assert [r["name"] for r in rows] == ["4x-new", TINY_UPSCALER]
    # Rescan -> upscaler_files -> its table -> the menu, in that order.
    table = next(d for d in deps.values() if d.get("trigger_after") == listing["id"])
    (refresh,) = [d for d in deps.values() if d.get("trigger_after") == table["id"] and d["outputs"] == [menu]]
    update = demo.fns[refresh["id"]].fn(TINY_UPSCALER)
    assert update["choices"] == ["auto", "lanczos", "4x-new", TINY_UPSCALER] and update["value"] == TINY_UPSCALER
    assert update["info"] == "2 model(s) found"
    (forge / "models" / "ESRGAN" / "4x-new.pth").unlink()
    assert demo.fns[refresh["id"]].fn("4x-new")["value"] == "auto"  # a choice whose file is gone
    # Both scans of the Models tab end in the menu's refresh: Rescan, and opening the tab.
    roots = []
    for dep in (d for d in deps.values() if d["outputs"] == [menu] and d["inputs"] == [menu]):
        while dep.get("trigger_after") is not None:
            dep = deps[dep["trigger_after"]]
        roots.append(sorted((ids.get(target) or "tab", event) for target, event in dep["targets"]))
    assert sorted(roots) == [[("model-files-rescan", "click")], [("tab", "select")]]
