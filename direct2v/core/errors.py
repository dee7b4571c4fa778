"""The one error base of DirecT2V.

Every error we raise for something a user can fix (a bad setting, an unreadable prompt or plan
file, a run directory that is not one) or a fault we can explain (a video that would not render)
is a :class:`Direct2VError`: the command line prints it as one line, never a traceback. Each stage
has its own subclass beside its code (``ConfigError``, ``PromptFileError``, ``PlanFileError``,
``RunDirError``, ``ManifestError``, ``RenderError``, ``EncodeError``, ``EvalError``,
``ExportError``, ``CheckpointError``); each keeps the built-in base it had (``ValueError`` for bad
input, ``RuntimeError`` for a failed step), so callers that catch those still do. A full disk is
``files.DiskFullError``, beside the write helpers: it stops a job, resumable (exit code 3).
"""

from __future__ import annotations


class Direct2VError(Exception):
    """A mistake the user can fix, or a fault we explain, in our own words (one line)."""
