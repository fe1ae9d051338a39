"""The history of every image this server saved: one SQLite record per PNG in the outputs folder.

The PNGs stay the source of truth: each carries its parameters (media/metadata.py), so the database is an
index that can always be rebuilt from them. `record` is called in the same step as the save
(`output.deliver`); if it fails, the image is kept and `rebuild` (run at start-up) indexes it later.

Why SQLite from the standard library: one file beside the images (`<outputs>/history.sqlite`), no server,
safe for several processes and threads in WAL mode. A connection is opened per operation (cheap for a
local file) instead of shared, since Gradio calls from worker threads and sqlite3 connections are bound
to the thread that made them.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass
from datetime import date, datetime, time
from pathlib import Path

from PIL import Image

from flux_ui.media.metadata import ImageMeta, format_parameters, parse_parameters, prompt_without_tags, read_parameters

log = logging.getLogger(__name__)
DB_NAME = "history.sqlite"
PAGE_SIZE = 48  # records per page, by default
MAX_PAGE_SIZE = 500  # the most records one query returns
TIMEOUT_S = 10.0  # how long a writer waits for another's lock before giving up (sqlite3.OperationalError)
UNKNOWN_TASK = "unknown"  # a PNG whose parameters are missing or unreadable

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,      -- relative to the outputs folder, with "/" separators
    created REAL NOT NULL,          -- seconds since the epoch (UTC)
    task TEXT NOT NULL,             -- a task name of tasks.table.TASKS, or "unknown"
    model TEXT NOT NULL,            -- the variant name ("dev", "kontext-dev"), or "" if unknown
    prompt TEXT NOT NULL,
    seed INTEGER,
    width INTEGER,
    height INTEGER,
    steps INTEGER,
    guidance REAL,
    loras TEXT NOT NULL,            -- JSON list of [name, weight]
    lora_names TEXT NOT NULL,       -- ",name1,name2," so that one name matches LIKE '%,name,%'
    parameters TEXT NOT NULL,       -- the full parameters text embedded in the PNG
    user TEXT                       -- the login that made it; NULL without a login, or when rebuilt
);
CREATE INDEX IF NOT EXISTS images_created ON images (created);
CREATE INDEX IF NOT EXISTS images_user ON images (user, created);
"""


@dataclass(frozen=True)
class Record:
    """One saved image as the History tab and the `history` API show it."""

    id: int
    path: str  # relative to the outputs folder
    created: float  # seconds since the epoch
    task: str
    model: str
    prompt: str
    seed: int | None
    width: int | None
    height: int | None
    steps: int | None
    guidance: float | None
    loras: list[tuple[str, float]]
    parameters: str
    user: str | None

    def as_dict(self) -> dict:
        """JSON-able, with the creation time also as ISO text (local time). The path is under "file": a
        "path" key would make Gradio's client take the record for a file to download."""
        out = asdict(self)
        out["file"] = out.pop("path")
        out["loras"] = [list(pair) for pair in self.loras]
        out["created_iso"] = datetime.fromtimestamp(self.created).isoformat(timespec="seconds")
        return out


@dataclass(frozen=True)
class Query:
    """What to list; empty fields do not filter. Dates are inclusive, local time."""

    text: str = ""  # words the prompt contains (case-insensitive, each word must occur)
    task: str = ""
    model: str = ""
    lora: str = ""  # a LoRA name
    since: date | None = None
    until: date | None = None
    user: str | None = None  # only this user's images; None: every user's (see `visible_to`)
    page: int = 1  # 1-based
    page_size: int = PAGE_SIZE


def infer_task(fields: dict[str, str]) -> str:
    """The task that made an image, from the keys of its parameters: each task writes keys of its own
    (see the `extra` of each module in flux_ui/tasks/), so older PNGs without a record are told apart too."""
    variant = fields.get("Variant", "")
    if "Control" in fields or variant in ("canny-dev", "depth-dev"):
        return "control"
    if variant == "fill-dev" or "Mask hash" in fields or "Outpaint" in fields:
        return "fill"
    if variant == "kontext-dev" or "Context size" in fields:
        return "kontext"
    if variant == "redux-dev" or "Redux strengths" in fields:
        return "redux"
    if "References" in fields:
        return "flux2_edit"
    if "Repainted" in fields:
        return "flux2_inpaint"
    if "Denoising strength" in fields:
        return "image_to_image"
    return "text_to_image" if "Seed" in fields else UNKNOWN_TASK


def _number(text: str | None, kind: type) -> int | float | None:
    try:
        return kind(text) if text not in (None, "") else None
    except ValueError:
        return None


def _row(path: str, created: float, parameters: str, user: str | None, task: str | None) -> dict:
    """A record's columns from the parameters text; tolerant: a bad value becomes NULL, never an error."""
    try:
        fields = parse_parameters(parameters) if parameters else {}
    except ValueError:
        fields = {}
    # An upscale that carries its first pass records that in Size (as A1111 does) and its own size in Hires resize.
    width, _, height = (fields.get("Hires resize") or fields.get("Size", "")).partition("x")
    loras = []
    for item in filter(None, (s.strip() for s in fields.get("LoRAs", "").split(","))):
        name, _, weight = item.rpartition(":")
        loras.append((name or weight, _number(weight, float) if name else 1.0))
    return {
        "path": path,
        "created": created,
        "task": task or infer_task(fields),
        "model": fields.get("Variant", ""),
        # Our PNGs append the LoRAs as prompt tags for other tools; the record keeps the prompt as written.
        "prompt": prompt_without_tags(fields.get("Prompt", ""), [n for n, _ in loras]),
        "seed": _number(fields.get("Seed"), int),
        "width": _number(width, int),
        "height": _number(height, int),
        "steps": _number(fields.get("Steps"), int),
        "guidance": _number(fields.get("Distilled CFG Scale"), float),
        "loras": json.dumps(loras),
        "lora_names": "," + ",".join(n for n, _ in loras) + ("," if loras else ""),
        "parameters": parameters,
        "user": user,
    }


def _record(row: sqlite3.Row) -> Record:
    values = dict(row)
    values.pop("lora_names")
    values["loras"] = [tuple(pair) for pair in json.loads(values["loras"])]
    return Record(**values)


def _like(text: str) -> str:
    """`text` as a LIKE pattern that matches it anywhere, with LIKE's wildcards taken literally."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class History:
    """The history store of one outputs folder. Cheap to make; every method opens its own connection."""

    _schema_lock = threading.Lock()

    def __init__(self, outputs_dir: Path):
        self.root = Path(outputs_dir)
        self.db_path = self.root / DB_NAME

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection in a transaction (committed on success, rolled back on error), schema ensured."""
        self.root.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(self.db_path, timeout=TIMEOUT_S)) as conn:
            conn.row_factory = sqlite3.Row
            with self._schema_lock:  # two threads creating the schema at once could see "database is locked"
                conn.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
                conn.executescript(_SCHEMA)
            with conn:
                yield conn

    def relative(self, path: Path) -> str:
        """`path` relative to the outputs folder ("2026-12-01/00001-42.png"); ValueError if it is outside."""
        root = self.root.resolve()
        resolved = Path(path).resolve()
        if not resolved.is_relative_to(root):
            raise ValueError(f"path: {path} is not inside the outputs folder {self.root}")
        return resolved.relative_to(root).as_posix()

    def record(self, path: Path, meta: ImageMeta, user: str | None = None, task: str | None = None) -> int:
        """Index one saved PNG; returns its record id. Raises sqlite3.Error or OSError if it cannot be written
        (the caller keeps the image; `rebuild` indexes it later)."""
        row = _row(self.relative(path), datetime.now().timestamp(), format_parameters(meta), user, task)
        columns = ", ".join(row)
        with self._connect() as conn:
            cur = conn.execute(
                f"INSERT OR REPLACE INTO images ({columns}) VALUES ({', '.join('?' * len(row))})",
                tuple(row.values()),
            )
            return int(cur.lastrowid)

    def rebuild(self) -> tuple[int, int]:
        """Index the PNGs of the outputs folder that have no record (saved by an older version, or while the
        database was lost or could not be written) from their own parameters, and drop records whose file is
        gone. Returns (added, dropped). Cheap when nothing is missing: one listing and one query."""
        on_disk = {p.relative_to(self.root).as_posix() for p in self.root.rglob("*.png") if p.is_file()}
        with self._connect() as conn:
            known = {r[0] for r in conn.execute("SELECT path FROM images")}
            gone = known - on_disk
            conn.executemany("DELETE FROM images WHERE path = ?", [(p,) for p in gone])
        added = 0
        for rel in sorted(on_disk - known):
            path = self.root / rel
            try:
                with Image.open(path) as img:
                    parameters = read_parameters(img) or ""
                created = path.stat().st_mtime
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
                log.warning("history: %s is not a readable PNG (%s); not indexed", rel, err)
                continue
            row = _row(rel, created, parameters, None, None)
            with self._connect() as conn:
                conn.execute(
                    f"INSERT OR IGNORE INTO images ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                    tuple(row.values()),
                )
            added += 1
        if added or gone:
            log.info("history: indexed %d image(s) from their PNGs, dropped %d missing", added, len(gone))
        return added, len(gone)

    def _where(self, q: Query) -> tuple[str, list]:
        clauses, args = [], []
        for word in q.text.split():
            clauses.append("prompt LIKE ? ESCAPE '\\'")
            args.append(_like(word))
        for column, value in (("task", q.task), ("model", q.model)):
            if value:
                clauses.append(f"{column} = ?")
                args.append(value)
        if q.lora:
            clauses.append("lora_names LIKE ? ESCAPE '\\'")
            args.append(_like(f",{q.lora},"))
        if q.since is not None:
            clauses.append("created >= ?")
            args.append(datetime.combine(q.since, time.min).timestamp())
        if q.until is not None:
            clauses.append("created <= ?")
            args.append(datetime.combine(q.until, time.max).timestamp())
        if q.user is not None:
            clauses.append("user = ?")
            args.append(q.user)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args

    def query(self, q: Query) -> tuple[list[Record], int]:
        """One page of matching records, newest first, and how many match in all."""
        if q.page < 1 or not 1 <= q.page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page: expected page >= 1 and 1..{MAX_PAGE_SIZE} per page, got {q.page}, {q.page_size}")
        where, args = self._where(q)
        with self._connect() as conn:
            total = conn.execute(f"SELECT COUNT(*) FROM images{where}", args).fetchone()[0]
            rows = conn.execute(
                f"SELECT * FROM images{where} ORDER BY created DESC, id DESC LIMIT ? OFFSET ?",
                [*args, q.page_size, (q.page - 1) * q.page_size],
            ).fetchall()
        return [_record(r) for r in rows], int(total)

    def get(self, record_id: int) -> Record | None:
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM images WHERE id = ?", (record_id,)).fetchone()
        return _record(row) if row else None

    def choices(self, user: str | None = None) -> dict[str, list[str]]:
        """The tasks, models and LoRA names present (in `user`'s images if given), for the filter menus."""
        where, args = ("WHERE user = ?", [user]) if user is not None else ("", [])
        with self._connect() as conn:
            out = {
                column: [r[0] for r in conn.execute(f"SELECT DISTINCT {column} FROM images {where} ORDER BY 1", args)]
                for column in ("task", "model")
            }
            names = set()
            for (loras,) in conn.execute(f"SELECT loras FROM images {where}", args):
                names.update(name for name, _ in json.loads(loras))
        out["model"] = [m for m in out["model"] if m]
        out["lora"] = sorted(names)
        return out

    def path_of(self, record: Record) -> Path:
        """The PNG of `record`; ValueError if its stored path would lead outside the outputs folder."""
        path = self.root / record.path
        self.relative(path)  # a record is data: a "../" in it must not reach beyond the folder
        return path

    def delete(self, record_id: int) -> Record | None:
        """Delete the PNG and its record; returns the record, or None if there was none. Only files inside
        the outputs folder are removed (ValueError otherwise, and nothing is deleted)."""
        record = self.get(record_id)
        if record is None:
            return None
        path = self.path_of(record)
        path.unlink(missing_ok=True)  # already gone: the record goes too
        with self._connect() as conn:
            conn.execute("DELETE FROM images WHERE id = ?", (record_id,))
        return record
