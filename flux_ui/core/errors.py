"""The errors every layer raises and every surface turns into its own answer (gr.Error, a REST status).

Each can be pickled with its fields, so that a job run in another process (a replica, flux_ui/serving/
replicas.py) raises the same error, with the same field, in the process that serves its caller.
"""

from __future__ import annotations


class InvalidInput(ValueError):
    """Bad user input; `field` is the parameter's API name."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")

    def __reduce__(self):
        return type(self), (self.field, self.message)


class ModelUnavailableError(RuntimeError):
    """A model could not be loaded; the message says which one and how to fix it."""

    def __init__(self, what: str, source: str, reason: str, fix: str):
        self.what, self.source, self.reason, self.fix = what, source, reason, fix
        super().__init__(f"{what} could not be loaded from {source}: {reason}. {fix}")

    def __reduce__(self):
        return type(self), (self.what, self.source, self.reason, self.fix)


class Cancelled(Exception):
    """Raised inside a pipeline's step callback when the user cancels; the job stops after that step."""


class WorkerLost(RuntimeError):
    """The process running a job (a replica, with --replicas) died before the job finished, and the one
    retry died too, or could not be made: the job gave no result."""
