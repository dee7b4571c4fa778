"""Prefect flow: prompt file -> plans (director process) -> videos -> manifest.

Orchestration only; every step is a function of ``direct2v.run``.

    python -m flows.generate prompts_in/examples.txt      # or: direct2v run prompts_in/examples.txt

With no ``PREFECT_API_URL`` set, Prefect starts a temporary local server for the run (state under
``.state/prefect``, analytics off); point ``PREFECT_API_URL`` at a self-hosted server to keep
history (README "Running at scale").
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
    return records


@task(name="plan-prompts", retries=1, retry_delay_seconds=5)
def plan_prompts(records: list[PromptRecord], run_dir: Path, fps_doublings: int) -> list[FramePlan]:
    """All prompts in one director process; its failures become failed manifest rows."""
    records_file = stages.write_records(records, run_dir / "records.jsonl")
    stages.plan_in_subprocess(records_file, run_dir, fps_doublings)
    plans, failures = stages.load_plans(run_dir)
    by_id = {record.id: record for record in records}
    append_rows(run_dir, [stages.plan_failure_row(run_dir.name, f, by_id.get(f.prompt_id)) for f in failures])
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
def generate(prompt_file: str = "prompts_in/examples.txt", settings: dict | None = None, fps_doublings: int = 0) -> dict:
    """Make one video per prompt of ``prompt_file`` into a new ``outputs/<run-id>/``."""
    resolved = Settings.model_validate(settings) if settings else Settings()
    run_dir = stages.create_run_dir(resolved.output_root)
    stages.write_settings(resolved, run_dir)
    logger = get_run_logger()
    logger.info("run directory: %s", run_dir)
    timings = {}

    started = time.perf_counter()
    records = read_prompts(prompt_file, run_dir)
    plans = plan_prompts(records, run_dir, fps_doublings) if records else []
    timings["plan_s"] = round(time.perf_counter() - started, 2)

    started = time.perf_counter()
    sources = {record.id: record.source for record in records}
    futures = render_video.map(
        plans, unmapped(run_dir), unmapped(resolved.render), [sources.get(p.prompt_id, "") for p in plans]
    )
    futures.wait()
    timings["render_s"] = round(time.perf_counter() - started, 2)

    rows = stages.summarise(run_dir, compact(run_dir))
    summary = {"run_dir": str(run_dir), **rows, **timings}
    create_markdown_artifact(
        key="direct2v-run-summary",
        markdown=stages.summary_markdown(summary),
        description=f"DirecT2V run {run_dir.name}",
    )
    return summary


def main() -> None:
    prompt_file = sys.argv[1] if len(sys.argv) > 1 else "prompts_in/examples.txt"
    print(generate(prompt_file=prompt_file))


if __name__ == "__main__":
    main()
