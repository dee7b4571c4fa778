"""Environment for Prefect, set before ``prefect`` is imported.

Offline by default: analytics off, no update checks, state kept in the repository's
``.state/prefect`` unless the user already chose a ``PREFECT_HOME``.
"""

from __future__ import annotations

import os
from pathlib import Path


def configure_prefect_environment(state_dir: Path = Path(".state")) -> None:
    os.environ.setdefault("PREFECT_HOME", str((Path(state_dir) / "prefect").resolve()))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # The temporary server migrates a fresh database before it answers; on a loaded 2-core machine
    # that takes longer than Prefect's 20 s default.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    # The UI is not needed for a batch run and its static build is not shipped offline.
    os.environ.setdefault("PREFECT_UI_ENABLED", "false")
