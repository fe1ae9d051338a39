"""A script's arguments as the task layer takes them: paths read to bytes, sizes as "WIDTHxHEIGHT"."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from flux_ui.core.errors import InvalidInput

Size = tuple[int, int] | str  # (width, height) or "WIDTHxHEIGHT" (Kontext also "auto")


def read_path(value: object, field: str) -> object:
    """A path argument as the file's bytes, read here: the task layer opens only files uploaded to the
    server (a request must not name server files), while a script's paths are its own."""
    if not isinstance(value, str | Path):
        return value
    try:
        return Path(value).expanduser().read_bytes()
    except OSError as err:
        raise InvalidInput(field, f"cannot read {str(value)!r:.80} ({err.strerror or err}); check the path") from None


def resolution_text(value: Size | None) -> str | None:
    """(width, height) as "WIDTHxHEIGHT"; a string or None passes as it is (the task checks it)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Sequence) and len(value) == 2:
        return f"{value[0]}x{value[1]}"
    raise InvalidInput("resolution", f"expected (width, height) or 'WIDTHxHEIGHT', got {value!r}")
