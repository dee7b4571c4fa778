"""Prefect flow: evaluate a finished run (metrics, QC, Table-1 summary) and publish its review page.

Orchestration only; the work is ``direct2v.evaluation.evaluate.evaluate_run`` and ``direct2v.publish.gallery.write_review``.

    python -m flows.evaluate outputs/<run-id>          # or: direct2v eval outputs/<run-id>

The flow leaves three artifacts on its run: the evaluation summary (Markdown, Table-1 layout), a
table of the videos with their metrics, status and contact sheet, and a link to ``index.html``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from direct2v.core.environment import configure_prefect_environment

configure_prefect_environment()

from prefect import flow, get_run_logger  # noqa: E402  (environment first)
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact  # noqa: E402

from direct2v.core.config import Settings  # noqa: E402
from direct2v.evaluation.evaluate import evaluate_run as evaluate_run_dir  # noqa: E402
from direct2v.publish.gallery import REVIEW_DIR, write_review  # noqa: E402


def _artifact_key(run_dir: Path) -> str:
    # artifact keys: lowercase letters, digits and dashes only
    return "direct2v-eval-" + "".join(c if c.isalnum() else "-" for c in run_dir.name.lower())


@flow(name="direct2v-evaluate", log_prints=True)
def evaluate_run(run_dir: str, settings: dict | None = None, force: bool = False) -> dict:
    """Evaluate ``run_dir`` with ``settings['eval']`` (CLIP model, QC thresholds); returns the summary."""
    resolved = Settings.model_validate(settings) if settings else Settings()
    path = Path(run_dir).resolve()
    logger = get_run_logger()
    result = evaluate_run_dir(path, resolved.eval, force=force, progress=lambda pid: logger.info("evaluating %s", pid))
    index = write_review(path)
    key = _artifact_key(path)
    create_markdown_artifact(key=key, markdown=result.markdown(), description=f"DirecT2V evaluation of {path.name}")
    create_table_artifact(
        key=key + "-videos",
        table=[
            {
                "prompt_id": row.prompt_id,
                "status": row.status,
                "qc_reason": row.qc_reason,
                "clip_frame": row.clip_frame,
                "avg_dist": row.avg_dist,
                "consistency": row.consistency,
                "flicker": row.flicker,
                "contact_sheet": (path / REVIEW_DIR / f"{row.prompt_id}.png").as_uri() if row.video_path else "",
            }
            for row in result.rows
        ],
        description=f"videos of {path.name}",
    )
    create_link_artifact(key=key + "-gallery", link=index.as_uri(), link_text=f"{path.name} gallery",
                         description="static review page (open in a browser on this machine)")
    return {"run_dir": str(path), "index": str(index), **result.summary}


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m flows.evaluate RUN_DIR")
    print(evaluate_run(sys.argv[1]))


if __name__ == "__main__":
    main()
