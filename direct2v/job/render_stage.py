"""The render stage of a job, shard by shard: which videos a shard still needs, and each render
task's result recorded as it comes.

    open_shard(shard file) -> OpenShard.todo --(the flow's render tasks)--> close_video ... close_shard

``open_shard`` decides every video of a shard: finished (kept), adopted (an orphan MP4 with the
right hash), reused from another run, or still to render; the rows it decides are durable before
any render of the shard ends. Where the render tasks run (a thread, Dask) is the flow's business.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from direct2v.core.config import RenderSettings
from direct2v.core.files import DiskFullError, render_model_id
from direct2v.director.plan import FramePlan, PlanFileError, read_plan
from direct2v.job import manifest, shards, videos
from direct2v.job.manifest import ManifestRow
from direct2v.job.rundir import PLANS_DIR, VIDEOS_DIR
from direct2v.render.model_dir import read_architecture

log = logging.getLogger(__name__)


@dataclass
class RenderProgress:
    """What the render stage counted, across shards."""

    counts: Counter = field(default_factory=Counter)
    workers: dict[str, int] = field(default_factory=dict)  # worker -> renderer loads it reported (the most seen)
    cluster_address: str = ""  # the Dask scheduler's, on a cluster
    workers_lost: list[str] = field(default_factory=list)  # Dask workers that left the cluster mid-stage
    busy_s: float = 0.0
    bar: Any = None
    total: int = 0  # videos of the run's plans, finished or not
    space_checked: bool = False  # free space was compared with a size seen (check_free_space)


@dataclass
class OpenShard:
    """A shard being rendered: its final rows so far and the videos still to make."""

    index: int
    rows: list[ManifestRow] = field(default_factory=list)
    todo: list[tuple[FramePlan, str]] = field(default_factory=list)  # (plan, source)


def open_shard(work: shards.ShardWork, run_dir: Path, render_settings: RenderSettings, verify: bool,
               reuse: videos.ReuseIndex | None, progress: RenderProgress) -> OpenShard:
    """Decide every video of a shard: finished (kept), adopted (an orphan MP4 with the right hash),
    reused from another run, or still to render; the rows decided here are made durable before any
    render of the shard ends."""
    run_dir = Path(run_dir)
    if not progress.space_checked:
        progress.space_checked = check_free_space(run_dir, progress.total)
    shard = OpenShard(work.index, rows=list(work.rows))
    model = render_model_id(render_settings.model_dir, render_settings.lora_dir)
    architecture = read_architecture(render_settings.model_dir).name
    previous = manifest.lookup_rows(run_dir / manifest.MANIFEST_NAME, [prompt_id for prompt_id, _ in work.to_render])
    candidates = []
    for prompt_id, source in work.to_render:
        try:
            plan = read_plan(run_dir / PLANS_DIR / f"{prompt_id}.json")
        except PlanFileError as error:
            shard.rows.append(manifest.failed_row(run_dir.name, prompt_id, "plan", str(error), source))
            _tick(progress, "plan_unreadable")
            continue
        expected = videos.video_hash(plan, render_settings, model)
        reason = videos.unfinished_reason(previous.get(prompt_id), plan, run_dir, expected, verify)
        if reason is None:
            _tick(progress, "skipped_finished")
            continue
        adopted = videos.adopt_video(plan, run_dir, expected, model, source, architecture)
        if adopted is not None:
            shard.rows.append(adopted)
            _tick(progress, "adopted")
            continue
        if prompt_id in previous:
            log.info("%s: rendering again: %s", prompt_id, reason)
        candidates.append((plan, source, expected))
    hits = reuse.find(expected for _, _, expected in candidates) if reuse else {}
    for plan, source, expected in candidates:
        row = (videos.reused_row(hits[expected], plan, run_dir, expected, model, source, architecture)
               if expected in hits else None)
        if row is not None:
            log.info("%s: reusing the finished video of %s", plan.prompt_id, hits[expected][0])
            shard.rows.append(row)
            _tick(progress, "reused_videos")
        else:
            shard.todo.append((plan, source))
    progress.counts["rendered"] += len(shard.todo)
    manifest.append_shard_rows(run_dir, shard.index, shard.rows)
    return shard


def close_video(shard: OpenShard, run_dir: Path, plan, source: str, result: Any, progress: RenderProgress) -> ManifestRow:
    """Record one render task's result (``{"row", "worker"}``, or whatever a crashed task returned)."""
    if isinstance(result, DiskFullError):  # not the video's fault: the job stops here, resumable
        raise result
    if isinstance(result, dict) and isinstance(result.get("row"), ManifestRow):
        row = result["row"]
        worker = result["worker"]
        progress.workers[worker] = max(progress.workers.get(worker, 0), result.get("renderer_loads", 0))
    else:  # the task itself crashed (a lost worker after Dask's retries, a bug)
        row = manifest.plan_row(Path(run_dir).name, plan, source, status="failed", failed_stage="render",
                                error=f"the render task failed: {result}")
    progress.busy_s += (row.render_s or 0.0) + (row.encode_s or 0.0)
    if row.status != "ok":
        log.error("%s: %s failed: %s", plan.prompt_id, row.failed_stage, row.error)
    manifest.append_shard_rows(run_dir, shard.index, [row])
    shard.rows.append(row)
    _tick(progress, f"render_{row.status}")
    if row.status == "ok" and not progress.space_checked:  # the first size a new run can go by
        progress.space_checked = check_free_space(run_dir, progress.total)
    return row


def close_shard(shard: OpenShard, run_dir: Path, progress: RenderProgress) -> None:
    manifest.write_part(run_dir, shard.index, shard.rows)
    progress.counts["shards_rendered"] += 1


#: Finished videos whose sizes the free-space check averages (a sample: never a scan of a huge run).
SIZE_SAMPLE = 1000


def check_free_space(run_dir: Path, total: int) -> bool:
    """Warn when the disk of ``run_dir`` has less free space than the videos still to make need,
    at the mean size of the run's finished MP4s. Returns whether there was a size to go by (a new
    run has none until its first video)."""
    sizes, finished = [], 0
    videos_dir = Path(run_dir) / VIDEOS_DIR
    if videos_dir.is_dir():
        with os.scandir(videos_dir) as entries:
            for entry in entries:
                if entry.name.endswith(".mp4") and not entry.name.startswith("."):
                    finished += 1
                    if len(sizes) < SIZE_SAMPLE:
                        sizes.append(entry.stat().st_size)
    if not sizes:
        return False
    per_video = sum(sizes) / len(sizes)
    needed = per_video * max(total - finished, 0)
    free = shutil.disk_usage(run_dir).free
    if free < needed:
        log.warning("only %s free on the disk of %s, and the %d videos still to make need about %s at the %s per "
                    "video seen so far; free space now, or the run stops when the disk is full (then: direct2v "
                    "resume %s)", _size(free), run_dir, total - finished, _size(needed), _size(per_video), run_dir)
    return True


def _size(count: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    return ""


def _tick(progress: RenderProgress, key: str) -> None:
    progress.counts[key] += 1
    if progress.bar is not None:
        progress.bar.update(1)
