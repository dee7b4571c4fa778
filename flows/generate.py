"""The one DirecT2V flow: prompt file (or plan files) -> plans -> videos -> manifest.

Wiring only: every step is a function of ``direct2v.job``. ``direct2v run``, ``dataset``,
``resume``, ``render --plans`` and every deployment in prefect.yaml run this flow with one
``JobRequest`` (``flows/dataset.py`` is the same flow under its deployment name).

    python -m flows.generate prompts_in/examples.txt      # or: direct2v run prompts_in/examples.txt

Render tasks run on one thread by default, or on Dask (``dask_workers``: a LocalCluster;
``dask_cluster="cuda"``: one worker per GPU; ``dask_address``: a running scheduler); each worker
loads the SD pipeline once. On GPUs they are tagged ``gpu`` for a Prefect tag concurrency limit. With no
``PREFECT_API_URL``, Prefect starts a temporary local server (state under ``.state/prefect``).
"""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from pathlib import Path

from direct2v.core.environment import configure_prefect_environment

configure_prefect_environment()

from prefect import flow, task  # noqa: E402  (environment first)
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.futures import as_completed  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

from direct2v.core.config import RenderSettings  # noqa: E402
from direct2v.director.plan import FramePlan  # noqa: E402
from direct2v.job import cluster, manifest, render_stage, summary, videos  # noqa: E402
from direct2v.job.plan_stage import PlanStage  # noqa: E402
from direct2v.job.request import JobRequest, resolve_run, start_run  # noqa: E402
from direct2v.job.rundir import run_dir_lock, run_log  # noqa: E402
from direct2v.job.shards import read_shard_file, shard_files  # noqa: E402
from flows import runners  # noqa: E402


@task(name="plan-shard", task_run_name="plan-shard-{unit_index}", cache_policy=NO_CACHE)
def plan_shard(stage: PlanStage, unit, unit_index: int):
    return stage.plan(unit)  # one director process, which exits (freeing the GPU) before this returns


@task(name="render-video", task_run_name="render-{plan.prompt_id}", cache_policy=NO_CACHE)
def render_video(plan: FramePlan, run_dir: str, render_settings: RenderSettings, source: str, checkout: dict) -> dict:
    from direct2v.render.renderer import cached_renderer  # loaded once per worker process, reused by later tasks

    worker = cluster.worker_name()
    # A worker that joined a running cluster after the check (cluster.check_cluster) renders nothing either.
    refused = cluster.refusals({worker: cluster.worker_report(None)}, None, expected=checkout)
    if refused:
        row = manifest.plan_row(Path(run_dir).name, plan, source, status="failed", failed_stage="render",
                                error=f"refused: {refused[0]}")
    else:
        try:
            row = videos.render_plan(plan, Path(run_dir), cached_renderer(render_settings), source)
        except (OSError, ValueError, RuntimeError) as error:  # a missing or broken model directory on this worker
            row = manifest.plan_row(Path(run_dir).name, plan, source, status="failed", failed_stage="render",
                                    error=f"worker {worker} cannot load the renderer: {error}")
    return {"row": row.model_copy(update={"worker": worker}), "worker": worker,
            "renderer_loads": cached_renderer.cache_info().misses}


@task(name="gallery", cache_policy=NO_CACHE)
def write_gallery(run_dir: str) -> str:
    from direct2v.publish.gallery import write_review  # contact sheets + index.html: no model needed

    return str(write_review(Path(run_dir)))


@task(name="export", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def export_dataset(run_dir: str, export_format: str, export_dir: str | None) -> str:
    from direct2v.publish.export import export_run  # resumable: a retry keeps the shards already complete

    out = Path(export_dir) if export_dir else Path(run_dir) / "export" / export_format
    return str(export_run(Path(run_dir), out, export_format).index)


def finishing_step(step, name: str, failed_steps: dict[str, BaseException], *args) -> str:
    """Run the gallery or the export task. The videos and the manifest are complete whatever it
    does, so its failure goes into ``failed_steps`` (the summary's ``skipped``), never the run's."""
    state = step(*args, return_state=True)
    if state.is_completed():
        return state.result()
    failed_steps[name] = state.result(raise_on_failure=False)
    return ""


@flow(name="direct2v-render", log_prints=True)
def render_videos(run_dir: str, render_settings: RenderSettings, verify_videos: bool, reuse_from: list[str],
                  total: int, progress: bool, tags: list[str]) -> render_stage.RenderProgress:
    """Every shard's videos; two shards in flight, so the workers never wait at a shard boundary.
    ``run_dir`` is absolute: a Dask worker runs in a working directory of its own."""
    from tqdm import tqdm

    reuse = videos.ReuseIndex(reuse_from, exclude=Path(run_dir)) if reuse_from else None
    render = render_video.with_options(tags=tags)
    counted = render_stage.RenderProgress(bar=tqdm(total=total, desc="render", unit="video", disable=not progress,
                                                   file=sys.stderr), total=total)

    def submit(work):
        shard = render_stage.open_shard(work, Path(run_dir), render_settings, verify_videos, reuse, counted)
        return shard, {render.submit(plan, run_dir, render_settings, source, checkout): (plan, source)
                       for plan, source in shard.todo}

    def finish(shard, futures) -> None:
        for future in as_completed(list(futures)):
            result = runners.task_result(future, counted.cluster_address, run_dir, unrecorded())
            render_stage.close_video(shard, Path(run_dir), *futures.pop(future), result, counted)
            runners.release(future)
        render_stage.close_shard(shard, Path(run_dir), counted)

    def unrecorded() -> int:
        return sum(len(futures) for _, futures in in_flight)

    checkout = cluster.checkout()
    in_flight: deque = deque()
    with runners.api_shared_with_workers(), runners.checked_cluster(counted), runners.cancelled_on_error(in_flight):
        for path in shard_files(Path(run_dir)):
            in_flight.append(submit(read_shard_file(path)))
            if len(in_flight) > 1:
                finish(*in_flight[0])
                in_flight.popleft()
        while in_flight:
            finish(*in_flight[0])
            in_flight.popleft()
    counted.bar.close()
    counted.bar = None
    return counted


@flow(name="direct2v-generate", task_runner=ThreadPoolTaskRunner(max_workers=1), log_prints=True)
def generate(job: JobRequest) -> dict:
    """One video per prompt of ``job.prompt_file`` (or per plan file of ``job.plans_dir``) into a new
    run, or continue the run in ``job.run_dir`` / ``<output_root>/<job.run_id>``; ``job.settings``
    overrides any setting (as ``--set`` does). Ends with the run's gallery and, with ``job.export``,
    a training-ready copy of its finished videos; either failing is the summary's ``skipped``, not
    the run's failure. A full disk anywhere else stops the flow (``DiskFullError``), resumable."""
    started = time.perf_counter()
    run = resolve_run(job)
    runner, runner_text = runners.task_runner(job.dask_address, job.dask_workers, job.dask_cluster)
    with run_dir_lock(run.dir), run_log(run.dir):
        start_run(run)
        stage = PlanStage(run, job.progress)
        for index, unit in enumerate(stage.units(), start=1):
            plan_shard(stage, unit, index)
        plan_counts = stage.close()
        planned = time.perf_counter()
        rendered = render_videos.with_options(task_runner=runner)(
            str(run.dir.resolve()), run.settings.render, run.job.verify_videos, run.job.reuse_from, plan_counts["to_render"],
            job.progress, runners.render_tags(run.settings.render, job.dask_address, job.dask_cluster))
        compacting = time.perf_counter()
        compacted = manifest.compact(run.dir)
        finishing = time.perf_counter()
        failed_steps: dict[str, BaseException] = {}
        gallery_page = finishing_step(write_gallery, "gallery", failed_steps, str(run.dir)) if job.gallery else ""
        exported = (finishing_step(export_dataset, "export", failed_steps, str(run.dir), job.export, job.export_dir)
                    if job.export and compacted.statuses["ok"] else "")
        timings = {"plan_s": planned - started, "render_s": compacting - planned, "compact_s": finishing - compacting,
                   "finish_s": time.perf_counter() - finishing, "total_s": time.perf_counter() - started}
        result = summary.summarise(run, runner_text, plan_counts, rendered, compacted, timings,
                                   gallery=gallery_page, export_index=exported, failed_steps=failed_steps)
        create_markdown_artifact(key="direct2v-run-summary", markdown=summary.summary_markdown(result, compacted.failures),
                                 description=f"DirecT2V run {run.id}")
        return result.model_dump()


if __name__ == "__main__":
    prompts = sys.argv[1] if len(sys.argv) > 1 else "prompts_in/examples.txt"
    print(json.dumps(generate(JobRequest(prompt_file=prompts)), indent=2))
