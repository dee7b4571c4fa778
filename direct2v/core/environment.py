"""The process environment every DirecT2V process needs: offline, no telemetry, set before the
libraries that read it (huggingface_hub, vLLM, Prefect) are imported."""

from __future__ import annotations

import contextlib
import os
from collections.abc import MutableMapping
from pathlib import Path

#: Switches that keep every library off the network. ``VLLM_HOST_IP``: without it vLLM finds its
#: own address by connecting a UDP socket to 8.8.8.8 (no packet is sent, but it is an attempt).
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_DO_NOT_TRACK": "1",
    "VLLM_HOST_IP": "127.0.0.1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
}


def offline_environment(env: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Set the offline switches in ``env`` (default: this process's) where the user has not chosen
    a value; returns ``env``."""
    env = os.environ if env is None else env
    for key, value in OFFLINE.items():
        env.setdefault(key, value)
    return env


def configure_prefect_environment(state_dir: Path = Path(".state")) -> None:
    """Offline Prefect: state under ``.state/prefect`` unless the user chose a ``PREFECT_HOME``."""
    offline_environment()
    if "PREFECT_HOME" not in os.environ:
        home = (Path(state_dir) / "prefect").resolve()
        # Prefect makes only the last level of its home: from a directory without .state (a Dask worker's, a
        # new working directory) its temporary server could not open its database and retried for minutes.
        with contextlib.suppress(OSError):  # an unwritable directory: Prefect's own warning says so
            home.mkdir(parents=True, exist_ok=True)
        os.environ["PREFECT_HOME"] = str(home)
    # The temporary server migrates a fresh database before it answers; on a loaded 2-core machine
    # that takes longer than Prefect's 20 s default.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    # The UI is not needed for a batch run and its static build is not shipped offline.
    os.environ.setdefault("PREFECT_UI_ENABLED", "false")


#: How long a Prefect server may take to answer its health check.
PREFECT_HEALTH_TIMEOUT_S = 5.0


def prefect_api_problem(url: str, timeout: float = PREFECT_HEALTH_TIMEOUT_S) -> str:
    """Why the Prefect API at ``url`` does not answer ``GET <url>/health`` (empty when it does)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout):
            return ""
    except urllib.error.HTTPError as error:  # it answers: reachable, unless a gateway speaks for it
        return "" if error.code < 500 else f"HTTP {error.code} {error.reason}"
    except (urllib.error.URLError, OSError, ValueError) as error:  # refused, unknown host, timed out, bad URL
        return str(getattr(error, "reason", error))
