"""The errors every layer raises and every surface turns into its own answer (gr.Error, a REST status)."""

from __future__ import annotations


class InvalidInput(ValueError):
    """Bad user input; `field` is the parameter's API name."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class ModelUnavailableError(RuntimeError):
    """A model could not be loaded; the message says which one and how to fix it."""

    def __init__(self, what: str, source: str, reason: str, fix: str):
        self.what, self.source, self.reason, self.fix = what, source, reason, fix
        super().__init__(f"{what} could not be loaded from {source}: {reason}. {fix}")


class Cancelled(Exception):
    """Raised inside a pipeline's step callback when the user cancels; the job stops after that step."""
