"""Where the render tasks run: one thread, a local Dask cluster, dask-cuda, or a running scheduler."""

from __future__ import annotations

import contextlib

from direct2v.core.environment import configure_prefect_environment

configure_prefect_environment()

from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402  (environment first)

from direct2v.core.config import ConfigError  # noqa: E402


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
        kwargs = {"n_workers": dask_workers} if dask_workers else {}  # default: one worker per visible GPU
        return (DaskTaskRunner(cluster_class="dask_cuda.LocalCUDACluster", cluster_kwargs=kwargs),
                f"dask-cuda LocalCUDACluster ({dask_workers or 'one per GPU'} workers)")
    kwargs = {"n_workers": dask_workers, "threads_per_worker": 1, "processes": True, "host": "127.0.0.1",
              "dashboard_address": "127.0.0.1:0"}
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=kwargs), \
        f"dask LocalCluster ({dask_workers} workers)"


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
