"""The stages of a run as plain functions; the Prefect flows and the CLI only wire them.

Data flows one way: prompt file -> records -> plans (director subprocess) -> frames -> MP4 ->
manifest rows. A run directory looks like::

    outputs/<run-id>/
        settings.json        the resolved settings of the run
        records.jsonl        the validated prompt records (itself a valid prompt file)
        plans/<id>.json      one validated frame plan per prompt (editable, re-renderable)
        plan_failures.jsonl  prompts the director could not plan, with the reason
        videos/<id>.mp4      one video per planned prompt
        manifest.jsonl       the journal of manifest rows
        manifest.parquet     the manifest, one row per prompt
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from .config import Settings
from .encode import EncodeError, encode_mp4
from .manifest import ManifestRow
from .plan import FramePlan, PlanFailure, PlanFileError, read_plan
from .prompts import PromptProblem, PromptRecord, read_prompt_file

log = logging.getLogger(__name__)

PLANS_DIR = "plans"
VIDEOS_DIR = "videos"
PLAN_FAILURES = "plan_failures.jsonl"


def new_run_id() -> str:
    """Sortable and unique: UTC time plus a random suffix."""
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def create_run_dir(output_root: Path, run_id: str | None = None) -> Path:
    """A fresh run directory; an existing one is never reused, so earlier runs are never clobbered."""
    run_dir = Path(output_root) / (run_id or new_run_id())
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_dir


def split_prompt_file(path: Path) -> tuple[list[PromptRecord], list[PromptProblem]]:
    records, problems = [], []
    for item in read_prompt_file(path):
        (records if isinstance(item, PromptRecord) else problems).append(item)
    return records, problems


def problem_row(run_id: str, problem: PromptProblem, index: int) -> ManifestRow:
    """A prompt line that could not be read still gets a (failed) manifest row."""
    line = problem.source.rsplit(":", 1)[-1]
    return ManifestRow(
        run_id=run_id,
        prompt_id=f"invalid-line-{line}" if line.isdigit() else f"invalid-{index}",
        prompt=problem.prompt,
        source=problem.source,
        status="failed",
        failed_stage="input",
        error=problem.message,
    )


def write_records(records: list[PromptRecord], path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as stream:
        for record in records:
            stream.write(record.model_dump_json(exclude_none=True) + "\n")
    return path


def plan_in_subprocess(records_file: Path, run_dir: Path, fps_doublings: int = 0) -> None:
    """Run the director as its own process (vLLM must not share a process with the renderer).

    The child reads the run's resolved ``settings.json``, so it plans with exactly the settings
    of the run, whatever overrides the parent had.
    """
    command = [
        sys.executable, "-m", "direct2v", "plan", str(records_file),
        "--out", str(run_dir), "--settings", str(Path(run_dir) / "settings.json"),
    ]
    if fps_doublings:
        command += ["--fps-doublings", str(fps_doublings)]
    log.info("starting the director: %s", " ".join(command))
    # The child's own report goes to stderr: stdout belongs to the caller's result (the run summary).
    completed = subprocess.run(command, env=os.environ.copy(), stdout=sys.stderr, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"the director process failed with exit code {completed.returncode}")


def load_plans(run_dir: Path) -> tuple[list[FramePlan], list[PlanFailure]]:
    """Plans (validated again on reading) and the director's recorded failures."""
    plans, failures = [], []
    for path in sorted((Path(run_dir) / PLANS_DIR).glob("*.json")):
        try:
            plans.append(read_plan(path))
        except PlanFileError as error:
            failures.append(PlanFailure(prompt_id=path.stem, prompt="", reason=str(error)))
    failures_file = Path(run_dir) / PLAN_FAILURES
    if failures_file.exists():
        for line in failures_file.read_text(encoding="utf-8").splitlines():
            if line.strip():
                failures.append(PlanFailure.model_validate_json(line))
    return plans, failures


def write_plan_failures(failures: list[PlanFailure], run_dir: Path) -> None:
    with open(Path(run_dir) / PLAN_FAILURES, "a", encoding="utf-8") as stream:
        for failure in failures:
            stream.write(failure.model_dump_json() + "\n")


def plan_failure_row(run_id: str, failure: PlanFailure, record: PromptRecord | None) -> ManifestRow:
    return ManifestRow(
        run_id=run_id,
        prompt_id=failure.prompt_id,
        prompt=failure.prompt or (record.prompt if record else None),
        source=record.source if record else "",
        status="failed",
        failed_stage="plan",
        error=failure.reason,
    )


def failed_row(run_id: str, plan: FramePlan, stage: str, error: str, source: str = "") -> ManifestRow:
    return ManifestRow(
        run_id=run_id, prompt_id=plan.prompt_id, prompt=plan.prompt, source=source, frame_prompts=plan.frames,
        fps=plan.fps, seed=plan.seed, status="failed", failed_stage=stage, error=error,
    )


def render_plan(plan: FramePlan, run_dir: Path, renderer, source: str = "") -> ManifestRow:
    """Render and encode one plan; any failure becomes a failed row, never an exception."""
    from .render import RenderError  # torch-heavy: imported only where rendering happens

    run_dir = Path(run_dir)
    row = dict(
        run_id=run_dir.name,
        prompt_id=plan.prompt_id,
        prompt=plan.prompt,
        source=source,
        frame_prompts=plan.frames,
        fps=plan.fps,
        seed=plan.seed,
        director_model=plan.director_model,
        template_version=plan.template_version,
        render_model=renderer.model_id,
        plan_path=f"{PLANS_DIR}/{plan.prompt_id}.json",
    )
    started = time.perf_counter()
    try:
        frames = renderer.render(plan)
    except (RenderError, ValueError, RuntimeError) as error:
        log.error("render failed for %s: %s", plan.prompt_id, error)
        return ManifestRow(**row, status="failed", failed_stage="render", error=str(error),
                           render_s=time.perf_counter() - started)
    rendered = time.perf_counter()
    video_rel = f"{VIDEOS_DIR}/{plan.prompt_id}.mp4"
    try:
        video = encode_mp4(frames, run_dir / video_rel, fps=plan.fps)
    except (EncodeError, ValueError) as error:
        log.error("encoding failed for %s: %s", plan.prompt_id, error)
        return ManifestRow(**row, status="failed", failed_stage="encode", error=str(error),
                           render_s=rendered - started, encode_s=time.perf_counter() - rendered)
    return ManifestRow(
        **row,
        status="ok",
        frame_count=video.frame_count,
        video_path=video_rel,
        render_s=rendered - started,
        encode_s=time.perf_counter() - rendered,
    )


def write_settings(settings: Settings, run_dir: Path) -> None:
    (Path(run_dir) / "settings.json").write_text(
        json.dumps(settings.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8"
    )


def summarise(run_dir: Path, manifest_path: Path) -> dict:
    """Counts of the finished run, read back from its manifest."""
    from .manifest import read_manifest

    statuses = read_manifest(manifest_path).column("status").to_pylist()
    return {
        "total": len(statuses),
        "ok": statuses.count("ok"),
        "failed": len(statuses) - statuses.count("ok"),
        "manifest": str(manifest_path),
    }


def summary_markdown(summary: dict) -> str:
    """A small Markdown table for the run's Prefect artifact (numbers and paths only)."""
    lines = ["| what | value |", "| --- | --- |"]
    lines += [f"| {key} | {value} |" for key, value in summary.items()]
    return "\n".join(lines)
