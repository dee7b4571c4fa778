"""The Dask cluster a render stage runs on: which workers may render, who rendered, who was lost.

A running cluster (``--dask-address``) is made of processes this job did not start, on hosts it
cannot see. Before the first render every worker is asked, in one round trip, which checkout it
runs and whether it reaches the Prefect API the render tasks report to; a worker that differs is
refused with one line (videos from two checkouts would carry hashes of two rules). The render task
names the worker that made each video (the manifest's ``worker``), and at the end the workers that
left the cluster are the summary's ``workers_lost``: their unfinished renders were sent elsewhere by
the scheduler (the render task is idempotent).

Needs ``distributed`` only where a Dask cluster is used; never Prefect.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any

import direct2v
from direct2v.core.environment import prefect_api_problem
from direct2v.core.errors import Direct2VError
from direct2v.job.videos import VIDEO_HASH_VERSION

#: How long the render stage waits for a running scheduler to have a worker (a cluster still
#: starting up) before it stops with one line instead of waiting for ever.
WORKER_WAIT_S = 120.0


class ClusterError(Direct2VError, RuntimeError):
    """The Dask cluster cannot render this job: no worker, a refused worker, or a lost scheduler."""


def checkout() -> dict[str, Any]:
    """What must match between the process that runs the job and every worker: the package version
    and the video-hash rule (``videos.VIDEO_HASH_VERSION``)."""
    return {"direct2v": direct2v.__version__, "video_hash_version": VIDEO_HASH_VERSION}


def worker_name() -> str:
    """This process as a renderer: its Dask worker address, or ``host:pid`` outside Dask."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):  # not in a Dask worker
        return f"{socket.gethostname()}:{os.getpid()}"


def worker_report(api_url: str | None) -> dict[str, Any]:
    """Run on each worker (``Client.run``): its checkout, and why it cannot reach the Prefect API
    (empty when it can, or when there is no API to reach)."""
    return {"checkout": checkout(), "api_problem": prefect_api_problem(api_url) if api_url else ""}


def refusals(reports: dict[str, Any], api_url: str | None, expected: dict[str, Any] | None = None) -> list[str]:
    """One reason per worker that must not render (``reports``: address -> ``worker_report`` or the
    error its call raised, e.g. an older checkout without the function); ``expected``: the job's
    checkout (default: this process's)."""
    ours = expected or checkout()
    reasons = []
    for address, report in sorted(reports.items()):
        if not isinstance(report, dict) or "checkout" not in report:
            reasons.append(f"{address} could not say which checkout it runs ({report!r}): a different direct2v")
        elif report["checkout"] != ours:
            reasons.append(f"{address} runs {_described(report['checkout'])}; this job needs {_described(ours)}")
        elif report["api_problem"]:
            reasons.append(f"{address} cannot reach the Prefect API at {api_url} ({report['api_problem']}), where "
                           "render tasks report: run a Prefect server the workers reach and set PREFECT_API_URL "
                           "to its address")
    return reasons


def _described(checkout_: dict[str, Any]) -> str:
    return ", ".join(f"{key} {value}" for key, value in sorted(checkout_.items()))


@dataclass
class ClusterWatch:
    """The workers of a running cluster, seen when the render stage starts and when it ends."""

    address: str
    at_start: set[str] = field(default_factory=set)

    def lost(self, client, used: set[str]) -> list[str]:
        """Workers that rendered or were there at the start, and are gone at the end."""
        now = set(client.scheduler_info(n_workers=-1)["workers"])
        return sorted((self.at_start | used) - now)


def check_cluster(client, api_url: str | None, wait_s: float = WORKER_WAIT_S) -> ClusterWatch:
    """Before any render: a worker to render on, and every worker on this checkout and able to report
    to the Prefect API; else a ``ClusterError`` naming each refused worker."""
    address = client.scheduler.address
    try:
        client.wait_for_workers(1, timeout=wait_s)
    except TimeoutError:
        raise ClusterError(f"the Dask scheduler at {address} has no worker after {wait_s:.0f} s: start workers "
                           f"(dask worker {address} ...) and run the job again") from None
    reports = client.run(worker_report, api_url, on_error="return")
    refused = refusals(reports, api_url)
    if refused:
        raise ClusterError(f"refused {len(refused)} of the {len(reports)} workers of {address}, before any render: "
                           + "; ".join(refused))
    return ClusterWatch(address, set(reports))


def scheduler_lost(error: BaseException, address: str, run_dir, left: int) -> ClusterError:
    """The one line for a render stage whose scheduler went away (its futures were cancelled)."""
    reason = getattr(error, "reason", None) or type(error).__name__  # (the error's own text runs over lines)
    return ClusterError(f"the Dask scheduler at {address} went away ({reason}) with {left} videos of this stage "
                        f"unrecorded; what finished is kept: start a scheduler and workers, then `direct2v resume "
                        f"{run_dir} --dask-address ADDRESS` renders the rest")
