"""History: the SQLite store of saved images (write, search, filters, delete, rebuild from the PNGs), the
`history` API on a running server, and the History tab in a browser."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from datetime import date, timedelta

import pytest
from conftest import open_tab
from PIL import Image

from flux_ui.media.metadata import ImageMeta
from flux_ui.models.registry import Registry
from flux_ui.output.deliver import deliver
from flux_ui.output.files import save_image
from flux_ui.output.history import DB_NAME, History, Query, infer_task
from flux_ui.tasks import GeneratedImage, TaskResult


def meta(prompt: str, seed: int = 1, variant: str = "dev", **kw) -> ImageMeta:
    return ImageMeta(prompt=prompt, variant=variant, seed=seed, steps=2, guidance=3.5, width=16, height=16, **kw)


def save(outputs, m: ImageMeta, history: History | None = None, **kw):
    path = save_image(Image.new("RGB", (16, 16), (m.seed % 255, 0, 0)), m, outputs)
    if history is not None:
        history.record(path, m, **kw)
    return path


@pytest.fixture
def store(tmp_path) -> History:
    return History(tmp_path / "outputs")


def test_write_then_list_newest_first_with_every_field(store):
    save(store.root, meta("a red fox", 1), store, user="ann", task="text_to_image")
    save(store.root, meta("a blue bird", 2, loras=(("kohya-fox", 0.8),)), store)
    records, total = store.query(Query())
    assert total == 2 and [r.prompt for r in records] == ["a blue bird", "a red fox"]
    fox = records[1]
    assert (fox.task, fox.model, fox.seed, fox.width, fox.height, fox.steps, fox.guidance, fox.user) == (
        "text_to_image",
        "dev",
        1,
        16,
        16,
        2,
        3.5,
        "ann",
    )
    assert fox.path.endswith("-1.png") and "/" in fox.path and "Seed: 1" in fox.parameters
    assert records[0].loras == [("kohya-fox", 0.8)] and records[0].user is None
    assert (store.root / DB_NAME).is_file()


def test_search_and_filters(store):
    save(store.root, meta("a red fox in snow", 1), store)
    save(store.root, meta("a red 100% fox_", 2, variant="schnell"), store)
    save(store.root, meta("a cat", 3, loras=(("neon", 1.0),)), store)
    save(store.root, meta("an edit", 4, variant="kontext-dev", extra={"Context size": "16x16"}), store)

    def prompts(**kw) -> set[str]:
        return {r.prompt for r in store.query(Query(**kw))[0]}

    assert prompts(text="RED fox") == {"a red fox in snow", "a red 100% fox_"}
    assert prompts(text="100%") == {"a red 100% fox_"} and prompts(text="x_") == {"a red 100% fox_"}
    assert prompts(text="%") == {"a red 100% fox_"}  # LIKE's wildcards are taken literally
    assert prompts(model="schnell") == {"a red 100% fox_"}
    assert prompts(task="kontext") == {"an edit"}
    assert prompts(lora="neon") == {"a cat"} and prompts(lora="neo") == set()
    today = date.today()
    assert len(prompts(since=today, until=today)) == 4
    assert prompts(since=today + timedelta(days=1)) == set() and prompts(until=today - timedelta(days=1)) == set()
    assert store.choices()["model"] == ["dev", "kontext-dev", "schnell"] and store.choices()["lora"] == ["neon"]
    records, total = store.query(Query(page=2, page_size=3))
    assert total == 4 and len(records) == 1


def test_per_user_filter(store):
    save(store.root, meta("mine", 1), store, user="ann")
    save(store.root, meta("theirs", 2), store, user="bob")
    assert [r.prompt for r in store.query(Query(user="ann"))[0]] == ["mine"]
    assert store.choices(user="bob")["task"] == ["text_to_image"]


def test_delete_removes_file_and_record_and_refuses_paths_outside(store, tmp_path):
    path = save(store.root, meta("gone soon", 1), store)
    keep = save(store.root, meta("kept", 2), store)
    doomed = store.query(Query(text="gone"))[0][0]
    assert store.delete(doomed.id).prompt == "gone soon"
    assert not path.exists() and keep.exists()
    assert store.get(doomed.id) is None and store.delete(doomed.id) is None
    # A record whose path leads outside (a tampered database) deletes nothing.
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"x")
    with store._connect() as conn:
        conn.execute("UPDATE images SET path = '../secret.png'")
    record = store.query(Query())[0][0]
    with pytest.raises(ValueError, match="not inside the outputs folder"):
        store.delete(record.id)
    assert outside.exists()


def test_rebuild_from_the_pngs_after_the_database_is_deleted(store):
    save(store.root, meta("first", 1, loras=(("neon", 0.5),)), store, task="text_to_image")
    save(store.root, meta("an edit", 2, variant="kontext-dev", extra={"Context size": "16x16"}), store)
    (store.root / DB_NAME).unlink()
    for suffix in ("-wal", "-shm"):
        (store.root / (DB_NAME + suffix)).unlink(missing_ok=True)
    assert store.query(Query())[1] == 0
    assert store.rebuild() == (2, 0)
    records = {r.prompt: r for r in store.query(Query())[0]}
    assert records["first"].task == "text_to_image" and records["first"].loras == [("neon", 0.5)]
    assert records["an edit"].task == "kontext" and records["an edit"].model == "kontext-dev"
    assert store.rebuild() == (0, 0)  # nothing missing: nothing to do


def test_rebuild_indexes_older_pngs_and_drops_records_of_missing_files(store):
    older = save(store.root, meta("from an older version", 5))  # a PNG that was never recorded
    gone = save(store.root, meta("deleted by hand", 6), store)
    gone.unlink()
    Image.new("RGB", (8, 8)).save(store.root / "plain.png")  # no parameters at all
    assert store.rebuild() == (2, 1)
    records = {r.path: r for r in store.query(Query())[0]}
    assert records[store.relative(older)].prompt == "from an older version"
    assert records["plain.png"].task == "unknown" and records["plain.png"].seed is None


def test_a_record_survives_a_restart(store):
    save(store.root, meta("lasting", 9), store, user="ann")
    again = History(store.root)  # as a new process would open it
    (record,), _ = again.query(Query(text="lasting"))
    assert record.user == "ann" and again.get(record.id) == record


def test_infer_task_from_each_tasks_keys():
    assert infer_task({"Seed": "1", "Variant": "dev"}) == "text_to_image"
    assert infer_task({"Seed": "1", "Denoising strength": "0.6"}) == "image_to_image"
    assert infer_task({"Variant": "fill-dev"}) == "fill"
    assert infer_task({"Control": "canny"}) == "control"
    assert infer_task({"Variant": "redux-dev"}) == "redux"
    assert infer_task({}) == "unknown"


def result_of(*metas: ImageMeta) -> TaskResult:
    return TaskResult([GeneratedImage(Image.new("RGB", (16, 16)), m) for m in metas], seed=metas[0].seed)


def test_deliver_records_each_saved_image_with_user_and_task(settings):
    registry = Registry(settings)
    delivered, warnings = deliver(registry, result_of(meta("x", 1), meta("x", 2)), user="ann", task="text_to_image")
    assert not warnings and all(d.saved for d in delivered)
    records, total = History(settings.outputs_dir).query(Query(user="ann"))
    assert total == 2 and {r.seed for r in records} == {1, 2}


def test_no_history_records_nothing(settings):
    registry = Registry(replace(settings, history=False))
    delivered, _ = deliver(registry, result_of(meta("x", 1)))
    assert delivered[0].saved.exists() and not (settings.outputs_dir / DB_NAME).exists()


def test_a_failed_record_write_keeps_the_png(settings, caplog):
    (settings.outputs_dir / DB_NAME).mkdir(parents=True)  # a folder where the database should be
    registry = Registry(settings)
    with caplog.at_level(logging.WARNING):
        delivered, warnings = deliver(registry, result_of(meta("kept anyway", 3)))
    assert delivered[0].saved is not None and delivered[0].saved.exists()
    assert not warnings  # the image was saved: nothing for the user to act on
    assert "could not record" in caplog.text
    (settings.outputs_dir / DB_NAME).rmdir()  # the database is back: the next start indexes the PNG
    store = History(settings.outputs_dir)
    assert store.rebuild() == (1, 0) and store.query(Query(text="kept"))[1] == 1


def test_concurrent_writers_all_land(store):
    import threading

    paths = [save(store.root, meta(f"p{i}", i)) for i in range(8)]
    errors = []

    def write(i: int) -> None:
        try:
            store.record(paths[i], meta(f"p{i}", i))
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and store.query(Query())[1] == 8
    assert time.time() - store.query(Query())[0][0].created < 60


# --- end to end: `python app.py --tiny` through gradio_client -------------------------------------------------


def generate(client, prompt: str, seed: int) -> None:
    client.predict(prompt=prompt, seed=seed, width=64, height=64, steps=1, api_name="/text_to_image")


def test_history_api_on_a_running_server(tiny_dir, tmp_path):
    from conftest import running_app
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    outputs = tmp_path / "outputs"
    older = save(outputs, meta("made by an older version", 77))  # no database yet: indexed at start-up
    with running_app(tiny_dir, tmp_path) as (url, _):
        client = Client(url, verbose=False)
        listed = client.predict(api_name="/history")
        assert [r["prompt"] for r in listed] == ["made by an older version"]
        generate(client, "a red fox in the snow", 11)
        generate(client, "a blue bird on a wire", 12)
        listed = client.predict(api_name="/history")
        assert [r["seed"] for r in listed] == [12, 11, 77]
        assert listed[0]["task"] == "text_to_image" and listed[0]["user"] is None
        assert (outputs / listed[0]["file"]).is_file()
        found = client.predict(query="FOX snow", api_name="/history")
        assert [r["seed"] for r in found] == [11]
        with pytest.raises(AppError, match="since: '12/01' is not a date"):
            client.predict(since="12/01", api_name="/history")
        deleted = client.predict(record_id=found[0]["id"], api_name="/history_delete")
        assert deleted["seed"] == 11 and not (outputs / deleted["file"]).exists()
        assert [r["seed"] for r in client.predict(api_name="/history")] == [12, 77]
        with pytest.raises(AppError, match="record_id: no image"):
            client.predict(record_id=found[0]["id"], api_name="/history_delete")
    assert older.exists()

    # A restart with a login: the records lasted, and the user sees only the images made under their login.
    with running_app(tiny_dir, tmp_path, "--auth", "ann:secret-pw") as (url, _):
        client = Client(url, verbose=False, auth=("ann", "secret-pw"))
        assert client.predict(api_name="/history") == []
        generate(client, "ann's own", 21)
        (mine,) = client.predict(api_name="/history")
        assert (mine["seed"], mine["user"]) == (21, "ann")
        with pytest.raises(AppError, match="no image"):  # not hers: refused as if it did not exist
            client.predict(record_id=1, api_name="/history_delete")
    with running_app(tiny_dir, tmp_path, "--auth", "ann:secret-pw", "--history-shared") as (url, _):
        client = Client(url, verbose=False, auth=("ann", "secret-pw"))
        assert [r["seed"] for r in client.predict(api_name="/history")] == [21, 12, 77]


# --- in a browser: the History tab shows what was just made -----------------------------------------------


def test_history_tab_shows_the_image_just_generated(page, app_server):
    from conftest import set_number

    # A word no other test's prompt has: the server (and its outputs) is shared by the session's tests.
    page.locator("#prompt textarea").fill("a lighthouse on a basalt cliff")
    set_number(page, "width", 64)
    set_number(page, "height", 64)
    set_number(page, "steps", 1)
    page.locator("#seed input").fill("8642")
    page.locator("#generate").click()
    page.wait_for_function("() => document.querySelector('#info').innerText.includes('Seed 8642')", timeout=120_000)

    open_tab(page, "History")
    thumb = page.locator("#history-gallery img").first
    thumb.wait_for(state="visible", timeout=60_000)
    assert "basalt" in page.locator("#history-gallery").inner_text()
    assert "/gradio_api/file=" in thumb.get_attribute("src") and "result-" in thumb.get_attribute("src")
    # Search narrows the list; selecting an image shows its parameters and file name.
    page.locator("#history-search textarea").fill("basalt")
    page.locator("#history-search textarea").press("Enter")
    page.wait_for_function(
        "() => document.querySelector('#history-count').innerText.startsWith('1 image')", timeout=30_000
    )
    thumb.click()
    page.wait_for_function(
        "() => document.querySelector('#history-parameters textarea').value.includes('Seed: 8642')", timeout=30_000
    )
    assert "-8642.png" in page.locator("#history-details").inner_text()
    open_tab(page, "Text to image")


def test_history_is_on_by_default_only_on_a_private_server(monkeypatch):
    """On a share link, a public host without a login, or a Space, every visitor would see everyone's
    images: History is off unless asked for."""
    from flux_ui.core.settings import settings_from_args

    monkeypatch.delenv("FLUX_UI_HISTORY", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)

    def history(*argv: str) -> bool:
        return settings_from_args(["--tiny", *argv]).history

    assert history() and history("--host", "0.0.0.0", "--auth", "me:secret")
    assert not history("--share") and not history("--host", "0.0.0.0", "--no-auth")
    assert history("--share", "--history") and not history("--no-history")
    monkeypatch.setenv("SPACE_ID", "someone/flux-ui")
    assert not history()
