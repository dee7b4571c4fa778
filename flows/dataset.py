"""Prefect flow for large prompt lists and nightly datasets: ``generate_dataset``.

Orchestration only; the stages are ``direct2v.run`` (plan, render, hash, resume checks) and
``direct2v.batching`` (shards, manifest parts, compaction)::

    prompt file --stream--> shards of ``shard_size`` lines
      plan stage    one director (vLLM) process per shard, which exits and frees the GPU;
                    result: plans/<id>.json and shards/shard-NNNNN.jsonl (what to render)
      render stage  a subflow whose task runner fans out one ``render-<prompt id>`` task per video:
                    one thread (default), a Dask LocalCluster (``dask_workers``), dask-cuda's
                    LocalCUDACluster (``dask_cluster="cuda"``: one worker per GPU) or any Dask
                    scheduler (``dask_address``); each worker loads the SD pipeline once.
                    Tasks are tagged ``gpu``: a Prefect tag concurrency limit caps them
                    (``prefect concurrency-limit create gpu N``).
      manifest      one Parquet part per shard, compacted at the end into manifest.parquet
      artifact      counts, failures and time per stage, as a Markdown artifact

Planning finishes before rendering starts, so the director never shares a GPU with the
renderers. Memory stays bounded by the shard size, whatever the length of the prompt list.

Resumable: a run id that already exists under the output root continues that run in place --
plans still on disk are reused, videos whose manifest row is ``ok`` with the same ``video_hash``
(plan, render settings, render model, seed) and whose MP4 is there are skipped, everything else
(missing, failed, changed) is done again. ``reuse_from`` (globs of other run directories) reuses
finished videos of other runs with the same hash (hard links, no copy).

    python -m flows.dataset prompts_in/examples.txt          # or: direct2v dataset PROMPTS
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sys
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from direct2v.orchestration import configure_prefect_environment

configure_prefect_environment()

from prefect import flow, get_run_logger, task  # noqa: E402  (environment first)
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.futures import as_completed  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

from direct2v import batching  # noqa: E402
from direct2v import run as stages  # noqa: E402
from direct2v.config import ConfigError, RenderSettings, Settings, load_settings  # noqa: E402
from direct2v.manifest import MANIFEST_NAME, ManifestRow  # noqa: E402
from direct2v.plan import FramePlan, PlanFileError, read_plan, write_plan  # noqa: E402

DATASET_JOB = "dataset.json"
GPU_TAG = "gpu"
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


# --- tasks ---------------------------------------------------------------------------------------


@task(name="plan-shard", task_run_name="plan-shard-{label}", cache_policy=NO_CACHE)
def plan_shard(
    label: str, shard: batching.PromptShard, run_dir: Path, settings: Settings, fps_doublings: int
) -> tuple[batching.ShardWork, dict]:
    """One shard through the director: plans still on disk are kept, the rest go to one director
    process (``run.plan_records``: it exits before this returns, freeing the GPU). Never raises."""
    logger = get_run_logger()
    for problem in shard.problems:
        logger.error("%s", problem)
    rows = [stages.problem_row(run_dir.name, problem, index) for index, problem in enumerate(shard.problems)]
    reused, to_plan = stages.reusable_plans(shard.records, run_dir, settings, fps_doublings)
    planned, failed = stages.plan_records(to_plan, run_dir, settings, fps_doublings)
    for row in failed:
        logger.error("%s (%s): planning failed: %s", row.prompt_id, row.source, row.error)
    have_plan = {plan.prompt_id for plan in (*reused, *planned)}
    work = batching.ShardWork(
        shard.index, [(r.id, r.source) for r in shard.records if r.id in have_plan], rows + failed
    )
    counts = {"prompts": len(shard.records), "input_problems": len(shard.problems), "plans_reused": len(reused),
              "planned": len(planned), "plan_failed": len(failed)}
    return work, counts


def import_plans(
    index: int, paths: list[Path], run_dir: Path, budget, seen: set[str]
) -> tuple[batching.ShardWork, dict]:
    """Re-render mode: existing plan files (validated like ``direct2v render`` does) are copied
    into the run's plans/; an unreadable one, or a second one with a prompt id already ``seen``,
    becomes a failed row. Plain file handling, so not a task."""
    logger = get_run_logger()
    plans_dir = run_dir / stages.PLANS_DIR
    work = batching.ShardWork(index)
    for path in paths:
        problem = None
        try:
            plan = read_plan(path, budget)
        except PlanFileError as error:
            problem = str(error)
        else:
            if plan.prompt_id in seen:
                problem = f"{path}: prompt_id {plan.prompt_id!r} is used by another plan file"
        if problem:
            logger.error("%s", problem)
            work.rows.append(invalid_plan_row(run_dir, path, problem))
            continue
        seen.add(plan.prompt_id)
        target = plans_dir / f"{plan.prompt_id}.json"
        if not target.exists() or target.resolve() != Path(path).resolve():
            write_plan(plan, plans_dir)
        work.to_render.append((plan.prompt_id, str(path)))
    counts = {"prompts": len(paths), "input_problems": len(work.rows), "plans_reused": len(work.to_render)}
    return work, counts


def invalid_plan_row(run_dir: Path, path: Path, problem: str) -> ManifestRow:
    return ManifestRow(run_id=run_dir.name, prompt_id=f"invalid-plan-{Path(path).stem}", source=str(path),
                       status="failed", failed_stage="input", error=problem)


@task(name="render-video", task_run_name="render-{plan.prompt_id}", tags=[GPU_TAG], cache_policy=NO_CACHE)
def render_video(plan: FramePlan, run_dir: str, render_settings: RenderSettings, source: str) -> dict:
    """Render and encode one video on whichever worker runs it; the pipeline is loaded once per
    worker process (``render.cached_renderer``) and reused by every later task there."""
    from direct2v.render import cached_renderer

    try:
        renderer = cached_renderer(render_settings)
    except (OSError, ValueError, RuntimeError) as error:  # a missing or broken model directory
        row = stages.failed_row(Path(run_dir).name, plan, "render", f"cannot load the renderer: {error}", source)
    else:
        row = stages.render_plan(plan, Path(run_dir), renderer, source)
    return {"row": row, "worker": f"{socket.gethostname()}:{os.getpid()}"}


# --- the render stage ----------------------------------------------------------------------------


def make_task_runner(dask_address: str | None, dask_workers: int | None, dask_cluster: str = "local"):
    """The render stage's task runner, and a short description of it for the summary."""
    if dask_address or dask_workers or dask_cluster == "cuda":
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
    return ThreadPoolTaskRunner(max_workers=1), "thread pool (1 worker)"


@contextlib.contextmanager
def _api_shared_with_workers() -> Iterator[None]:
    """Tasks sent to Dask workers carry this process's Prefect settings. Without a server
    (``PREFECT_API_URL`` unset) each worker would start a temporary server of its own (~15 s, and
    the task runs would not be in this flow's server): name the flow's temporary server instead."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    with temporary_settings({PREFECT_API_URL: str(get_client(sync_client=True).api_url)}):
        yield


@dataclass
class _InFlight:
    index: int
    futures: dict = field(default_factory=dict)  # future -> (plan, source)
    rows: list[ManifestRow] = field(default_factory=list)


def _is_finished(row: ManifestRow | None, plan: FramePlan, run_dir: Path, expected_hash: str, verify: bool) -> bool:
    """A video that needs no work: with ``verify``, ``run.finished_problem`` (decodes the MP4);
    otherwise the cheap check that suits 100k videos: an ``ok`` row with the same hash and its MP4
    on disk (encode_mp4 publishes a file only after reading it back, so one that exists is whole)."""
    if verify:
        return stages.finished_problem(row, plan, run_dir, expected_hash) is None
    if row is None or row.status != "ok" or row.video_hash != expected_hash or not row.video_path:
        return False
    path = run_dir / row.video_path
    return path.is_file() and path.stat().st_size > 0


def _reused_row(hit: tuple[Path, dict], plan: FramePlan, source: str, run_dir: Path, video_hash: str,
                model_id: str) -> ManifestRow | None:
    """The row of a video reused (hard-linked) from another run with the same video hash."""
    other_run, record = hit
    video = other_run / record["video_path"]
    if not video.is_file() or record.get("frame_count") not in (None, len(plan.frames)):
        return None
    video_rel = stages.video_file(plan.prompt_id)
    batching.link_video(video, run_dir / video_rel)
    return ManifestRow(
        run_id=run_dir.name, prompt_id=plan.prompt_id, prompt=plan.prompt, source=source, frame_prompts=plan.frames,
        fps=plan.fps, frame_count=record.get("frame_count") or len(plan.frames), seed=plan.seed,
        director_model=plan.director_model, template_version=plan.template_version, render_model=model_id,
        video_path=video_rel, plan_path=f"{stages.PLANS_DIR}/{plan.prompt_id}.json", video_hash=video_hash,
        status="ok",
    )


@flow(name="direct2v-dataset-render", log_prints=True)
def render_stage(
    run_dir: str,
    render_settings: RenderSettings,
    total: int = 0,
    reuse_from: list[str] | None = None,
    verify_videos: bool = False,
    progress: bool = False,
) -> dict:
    """Render every shard's videos; two shards are in flight at a time so that the workers never
    wait at a shard boundary. Each finished shard becomes a manifest part."""
    from tqdm import tqdm

    logger = get_run_logger()
    run_dir = Path(run_dir)
    model_id = stages.render_model_id(render_settings)
    reuse = batching.ReuseIndex(reuse_from, exclude=run_dir) if reuse_from else None
    counts: Counter = Counter()
    workers: set[str] = set()
    busy_s = 0.0
    bar = tqdm(total=total, desc="render", unit="video", disable=not progress, file=sys.stderr)

    def submit(work: batching.ShardWork) -> _InFlight:
        flight = _InFlight(work.index, rows=list(work.rows))
        previous = batching.lookup_rows(run_dir / MANIFEST_NAME, [prompt_id for prompt_id, _ in work.to_render])
        candidates = []
        for prompt_id, source in work.to_render:
            try:
                plan = read_plan(run_dir / stages.PLANS_DIR / f"{prompt_id}.json")
            except PlanFileError as error:
                flight.rows.append(ManifestRow(run_id=run_dir.name, prompt_id=prompt_id, source=source,
                                               status="failed", failed_stage="plan", error=str(error)))
                bar.update(1)
                continue
            expected = stages.video_hash(plan, render_settings, model_id)
            if _is_finished(previous.get(prompt_id), plan, run_dir, expected, verify_videos):
                counts["skipped_finished"] += 1
                bar.update(1)
                continue
            candidates.append((plan, source, expected))
        hits = reuse.find(expected for _, _, expected in candidates) if reuse else {}
        for plan, source, expected in candidates:
            row = _reused_row(hits[expected], plan, source, run_dir, expected, model_id) if expected in hits else None
            if row is not None:
                logger.info("%s: reusing the finished video of %s", plan.prompt_id, hits[expected][0])
                flight.rows.append(row)
                counts["reused_videos"] += 1
                bar.update(1)
                continue
            future = render_video.submit(plan, str(run_dir), render_settings, source)
            flight.futures[future] = (plan, source)
        counts["rendered"] += len(flight.futures)
        batching.append_shard_rows(run_dir, work.index, flight.rows)  # durable before any render ends
        return flight

    def finish(flight: _InFlight) -> None:
        nonlocal busy_s
        for future in as_completed(list(flight.futures)):
            plan, source = flight.futures[future]
            result = future.result(raise_on_failure=False)
            if isinstance(result, dict) and isinstance(result.get("row"), ManifestRow):
                row = result["row"]
                workers.add(result["worker"])
            else:  # the task itself crashed (a lost worker after Dask's retries, a bug)
                row = stages.failed_row(run_dir.name, plan, "render", f"the render task failed: {result}", source)
            busy_s += (row.render_s or 0.0) + (row.encode_s or 0.0)
            counts[f"render_{row.status}"] += 1
            if row.status != "ok":
                logger.error("%s: %s failed: %s", plan.prompt_id, row.failed_stage, row.error)
            batching.append_shard_rows(run_dir, flight.index, [row])
            flight.rows.append(row)
            bar.update(1)
        batching.write_part(run_dir, flight.index, flight.rows)
        counts["shards"] += 1

    in_flight: deque[_InFlight] = deque()
    with _api_shared_with_workers():
        for path in batching.shard_files(run_dir):
            in_flight.append(submit(batching.read_shard_file(path)))
            if len(in_flight) > 1:
                finish(in_flight.popleft())
        while in_flight:
            finish(in_flight.popleft())
    bar.close()
    return {**counts, "workers_used": len(workers), "render_busy_s": round(busy_s, 3)}


# --- the flow ------------------------------------------------------------------------------------


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


def open_run(
    settings: dict | None, plan_settings: dict | None, render_settings: dict | None,
    output_root: str | None, run_id: str | None,
) -> tuple[Settings, Path, bool]:
    """(settings, run directory, resumed). An existing ``run_id`` is continued with its own
    settings.json plus the given overrides; a new run takes the overrides over environment
    variables, ``DIRECT2V_CONFIG`` and the defaults (as ``direct2v run`` does)."""
    overrides = dict(settings or {})
    if plan_settings:
        overrides = _merge(overrides, {"director": plan_settings})
    if render_settings:
        overrides = _merge(overrides, {"render": render_settings})
    if output_root:
        overrides["output_root"] = output_root
    if run_id is not None and not _RUN_ID.match(run_id):
        raise ConfigError(f"run_id must be 1-100 letters, digits, '_', '-', '.', got {run_id!r}")
    fresh = load_settings(**overrides)
    if run_id and (Path(fresh.output_root) / run_id).exists():
        run_dir = stages.check_resumable(Path(fresh.output_root) / run_id)  # a run's directory, or a RunDirError
        return stages.resume_settings(run_dir, overrides), run_dir, True
    return fresh, stages.create_run_dir(fresh.output_root, run_id), False


def plan_stage(prompt_file: str, run_dir: Path, settings: Settings, shard_size: int, fps_doublings: int,
               progress: bool) -> Counter:
    from tqdm import tqdm

    counts: Counter = Counter()
    total = batching.count_prompt_lines(Path(prompt_file)) if progress else None
    with tqdm(total=total, desc="plan", unit="prompt", disable=not progress, file=sys.stderr) as bar:
        for shard in batching.stream_prompt_shards(Path(prompt_file), shard_size):
            work, shard_counts = plan_shard(shard.name, shard, run_dir, settings, fps_doublings)
            batching.write_shard_file(run_dir, work)
            counts.update(shard_counts)
            counts["to_render"] += len(work.to_render)
            counts["shards"] += 1
            bar.update(len(shard.records) + len(shard.problems))
    return counts


def import_stage(plans_dir: str, run_dir: Path, settings: Settings, shard_size: int) -> Counter:
    counts: Counter = Counter()
    seen: set[str] = set()  # prompt ids so far: one short string per plan
    budget = stages.token_budget(settings)
    for index, paths in enumerate(batching.stream_plan_files(Path(plans_dir), shard_size), start=1):
        work, shard_counts = import_plans(index, paths, run_dir, budget, seen)
        batching.write_shard_file(run_dir, work)
        counts.update(shard_counts)
        counts["to_render"] += len(work.to_render)
        counts["shards"] += 1
    return counts


def dataset_markdown(summary: dict, failures: list[dict]) -> str:
    """The run's artifact: counts, time per stage, then the first failures. Every value is
    escaped (``run.markdown_text``): ids, paths and errors may hold user text."""
    text = stages.markdown_text
    count_keys = ["total", "ok", "failed", "input_problems", "plans_reused", "planned", "plan_failed", "rendered",
                  "render_ok", "render_failed", "skipped_finished", "reused_videos", "shards", "workers_used"]
    time_keys = ["plan_s", "render_s", "compact_s", "total_s", "render_s_per_video", "wall_s_per_video"]
    lines = [f"### DirecT2V dataset run {text(summary['run_id'])}", "",
             f"run directory: {text(summary['run_dir'])}; task runner: {text(summary['task_runner'])}", "",
             "| count | value |", "| --- | --- |"]
    lines += [f"| {text(key)} | {text(summary.get(key, 0))} |" for key in count_keys]
    stages_failed = summary.get("failed_by_stage") or {}
    lines += [f"| failed at {text(stage)} | {text(n)} |" for stage, n in sorted(stages_failed.items())]
    lines += ["", "| time | seconds |", "| --- | --- |"]
    lines += [f"| {text(key)} | {text(summary.get(key))} |" for key in time_keys]
    if failures:
        lines += ["", f"**Failed prompts** (first {len(failures)})", "",
                  "| prompt id | source | stage | error |", "| --- | --- | --- | --- |"]
        lines += ["| " + " | ".join(text(f.get(c) or "") for c in ("prompt_id", "source", "failed_stage", "error"))
                  + " |" for f in failures]
    return "\n".join(lines)


@flow(name="direct2v-dataset", task_runner=ThreadPoolTaskRunner(max_workers=1), log_prints=True)
def generate_dataset(
    prompt_file: str | None = None,
    plans_dir: str | None = None,
    output_root: str | None = None,
    run_id: str | None = None,
    shard_size: int = 256,
    fps_doublings: int = 0,
    settings: dict[str, Any] | None = None,
    plan_settings: dict[str, Any] | None = None,
    render_settings: dict[str, Any] | None = None,
    dask_address: str | None = None,
    dask_workers: int | None = None,
    dask_cluster: Literal["local", "cuda"] = "local",
    reuse_from: list[str] | None = None,
    verify_videos: bool = False,
    progress: bool = False,
) -> dict:
    """One video per prompt of ``prompt_file`` (or per plan file of ``plans_dir``: re-render
    without the director) into ``<output_root>/<run_id>/``; an existing ``run_id`` is resumed.

    ``settings`` overrides any setting (as ``--set`` does); ``plan_settings`` and
    ``render_settings`` override the ``director`` and ``render`` sections. ``dask_workers`` starts
    a local Dask cluster of that many worker processes; ``dask_cluster="cuda"`` one worker per GPU
    (dask-cuda); ``dask_address`` uses a running Dask scheduler. ``reuse_from``: globs of earlier
    run directories whose finished videos are reused when their video hash matches.
    """
    if bool(prompt_file) == bool(plans_dir):
        raise ConfigError("give exactly one of prompt_file (plan and render) or plans_dir (render existing plans)")
    if shard_size < 1:
        raise ConfigError(f"shard_size must be at least 1, got {shard_size}")
    if dask_workers is not None and dask_workers < 1:
        raise ConfigError(f"dask_workers must be at least 1, got {dask_workers}")
    if dask_address and (dask_workers or dask_cluster != "local"):
        raise ConfigError("dask_address uses a running cluster; dask_workers/dask_cluster start a new one: give one")
    if prompt_file:
        from direct2v.prompts import check_prompt_file

        check_prompt_file(Path(prompt_file))
    elif not Path(plans_dir).is_dir():
        raise ConfigError(f"plans_dir is not a directory: {plans_dir}")
    started_run = time.perf_counter()
    resolved, run_dir, resumed = open_run(settings, plan_settings, render_settings, output_root, run_id)
    with stages.run_dir_lock(run_dir), stages.run_log(run_dir):
        logger = get_run_logger()
        logger.info("%s run directory: %s", "resuming the" if resumed else "new", run_dir)
        if resumed:
            stages.clean_partials(run_dir)
            batching.compact_parts(run_dir)  # fold in what an interrupted attempt left, for the lookups
        stages.write_settings(resolved, run_dir)
        job = {"flow": "direct2v-dataset", "prompt_file": str(Path(prompt_file).resolve()) if prompt_file else None,
               "plans_dir": str(Path(plans_dir).resolve()) if plans_dir else None, "shard_size": shard_size,
               "fps_doublings": fps_doublings, "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        stages.write_atomically(run_dir / DATASET_JOB, json.dumps(job, indent=2) + "\n")
        timings = {}

        started = time.perf_counter()
        batching.clear_shard_files(run_dir)
        if prompt_file:
            counts = plan_stage(prompt_file, run_dir, resolved, shard_size, fps_doublings, progress)
        else:
            counts = import_stage(plans_dir, run_dir, resolved, shard_size)
        timings["plan_s"] = time.perf_counter() - started
        logger.info("plan stage: %s", dict(counts))

        started = time.perf_counter()
        runner, runner_text = make_task_runner(dask_address, dask_workers, dask_cluster)
        rendered = render_stage.with_options(task_runner=runner)(
            run_dir=str(run_dir), render_settings=resolved.render, total=counts["to_render"],
            reuse_from=reuse_from, verify_videos=verify_videos, progress=progress,
        )
        timings["render_s"] = time.perf_counter() - started

        started = time.perf_counter()
        result = batching.compact_parts(run_dir)
        timings["compact_s"] = time.perf_counter() - started
        timings["total_s"] = time.perf_counter() - started_run

        ok = result.statuses.get("ok", 0)
        summary = {
            "run_dir": str(run_dir), "run_id": run_dir.name, "resumed": resumed, "task_runner": runner_text,
            "total": result.rows, "ok": ok, "failed": result.rows - ok, "failed_by_stage": dict(result.failed_stages),
            **{key: counts.get(key, 0) for key in ("input_problems", "plans_reused", "planned", "plan_failed")},
            **{key: rendered.get(key, 0) for key in ("rendered", "render_ok", "render_failed", "skipped_finished",
                                                     "reused_videos", "workers_used")},
            "shards": counts["shards"],
            **{key: round(value, 2) for key, value in timings.items()},
            "render_s_per_video": round(rendered.get("render_busy_s", 0.0) / max(rendered.get("rendered", 0), 1), 3),
            "wall_s_per_video": round(timings["render_s"] / max(rendered.get("rendered", 0), 1), 3),
            "manifest": str(result.path),
        }
        create_markdown_artifact(
            key="direct2v-dataset-summary",
            markdown=dataset_markdown(summary, result.failures),
            description=f"DirecT2V dataset run {run_dir.name}",
        )
        logger.info("done: %d ok, %d failed of %d; manifest %s", ok, result.rows - ok, result.rows, result.path)
        return summary


def main() -> None:
    prompt_file = sys.argv[1] if len(sys.argv) > 1 else "prompts_in/examples.txt"
    print(json.dumps(generate_dataset(prompt_file=prompt_file), indent=2))


if __name__ == "__main__":
    main()
