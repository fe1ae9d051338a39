"""Training from a folder on the server: only inside the --train-dir folders, captions from NAME.txt beside
NAME.png (else typed or written by the VQA model), and every way out of the allowed folders refused naming
the field and the fix, before any model is touched."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from flux_ui.core.errors import InvalidInput
from flux_ui.core.settings import Settings, settings_from_args
from flux_ui.models.registry import Registry
from flux_ui.tasks.training.captions import images_to_caption
from flux_ui.tasks.training.params import TrainParams, validate_training
from flux_ui.tasks.training.run import train_lora

FAST = {"preset": "80+ GB", "learning_rate": 1e-3, "rank": 4, "resolution": 64, "sample_prompts": ""}


def write_images(folder: Path, count: int, captions: dict[int, str] | None = None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        img = Image.new("RGB", (256, 256 + 16 * i), (200, 40 + 20 * i, 40))
        ImageDraw.Draw(img).ellipse((60, 60, 180, 180), fill=(30, 40, 200))
        paths.append(folder / f"img{i}.png")
        img.save(paths[-1])
        if captions and i in captions:
            (folder / f"img{i}.txt").write_text(captions[i], encoding="utf-8")
    return paths


@pytest.fixture(scope="module")
def work(tiny_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("train-folder")
    allowed = base / "datasets"
    allowed.mkdir()
    settings = Settings(
        tiny=True,
        tiny_dir=tiny_dir,
        model_root=tiny_dir,
        outputs_dir=base / "outputs",
        lora_dirs=(base / "loras",),
        train_dirs=(allowed,),
    )
    return settings, Registry(settings), allowed, base


def validate(work, **kw):
    settings, reg, _, _ = work
    p = TrainParams(**{"trigger": "ohwx", "name": "checked", "steps": 2, **FAST, **kw})
    return validate_training(p, settings, reg.loras, reg.tokenizers())


def refused(work, field: str, *fixes: str, **kw) -> str:
    with pytest.raises(InvalidInput) as err:
        validate(work, **kw)
    assert err.value.field == field, str(err.value)
    for fix in fixes:
        assert fix in str(err.value), str(err.value)
    return str(err.value)


def test_a_folder_with_caption_files_trains(work):
    settings, reg, allowed, _ = work
    captions = {i: f"a red photo with a blue disc, number {i}\n" for i in range(5)}
    captions[4] = "\ufeffa red photo,\nwith a blue disc"  # a BOM and two lines, as editors write them
    write_images(allowed / "discs", 5, captions)
    job = validate(work, folder="discs", name="from-folder")  # relative: below the first allowed folder
    assert job.folder == (allowed / "discs").resolve() and len(job.images) == 5
    assert job.captions[0] == "a red photo with a blue disc, number 0"
    assert job.captions[4] == "a red photo, with a blue disc"
    assert job.prompts[1].startswith("ohwx, a red photo")
    assert job.images[2].size == (256, 288)  # file-name order
    assert validate(work, folder=str(allowed / "discs")).folder == job.folder  # absolute works the same
    torch.set_num_threads(1)
    result = train_lora(reg, job)
    assert result.steps == 2 and result.path.is_file()
    run = (job.run_dir / "run.json").read_text()
    assert str(job.folder) in run and "number 3" in run


def test_images_without_caption_files_take_typed_captions_or_the_trigger_word(work):
    _, _, allowed, _ = work
    write_images(allowed / "plain", 4)
    typed = [f"caption {i}" for i in range(4)]
    assert validate(work, folder="plain", name="typed", captions=typed).captions == tuple(typed)
    assert validate(work, folder="plain", name="bare").prompts == ("ohwx",) * 4
    write_images(allowed / "some", 4, {0: "a disc"})
    job = validate(work, folder="some", name="some")
    assert job.captions == ("a disc", "", "", "") and job.prompts[1] == "ohwx"
    refused(work, "captions", "caption files for 1 of its 4", "leave captions empty", folder="some", captions=typed)
    refused(work, "folder", "img1.png (no caption file) is empty", folder="some", trigger="")


def test_the_vqa_model_captions_a_folder_in_file_name_order(work):
    settings, _, allowed, _ = work
    write_images(allowed / "to-caption", 4)
    images = images_to_caption(None, "to-caption", settings)
    assert [im.size for im in images] == [(256, 256 + 16 * i) for i in range(4)]
    write_images(allowed / "captioned", 4, {2: "a disc"})
    with pytest.raises(InvalidInput, match="folder: has caption files for 1 of its 4 images"):
        images_to_caption(None, "captioned", settings)
    with pytest.raises(InvalidInput, match="folder: .*outside the folders training may read"):
        images_to_caption(None, "/", settings)


def test_paths_out_of_the_allowed_folders_are_refused(work):
    _, _, allowed, base = work
    outside = base / "elsewhere"
    write_images(outside, 4)
    write_images(allowed / "inner", 4)
    refused(work, "folder", "outside the folders training may read", str(allowed), folder=str(outside))
    refused(work, "folder", "outside the folders", folder=str(base / "no-such-folder"))  # existence not told
    refused(work, "folder", "contains '..'", "without it", folder="../elsewhere")
    refused(work, "folder", "contains '..'", folder="inner/../inner")  # even where it would land inside
    (allowed / "link-out").symlink_to(outside, target_is_directory=True)
    refused(work, "folder", "outside the folders", folder="link-out")
    write_images(allowed / "mixed", 4)
    (allowed / "mixed" / "img9.png").symlink_to(outside / "img0.png")
    refused(work, "folder", "img9.png links outside", "copy the file in", folder="mixed")
    (allowed / "caption-out").mkdir()
    write_images(allowed / "caption-out", 4)
    (outside / "secret.txt").write_text("a secret")
    (allowed / "caption-out" / "img0.txt").symlink_to(outside / "secret.txt")
    refused(work, "folder", "img0.txt links outside", folder="caption-out")


def test_a_folder_that_is_not_one_or_not_enough_is_refused(work):
    _, _, allowed, _ = work
    refused(work, "folder", "does not exist", "check the path", folder="missing")
    write_images(allowed / "files", 4)
    refused(work, "folder", "is a file, not a folder", folder="files/img0.png")
    write_images(allowed / "three", 3)
    refused(work, "folder", "holds 3 images", "at least 4", folder="three")
    write_images(allowed / "small", 4)
    Image.new("RGB", (300, 120)).save(allowed / "small" / "img5.png")
    refused(work, "folder", "img5.png: is 300x120", folder="small")
    write_images(allowed / "junk", 4)
    (allowed / "junk" / "img4.jpg").write_bytes(b"not an image")
    refused(work, "folder", "img4.jpg", folder="junk")
    write_images(allowed / "long", 4, {1: "a " + "red " * 90})
    refused(work, "folder", "img1.txt is", "CLIP tokens", folder="long")
    write_images(allowed / "latin1", 4, {0: "x"})
    (allowed / "latin1" / "img0.txt").write_bytes("caf\xe9".encode("latin-1"))
    refused(work, "folder", "img0.txt is not UTF-8", folder="latin1")


def test_a_folder_and_uploads_together_or_folders_switched_off_are_refused(work, tiny_dir):
    settings, reg, allowed, _ = work
    paths = write_images(allowed / "both", 4)
    refused(work, "folder", "not both", folder="both", images=[Image.open(p) for p in paths])
    off = replace(settings, train_dirs=())
    with pytest.raises(InvalidInput) as err:
        validate_training(TrainParams(name="off", folder="both", trigger="ohwx"), off, reg.loras, reg.tokenizers())
    assert err.value.field == "folder" and "--train-dir FOLDER" in str(err.value)


def test_train_dir_flag_and_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FLUX_UI_TRAIN_DIRS", os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")]))
    s = settings_from_args(["--device", "cpu", "--train-dir", str(tmp_path / "c")])
    assert s.train_dirs == (tmp_path / "a", tmp_path / "b", tmp_path / "c")
    monkeypatch.delenv("FLUX_UI_TRAIN_DIRS")
    assert settings_from_args(["--device", "cpu"]).train_dirs == ()
