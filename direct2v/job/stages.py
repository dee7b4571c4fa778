"""The job as the flow composes it: open the run, plan every shard, render every shard, compact,
summarise. Plain functions over the stage modules (rundir, planning, videos, manifest, shards);
``flows/generate.py`` only wires them to Prefect tasks and task runners.

    request --open_run--> Run --plan_stage--> shards/*.jsonl --render stage--> manifest parts
        --compact--> manifest.parquet --summarise--> RunSummary (CLI output, Prefect artifact)

Planning finishes before rendering starts, so the director never shares a GPU with the renderers,
and memory stays bounded by the shard size whatever the length of the prompt list.
"""

from __future__ import annotations

import html
import logging
import re
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from direct2v.core.config import ConfigError, RenderSettings, Settings, load_settings, merge_settings
from direct2v.core.files import LORA_WEIGHTS, render_model_id
from direct2v.director.plan import PlanFileError, read_plan
from direct2v.director.prompts import check_prompt_file
from direct2v.job import manifest, planning, shards, videos
from direct2v.job.manifest import ManifestRow
from direct2v.job.rundir import PLANS_DIR, Job, check_run_id, clean_partials, new_run_id, open_run, record_run

log = logging.getLogger(__name__)


class JobRequest(BaseModel):
    """What a command or a deployment asks for. ``run_dir`` (a path) or ``run_id`` (a name under
    ``output_root``) that already holds a run continues it; a new run is named after the time."""

    prompt_file: str | None = None
    plans_dir: str | None = None
    run_dir: str | None = None
    run_id: str | None = None
    overrides: dict[str, Any] = Field(default_factory=dict, description="settings over env/TOML/defaults "
                                      "(a new run) or over the run's settings.json (a resumed one)")
    shard_size: int | None = Field(None, ge=1)
    reuse_from: list[str] | None = None
    verify_videos: bool | None = None


@dataclass
class Run:
    """An opened run: what every stage is given."""

    dir: Path
    job: Job
    settings: Settings
    resumed: bool

    @property
    def id(self) -> str:
        return self.dir.name


def resolve_run(request: JobRequest) -> Run:
    """Which directory, job and settings ``request`` means (reads only; ``start_run`` writes)."""
    if request.prompt_file and request.plans_dir:
        raise ConfigError("give either a prompt file (prompt_file) or a plan directory (plans_dir), not both")
    if not (request.prompt_file or request.plans_dir or request.run_dir or request.run_id):
        raise ConfigError("give a prompt file (prompt_file), a plan directory (plans_dir), or a run to resume")
    job = None
    if request.prompt_file:
        check_prompt_file(Path(request.prompt_file))  # named as the user gave it
    if request.prompt_file or request.plans_dir:
        given = {key: value for key, value in request.model_dump(include={"shard_size", "reuse_from", "verify_videos"}).items()
                 if value is not None}
        job = Job(prompt_file=str(Path(request.prompt_file).resolve()) if request.prompt_file else None,
                  plans_dir=str(Path(request.plans_dir).resolve()) if request.plans_dir else None, **given)
    if request.run_dir:
        run_dir = Path(request.run_dir)
        settings = load_settings(**request.overrides) if job else None
    else:
        settings = load_settings(**request.overrides)
        run_dir = Path(settings.output_root) / (check_run_id(request.run_id) if request.run_id else new_run_id())
    run_dir, job, settings, resumed = open_run(run_dir, job, settings, request.overrides)
    return Run(run_dir, job, settings, resumed)


def start_run(run: Run) -> None:
    """Record the run (holding its lock); a resumed one first loses what an interrupted process left
    half-written and folds its leftover journals into the manifest, for the lookups."""
    if run.resumed:
        clean_partials(run.dir)
        manifest.compact(run.dir)
    record_run(run.dir, run.job, run.settings)
    shards.clear_shard_files(run.dir)


def check_job(run: Run) -> None:
    """What can be checked before Prefect or any model starts: the prompt file or plan directory,
    and the model directories (a ConfigError names the setting)."""
    from direct2v.director.director import check_model_dir
    from direct2v.director.prompts import PromptFileError
    from direct2v.render.pipeline import missing_model_files

    if run.job.prompt_file:
        path = check_prompt_file(Path(run.job.prompt_file))
        if shards.count_prompt_lines(path) == 0:
            raise PromptFileError(f"{path}: no prompts (the file is empty, or every line is blank or a # comment)")
        try:
            check_model_dir(run.settings.director.model_dir)
        except FileNotFoundError as error:
            raise ConfigError(f"director.model_dir: {error}") from None
    elif not any(Path(run.job.plans_dir).glob("*.json")):
        raise ConfigError(f"{run.job.plans_dir}: no plan .json files found")
    root = Path(run.settings.render.model_dir)
    if not root.is_dir():
        raise ConfigError(f"render.model_dir: directory not found: {root} (run `direct2v models build` for the tiny "
                          "default, or set render.model_dir to a local diffusers Stable Diffusion 1.x directory)")
    missing = missing_model_files(root)
    if missing:
        raise ConfigError(f"render.model_dir: {root} is not a complete diffusers Stable Diffusion directory "
                          f"(safetensors only); missing: {', '.join(missing)}")
    lora = run.settings.render.lora_dir
    if lora is not None and not (Path(lora) / LORA_WEIGHTS).is_file():
        raise ConfigError(f"render.lora_dir: no LoRA at {lora}: expected {Path(lora) / LORA_WEIGHTS} "
                          "(diffusers' save_lora_weights layout, safetensors)")


# --- the plan stage ------------------------------------------------------------------------------


def plan_shard(shard: shards.PromptShard, run: Run) -> tuple[shards.ShardWork, Counter]:
    """One shard of prompts: plans still on disk are kept, the rest go to one director process."""
    rows = [planning.problem_row(run.id, problem, index) for index, problem in enumerate(shard.problems)]
    for problem in shard.problems:
        log.error("%s", problem)
    reused, to_plan = planning.reusable_plans(shard.records, run.dir, run.settings)
    planned, failed = planning.plan_records(to_plan, run.dir, run.settings)
    for row in failed:
        log.error("%s (%s): planning failed: %s", row.prompt_id, row.source, row.error)
    have_plan = {plan.prompt_id for plan in (*reused, *planned)}
    work = shards.ShardWork(shard.index, [(r.id, r.source) for r in shard.records if r.id in have_plan], rows + failed)
    return work, Counter(prompts=len(shard.records) + len(shard.problems), input_problems=len(shard.problems),
                         plans_reused=len(reused), planned=len(planned), plan_failed=len(failed))


def plan_units(run: Run) -> Iterator[tuple[int, list]]:
    """(shard index, prompt shard or list of plan files), streamed one shard at a time."""
    if run.job.plans_dir:
        yield from enumerate(shards.stream_plan_files(Path(run.job.plans_dir), run.job.shard_size), start=1)
    else:
        for shard in shards.stream_prompt_shards(Path(run.job.prompt_file), run.job.shard_size):
            yield shard.index, shard


def plan_stage(run: Run, plan_one, progress: bool = False) -> Counter:
    """Every shard through ``plan_one(shard, run)`` (the flow's task for ``plan_shard``) or, for a
    plan directory, through ``import_plan_files``; each result becomes a shard file."""
    from tqdm import tqdm

    counts: Counter = Counter()
    seen: set[str] = set()  # prompt ids of imported plans so far: one short string per plan
    budget = planning.token_budget(run.settings) if run.job.plans_dir else None
    total = shards.count_prompt_lines(Path(run.job.prompt_file)) if progress and run.job.prompt_file else None
    with tqdm(total=total, desc="plan", unit="prompt", disable=not progress, file=sys.stderr) as bar:
        for index, unit in plan_units(run):
            if run.job.plans_dir:
                imported, rows = planning.import_plan_files(unit, run.dir, budget, seen)
                work = shards.ShardWork(index, [(plan.prompt_id, source) for plan, source in imported], rows)
                shard_counts = Counter(prompts=len(unit), input_problems=len(rows), plans_reused=len(imported))
            else:
                work, shard_counts = plan_one(unit, run)
            shards.write_shard_file(run.dir, work)
            counts.update(shard_counts)
            counts["to_render"] += len(work.to_render)
            counts["shards"] += 1
            bar.update(shard_counts["prompts"])
    return counts


# --- the render stage ----------------------------------------------------------------------------


@dataclass
class RenderProgress:
    """What the render stage counted, across shards."""

    counts: Counter = field(default_factory=Counter)
    workers: set[str] = field(default_factory=set)
    busy_s: float = 0.0
    bar: Any = None


@dataclass
class OpenShard:
    """A shard being rendered: its final rows so far and the videos still to make."""

    index: int
    rows: list[ManifestRow] = field(default_factory=list)
    todo: list[tuple[Any, str]] = field(default_factory=list)  # (FramePlan, source)
    futures: dict = field(default_factory=dict)  # the flow's: future -> (plan, source)


def open_shard(work: shards.ShardWork, run_dir: Path, render_settings: RenderSettings, verify: bool,
               reuse: videos.ReuseIndex | None, progress: RenderProgress) -> OpenShard:
    """Decide every video of a shard: finished (kept), adopted (an orphan MP4 with the right hash),
    reused from another run, or still to render; the rows decided here are made durable before any
    render of the shard ends."""
    run_dir = Path(run_dir)
    shard = OpenShard(work.index, rows=list(work.rows))
    model = render_model_id(render_settings.model_dir, render_settings.lora_dir)
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
        adopted = videos.adopt_video(plan, run_dir, expected, model, source)
        if adopted is not None:
            shard.rows.append(adopted)
            _tick(progress, "adopted")
            continue
        if prompt_id in previous:
            log.info("%s: rendering again: %s", prompt_id, reason)
        candidates.append((plan, source, expected))
    hits = reuse.find(expected for _, _, expected in candidates) if reuse else {}
    for plan, source, expected in candidates:
        row = videos.reused_row(hits[expected], plan, run_dir, expected, model, source) if expected in hits else None
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
    if isinstance(result, dict) and isinstance(result.get("row"), ManifestRow):
        row = result["row"]
        progress.workers.add(result["worker"])
    else:  # the task itself crashed (a lost worker after Dask's retries, a bug)
        row = manifest.plan_row(Path(run_dir).name, plan, source, status="failed", failed_stage="render",
                                error=f"the render task failed: {result}")
    progress.busy_s += (row.render_s or 0.0) + (row.encode_s or 0.0)
    if row.status != "ok":
        log.error("%s: %s failed: %s", plan.prompt_id, row.failed_stage, row.error)
    manifest.append_shard_rows(run_dir, shard.index, [row])
    shard.rows.append(row)
    _tick(progress, f"render_{row.status}")
    return row


def close_shard(shard: OpenShard, run_dir: Path, progress: RenderProgress) -> None:
    manifest.write_part(run_dir, shard.index, shard.rows)
    progress.counts["shards_rendered"] += 1


def _tick(progress: RenderProgress, key: str) -> None:
    progress.counts[key] += 1
    if progress.bar is not None:
        progress.bar.update(1)


# --- the summary ---------------------------------------------------------------------------------


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
    workers_used: int = 0
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


def summarise(run: Run, task_runner: str, plan_counts: Counter, render: RenderProgress,
              compacted: manifest.CompactResult, timings: dict[str, float], gallery: str = "",
              export_index: str = "") -> RunSummary:
    rendered = render.counts["rendered"]
    return RunSummary(
        run_id=run.id, run_dir=str(run.dir), resumed=run.resumed, task_runner=task_runner,
        total=compacted.rows, ok=compacted.statuses["ok"], ok_with_plan_warnings=compacted.ok_with_plan_warnings,
        failed=compacted.statuses["failed"],
        rejected=compacted.statuses["rejected"], failed_by_stage=dict(compacted.failed_stages),
        **{key: plan_counts[key] for key in ("input_problems", "plans_reused", "planned", "plan_failed", "shards")},
        **{key: render.counts[key] for key in ("rendered", "render_ok", "render_failed", "skipped_finished",
                                               "adopted", "reused_videos")},
        workers_used=len(render.workers), **{key: round(value, 2) for key, value in timings.items()},
        render_s_per_video=round(render.busy_s / max(rendered, 1), 3),
        wall_s_per_video=round(timings.get("render_s", 0.0) / max(rendered, 1), 3),
        manifest=str(compacted.path), gallery=gallery, export_index=export_index,
    )


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


def request_overrides(settings: dict | None = None, plan_settings: dict | None = None,
                      render_settings: dict | None = None, output_root: str | None = None,
                      fps_doublings: int | None = None) -> dict:
    """A deployment's parameters as one overrides dict (``plan_settings`` -> the director section)."""
    overrides = dict(settings or {})
    for section, values in (("director", plan_settings), ("render", render_settings)):
        if values:
            overrides = merge_settings(overrides, {section: values})
    if output_root:
        overrides["output_root"] = output_root
    if fps_doublings is not None:
        overrides["fps_doublings"] = fps_doublings
    return overrides
