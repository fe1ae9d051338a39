"""New Gradio sessions without the per-session copy of every component's configuration.

Gradio 6.31 builds, for each new session, the configuration of every component of the app
(`SessionState.config_values`, kept for deep links, which this app does not offer). With the app's
~560 components that is about 90 ms on the server's event loop per new session (measured on a 2-core
CPU), and a script that sends no session hash opens a new session per call: a flood of such calls held
`/health` over a second. Here the entries are built when something reads them (a component the session
changed, or the whole set for a deep link), which is what Gradio does for components added later anyway.
Gradio has no setting for this; the patch is checked against the pinned version and skipped otherwise.
"""

from __future__ import annotations

import logging
import os
from copy import copy

log = logging.getLogger(__name__)
PATCHED_FOR = "6.31.0"  # the Gradio version whose SessionState this was written against


class LazyConfigValues(dict):
    """`config_values` of one session: an entry is built the first time it is read."""

    def __init__(self, blocks_config, keys):
        super().__init__()
        self._blocks_config = blocks_config
        self._pending = set(keys)

    def _build(self, key) -> dict:
        self._pending.discard(key)
        value = self._blocks_config.config_for_block(key, [], self._blocks_config.blocks[key])
        super().__setitem__(key, value)
        return value

    def __missing__(self, key):
        if key in self._pending:
            return self._build(key)
        raise KeyError(key)

    def __contains__(self, key) -> bool:
        return key in self._pending or super().__contains__(key)

    def __setitem__(self, key, value) -> None:
        self._pending.discard(key)
        super().__setitem__(key, value)

    def items(self):
        for key in list(self._pending):
            self._build(key)
        return super().items()


def lazy_session_configs() -> None:
    """Make Gradio's new sessions build component configurations on demand (see the module docstring)."""
    import gradio
    from gradio import state_holder

    if gradio.__version__ != PATCHED_FOR:
        log.info("gradio %s: new sessions build their configuration as gradio does", gradio.__version__)
        return
    if getattr(state_holder.SessionState, "_lazy_configs", False):
        return

    def __init__(self, blocks) -> None:  # Gradio 6.31's SessionState.__init__, with config_values lazy
        self.blocks_config = copy(blocks.default_config)
        keys = [k for k in self.blocks_config.blocks if k in blocks.blocks]
        self.config_values = LazyConfigValues(self.blocks_config, keys)
        self.state_data = {}
        self._state_ttl = {}
        self.is_closed = False
        self.STATE_TTL_WHEN_CLOSED = 1 if os.getenv("GRADIO_IS_E2E_TEST", None) else 3600

    state_holder.SessionState.__init__ = __init__
    state_holder.SessionState._lazy_configs = True
