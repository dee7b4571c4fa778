"""What a run did, as one summary: printed by every command, and the run's Prefect artifact."""

from __future__ import annotations

import html
import re
from collections import Counter

from pydantic import BaseModel, Field

from direct2v.core.errors import Direct2VError
from direct2v.core.files import DiskFullError
from direct2v.job import manifest
from direct2v.job.render_stage import RenderProgress
from direct2v.job.request import Run


class RunSummary(BaseModel):
    """What a run did: printed by every command, and the run's Prefect artifact."""

    run_id: str
    run_dir: str
    resumed: bool
    task_runner: str
    total: int = Field(description="manifest rows")
    ok: int
    ok_with_plan_warnings: int = Field(0, description="of the ok rows, those whose plan the director accepted "
                                       "with quality warnings (manifest column plan_warnings)")
    failed: int
    rejected: int = Field(description="rendered, but turned down by QC (direct2v eval)")
    failed_by_stage: dict[str, int]
    input_problems: int = Field(0, description="unreadable prompt lines or plan files")
    plans_reused: int = Field(0, description="plans already on disk (or imported plan files)")
    planned: int = 0
    plan_failed: int = 0
    rendered: int = Field(0, description="videos sent to the renderer")
    render_ok: int = 0
    render_failed: int = 0
    skipped_finished: int = Field(0, description="videos already finished for the same video hash")
    adopted: int = Field(0, description="finished MP4s whose row a crash had kept from the manifest")
    reused_videos: int = Field(0, description="finished videos of other runs, hard-linked")
    shards: int = 0
    workers_used: int = Field(0, description="processes that rendered (threads of one process count once)")
    renderer_loads: int = Field(0, description="times a render process loaded the pipeline (once per worker)")
    workers_lost: list[str] = Field(default_factory=list, description="Dask workers that left the cluster during "
                                    "the render stage (their unfinished renders went to the other workers)")
    plan_s: float = 0.0
    render_s: float = 0.0
    compact_s: float = 0.0
    finish_s: float = Field(0.0, description="the gallery and the export")
    total_s: float = 0.0
    render_s_per_video: float = 0.0
    wall_s_per_video: float = 0.0
    manifest: str
    gallery: str = Field("", description="the run's index.html (empty when skipped)")
    export_index: str = Field("", description="index.json of the export asked for (empty without one)")
    skipped: dict[str, str] = Field(default_factory=dict, description="finishing steps (gallery, export) that "
                                    "failed, and why: the videos and the manifest are complete without them")
    disk_full: str = Field("", description="the file a full disk kept a finishing step from writing; the command "
                           "then exits 3 (free space and resume to finish)")


def summarise(run: Run, task_runner: str, plan_counts: Counter, render: RenderProgress,
              compacted: manifest.CompactResult, timings: dict[str, float], gallery: str = "",
              export_index: str = "", failed_steps: dict[str, BaseException] | None = None) -> RunSummary:
    rendered = render.counts["rendered"]
    failed_steps = failed_steps or {}
    disk_full = next((error for error in failed_steps.values() if isinstance(error, DiskFullError)), None)
    return RunSummary(
        run_id=run.id, run_dir=str(run.dir), resumed=run.resumed, task_runner=task_runner,
        total=compacted.rows, ok=compacted.statuses["ok"], ok_with_plan_warnings=compacted.ok_with_plan_warnings,
        failed=compacted.statuses["failed"],
        rejected=compacted.statuses["rejected"], failed_by_stage=dict(compacted.failed_stages),
        **{key: plan_counts[key] for key in ("input_problems", "plans_reused", "planned", "plan_failed", "shards")},
        **{key: render.counts[key] for key in ("rendered", "render_ok", "render_failed", "skipped_finished",
                                               "adopted", "reused_videos")},
        workers_used=len(render.workers), renderer_loads=sum(render.workers.values()),
        workers_lost=render.workers_lost, **{key: round(value, 2) for key, value in timings.items()},
        render_s_per_video=round(render.busy_s / max(rendered, 1), 3),
        wall_s_per_video=round(timings.get("render_s", 0.0) / max(rendered, 1), 3),
        manifest=str(compacted.path), gallery=gallery, export_index=export_index,
        skipped={name: _reason(error) for name, error in failed_steps.items()},
        disk_full=str(disk_full.path) if disk_full else "",
    )


def _reason(error: BaseException) -> str:
    if isinstance(error, Direct2VError):
        return str(error)
    return f"{type(error).__name__}: {error} (a bug: the traceback is in run.log)"


def outcome_line(summary: dict) -> str:
    """The run's last line: how many videos are ok, and of those how many came from plans the director
    accepted with quality warnings -- never counted as plain successes."""
    ok, warned = summary["ok"], summary.get("ok_with_plan_warnings", 0)
    clean = f"{ok - warned} from clean plans, {warned} from plans accepted with warnings (manifest: plan_warnings)"
    return (f"{ok}/{summary['total']} ok ({clean}); {summary['failed']} failed, {summary['rejected']} rejected; "
            f"manifest: {summary['manifest']}")


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~])")


def markdown_text(value: object, limit: int = 500) -> str:
    """Any text as inert Markdown: one line, HTML escaped, Markdown punctuation backslash-escaped,
    and ``:`` as an entity so that no URL becomes a link."""
    text = " ".join(str(value).split())
    if len(text) > limit:
        text = text[:limit] + "..."
    text = html.escape(_MARKDOWN_SPECIAL.sub(r"\\\1", text), quote=False)  # no "#" in the entities yet
    return re.sub(r"(?i)(www)\.", r"\1&#46;", text.replace(":", "&#58;"))


def summary_markdown(summary: RunSummary, failures: list[dict]) -> str:
    """The run's artifact: every count and time, then the first failed prompts. Every value is
    escaped: ids, paths and error messages may hold user text."""
    lines = [f"### DirecT2V run {markdown_text(summary.run_id)}", "", "| what | value |", "| --- | --- |"]
    lines += [f"| {markdown_text(key)} | {markdown_text(value)} |" for key, value in summary.model_dump().items()]
    if failures:
        lines += ["", f"**Failed prompts** (first {len(failures)})", "",
                  "| prompt id | source | stage | error |", "| --- | --- | --- | --- |"]
        lines += ["| " + " | ".join(markdown_text(f.get(c) or "") for c in ("prompt_id", "source", "failed_stage", "error"))
                  + " |" for f in failures]
    return "\n".join(lines)
