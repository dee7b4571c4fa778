"""Where the render tasks run: one thread, a local Dask cluster, dask-cuda, or a running scheduler."""

from __future__ import annotations

import contextlib
import logging
from concurrent.futures import CancelledError

from direct2v.core.environment import configure_prefect_environment

configure_prefect_environment()

from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402  (environment first)

from direct2v.core.config import ConfigError  # noqa: E402
from direct2v.job import cluster  # noqa: E402

log = logging.getLogger(__name__)


def task_runner(dask_address: str | None, dask_workers: int | None, dask_cluster: str = "local"):
    """The render stage's task runner, and its description for the summary."""
    if not (dask_address or dask_workers or dask_cluster == "cuda"):
        return ThreadPoolTaskRunner(max_workers=1), "thread pool (1 worker)"
    from prefect_dask import DaskTaskRunner

    if dask_address:
        return DaskTaskRunner(address=dask_address), f"dask scheduler {dask_address}"
    if dask_cluster == "cuda":
        try:
            import dask_cuda  # noqa: F401  (only on GPU hosts: pip install dask-cuda)
        except ImportError:
            raise ConfigError("dask_cluster='cuda' needs dask-cuda on this host: pip install dask-cuda") from None
        return (DaskTaskRunner(cluster_class="dask_cuda.LocalCUDACluster", cluster_kwargs=cluster_kwargs("cuda", dask_workers)),
                f"dask-cuda LocalCUDACluster ({dask_workers or 'one per GPU'} workers)")
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=cluster_kwargs("local", dask_workers)), \
        f"dask LocalCluster ({dask_workers} workers)"


def cluster_kwargs(dask_cluster: str, dask_workers: int | None) -> dict:
    """The cluster a job starts: every listener (scheduler, workers, dashboard) on 127.0.0.1 only --
    Dask's defaults would serve the dashboard on every interface (``:8787``)."""
    loopback = {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}
    if dask_cluster == "cuda":  # default: one worker per visible GPU
        return {**loopback, **({"n_workers": dask_workers} if dask_workers else {})}
    return {**loopback, "n_workers": dask_workers, "threads_per_worker": 1, "processes": True}


@contextlib.contextmanager
def cancelled_on_error(in_flight):
    """When the render stage stops (a full disk), the renders of ``in_flight`` (shard, {future: ...})
    that have not started are cancelled: each would take its full render time only to fail at its
    write. (A running one finishes; its video, if it fits, is adopted by the resume.)"""
    try:
        yield
    except BaseException:
        for _, futures in in_flight:
            for future in futures:
                with contextlib.suppress(Exception):
                    future.wrapped_future.cancel()  # concurrent.futures or distributed: not yet running only
        raise


@contextlib.contextmanager
def checked_cluster(rendered):
    """On Dask: before any render, every worker checked (``cluster.check_cluster``); after the stage,
    the workers that left the cluster are ``rendered.workers_lost``. On a thread: nothing to check."""
    from prefect.context import FlowRunContext
    from prefect.settings import PREFECT_API_URL

    runner = FlowRunContext.get().task_runner
    if not hasattr(type(runner), "client"):  # not a DaskTaskRunner (the property itself would connect)
        yield
        return
    try:
        client = runner.client  # connects (or starts the LocalCluster)
    except (OSError, TimeoutError) as error:
        where = f"reach the Dask scheduler at {runner.address}" if runner.address else "start the Dask cluster"
        raise cluster.ClusterError(f"cannot {where}: {error}") from None
    watch = cluster.check_cluster(client, PREFECT_API_URL.value())
    rendered.cluster_address = watch.address
    yield
    lost = watch.lost(client, set(rendered.workers))
    if lost:
        log.warning("%d Dask worker(s) left the cluster during the render stage: %s; the renders they had not "
                    "finished were sent to the other workers", len(lost), ", ".join(lost))
    rendered.workers_lost = lost


def task_result(future, address: str, run_dir, left: int):
    """A render task's result, or the error that ended it (a crashed task, e.g. ``KilledWorker``: its
    video's failed row). A scheduler that went away is the stage's end: one ``ClusterError`` (resumable)."""
    try:
        return future.result(raise_on_failure=False)
    except Exception as error:
        if isinstance(error, CancelledError) and "scheduler" in str(getattr(error, "reason", "")):
            raise cluster.scheduler_lost(error, address, run_dir, left) from None
        return error


def release(future) -> None:
    """Forget a recorded render's result on the cluster: Dask would otherwise render it again if the
    worker holding the result were lost."""
    with contextlib.suppress(Exception):
        future.wrapped_future.release()


@contextlib.contextmanager
def api_shared_with_workers():
    """Dask workers get this process's Prefect settings: name the flow's temporary server, or each
    worker would start one of its own (~15 s, and its task runs would not be in this flow's server)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    with temporary_settings({PREFECT_API_URL: str(get_client(sync_client=True).api_url)}):
        yield


def render_tags(render_settings, dask_address: str | None, dask_cluster: str) -> list[str]:
    """``["gpu"]`` when the renders run on GPUs, for a Prefect tag concurrency limit
    (``prefect concurrency-limit create gpu N``). Not for CPU renders: there the tag's concurrency
    check is one more server call, and a render that keeps every core busy starves the temporary
    server into a 503 and a ~2 s retry per video (measured on 2 cores)."""
    if render_settings.device == "cuda" or dask_cluster == "cuda" or dask_address:
        return ["gpu"]
    if render_settings.device == "cpu":
        return []
    import torch

    return ["gpu"] if torch.cuda.is_available() else []
