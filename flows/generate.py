"""Prefect flow: prompt file -> plans (director process) -> videos -> manifest.

Orchestration only; every step is a function of ``direct2v.run``.

    python -m flows.generate prompts_in/examples.txt      # or: direct2v run prompts_in/examples.txt

With no ``PREFECT_API_URL`` set, Prefect starts a temporary local server for the run (state under
``.state/prefect``, analytics off); point ``PREFECT_API_URL`` at a self-hosted server to keep
history (README "Running at scale").

``resume_dir`` continues an earlier run in its own directory (README "Operations"): plans still on
disk are reused and finished videos are not rendered again.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from direct2v.orchestration import configure_prefect_environment

configure_prefect_environment()

from prefect import flow, get_run_logger, task, unmapped  # noqa: E402  (environment first)
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

from direct2v import run as stages  # noqa: E402
from direct2v.config import RenderSettings, Settings  # noqa: E402
from direct2v.manifest import ManifestRow, append_rows, compact  # noqa: E402
from direct2v.plan import FramePlan  # noqa: E402
from direct2v.prompts import PromptRecord  # noqa: E402


@task(name="read-prompts")
def read_prompts(prompt_file: str, run_dir: Path) -> list[PromptRecord]:
    """Parse the prompt file; unreadable lines become failed manifest rows right away."""
    records, problems = stages.split_prompt_file(Path(prompt_file))
    logger = get_run_logger()
    for problem in problems:
        logger.error("%s", problem)
    append_rows(run_dir, [stages.problem_row(run_dir.name, p, i) for i, p in enumerate(problems)])
    stages.write_records(records, run_dir / stages.RECORDS)
    if not records:
        logger.error("%s: no valid prompts", prompt_file)
    return records


@task(name="plan-prompts")
def plan_prompts(records: list[PromptRecord], run_dir: Path, settings: Settings, fps_doublings: int) -> list[FramePlan]:
    """The prompts without a usable plan, in one director process; whatever it could not plan
    (also everything, if the process dies) becomes failed manifest rows: the run goes on."""
    plans, failed = stages.plan_records(records, run_dir, settings, fps_doublings)
    logger = get_run_logger()
    for row in failed:
        logger.error("%s (%s): planning failed: %s", row.prompt_id, row.source, row.error)
    append_rows(run_dir, failed)
    return plans


@task(name="render-video", task_run_name="render-{plan.prompt_id}")
def render_video(plan: FramePlan, run_dir: Path, render_settings: RenderSettings, source: str) -> ManifestRow:
    from direct2v.render import cached_renderer

    try:
        renderer = cached_renderer(render_settings)
    except (OSError, ValueError, RuntimeError) as error:  # a missing or broken model directory
        row = stages.failed_row(run_dir.name, plan, "render", f"cannot load the renderer: {error}", source)
    else:
        row = stages.render_plan(plan, run_dir, renderer, source)
    append_rows(run_dir, [row])
    return row


@flow(name="direct2v-generate", task_runner=ThreadPoolTaskRunner(max_workers=1), log_prints=True)
def generate(
    prompt_file: str = "prompts_in/examples.txt",
    settings: dict | None = None,
    fps_doublings: int = 0,
    resume_dir: str | None = None,
) -> dict:
    """Make one video per prompt of ``prompt_file`` into a new ``outputs/<run-id>/``, or finish
    the run in ``resume_dir``."""
    if settings:
        resolved = Settings.model_validate(settings)
    else:  # a resumed run keeps its own settings
        resolved = stages.resume_settings(Path(resume_dir), {}) if resume_dir else Settings()
    run_dir = stages.check_resumable(resume_dir) if resume_dir else stages.create_run_dir(resolved.output_root)
    with stages.run_dir_lock(run_dir), stages.run_log(run_dir):
        stages.prepare_run_dir(resolved, Path(prompt_file), fps_doublings, run_dir, resumed=bool(resume_dir))
        logger = get_run_logger()
        logger.info("%s run directory: %s", "resuming the" if resume_dir else "new", run_dir)
        timings = {}

        started = time.perf_counter()
        records = read_prompts(prompt_file, run_dir)
        plans, to_plan = stages.reusable_plans(records, run_dir, resolved, fps_doublings)
        reused_plans = len(plans)
        if to_plan:
            plans += plan_prompts(to_plan, run_dir, resolved, fps_doublings)
        order = {record.id: index for index, record in enumerate(records)}
        plans.sort(key=lambda plan: order[plan.prompt_id])
        timings["plan_s"] = round(time.perf_counter() - started, 2)

        started = time.perf_counter()
        sources = {record.id: record.source for record in records}
        todo, finished = stages.split_finished(plans, run_dir, resolved.render, sources)
        futures = render_video.map(
            todo, unmapped(run_dir), unmapped(resolved.render), [sources.get(p.prompt_id, "") for p in todo]
        )
        futures.wait()
        timings["render_s"] = round(time.perf_counter() - started, 2)

        manifest = compact(run_dir)
        rows = stages.summarise(run_dir, manifest)
        summary = {
            "run_dir": str(run_dir), **rows, "reused_plans": reused_plans,
            "skipped_videos": len(finished), **timings,
        }
        create_markdown_artifact(
            key="direct2v-run-summary",
            markdown=stages.summary_markdown(summary, stages.failed_rows(manifest)),
            description=f"DirecT2V run {run_dir.name}",
        )
        return summary


def main() -> None:
    prompt_file = sys.argv[1] if len(sys.argv) > 1 else "prompts_in/examples.txt"
    print(generate(prompt_file=prompt_file))


if __name__ == "__main__":
    main()
