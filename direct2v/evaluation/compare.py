"""``direct2v compare``: the same plans rendered with Text2Video-Zero, RVM and RVM+DSF, each
variant evaluated like a run and tabulated side by side in the paper's Table-1 layout.

Two metrics: ``clip`` (``evaluate.evaluate_run``: CLIP similarity of each frame to its frame
prompt) and ``shapes`` (the shape world's exact detectors, ``shapes.video_scores``: adherence,
identity consistency, count errors and flicker of the MP4s as written, against the frame prompts'
words), for plans whose frames describe shape-world scenes."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from pathlib import Path

from direct2v.core.config import Settings
from direct2v.core.files import write_atomically
from direct2v.evaluation import metrics, shapes
from direct2v.evaluation.evaluate import ClipModel, EvalError, RunEvaluation, evaluate_run
from direct2v.job.manifest import ManifestRow, append_rows, compact
from direct2v.job.rundir import PLANS_DIR, record_run

#: name -> (render overrides, render every frame from the user prompt). ``m`` is the RVM period.
VARIANTS: dict[str, tuple[dict, bool]] = {
    # Text2Video-Zero as it is used without a director: the user prompt for every frame, attention to frame 1.
    "t2v-z": ({"rvm_period": math.inf, "dsf": False}, True),
    # Text2Video-Zero's attention on the director's per-frame prompts: the T2V-Z column of Table 1.
    "t2v-z-frames": ({"rvm_period": math.inf, "dsf": False}, False),
    "rvm": ({"rvm_period": "m", "dsf": False}, False),
    "rvm-dsf": ({"rvm_period": "m", "dsf": True}, False),
}
DEFAULT_VARIANTS = tuple(VARIANTS)


def variant_settings(base, name: str):
    """The base RenderSettings with a variant's attention; RVM uses the base period (4 if it is inf)."""
    overrides, _ = VARIANTS[name]
    period = base.rvm_period if math.isfinite(base.rvm_period) else 4
    values = {key: (period if value == "m" else value) for key, value in overrides.items()}
    return base.model_validate({**base.model_dump(), **values})


def compare(
    plans: Sequence,
    out_dir: Path,
    settings: Settings,
    variants: Sequence[str] = DEFAULT_VARIANTS,
    clip: ClipModel | None = None,
    echo: Callable[[str], None] = print,
    bad_rows: Sequence[ManifestRow] = (),
    metric: str = "clip",
) -> tuple[str, dict]:
    """Render ``plans`` once per variant into ``out_dir/<variant>/`` and evaluate each against the
    plans' frame prompts with ``metric`` (``clip`` or ``shapes``); returns the side-by-side Markdown
    table (also ``out_dir/comparison.md``) and per variant its ``RunEvaluation`` (clip) or its
    measures' (mean, std) over the videos (shapes).
    ``bad_rows`` (plan files that could not be read, ``planning.read_plan_files``) are recorded in
    every variant's manifest.

    One pipeline is loaded and shared: the variants differ only in per-call arguments.
    """
    from direct2v.director.plan import write_plan
    from direct2v.job.rundir import Job
    from direct2v.job.videos import render_plan
    from direct2v.render.encode import read_video
    from direct2v.render.renderer import Renderer

    unknown = [name for name in variants if name not in VARIANTS]
    if unknown:
        raise EvalError(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    if metric not in ("clip", "shapes"):
        raise EvalError(f"unknown metric {metric!r}; choose clip or shapes")
    if metric == "clip" and clip is None and settings.eval.clip_model_dir is not None:
        clip = ClipModel(settings.eval.clip_model_dir, settings.eval.device, settings.eval.batch_size)
    if metric == "clip" and clip is None:
        raise EvalError("compare needs a CLIP model: set eval.clip_model_dir (or --clip-model), or use --metric shapes")
    out_dir = Path(out_dir)
    base = Renderer(settings.render)
    targets = {plan.prompt_id: list(plan.frames) for plan in plans}
    results: dict = {}
    for name in variants:
        run_dir = out_dir / name
        run_dir.mkdir(parents=True, exist_ok=True)
        renderer = copy.copy(base)
        renderer.settings = variant_settings(settings.render, name)
        # each variant directory is a complete run directory (``direct2v resume`` can continue it)
        record_run(run_dir, Job(plans_dir=str((run_dir / PLANS_DIR).resolve())),
                   settings.model_copy(update={"render": renderer.settings}))
        append_rows(run_dir, [row.model_copy(update={"run_id": run_dir.name}) for row in bad_rows])
        one_prompt = VARIANTS[name][1]
        shape_scores = []
        for plan in plans:
            rendered = plan.model_copy(update={"frames": [plan.prompt] * len(plan.frames)}) if one_prompt else plan
            write_plan(rendered, run_dir / PLANS_DIR)
            row = render_plan(rendered, run_dir, renderer)
            append_rows(run_dir, [row])
            echo(f"{name}: {plan.prompt_id}: {row.status} {row.error}".rstrip())
            if metric == "shapes" and row.status == "ok":
                frames = read_video(run_dir / row.video_path)
                shape_scores.append(shapes.video_scores(frames, targets[plan.prompt_id]))
        compact(run_dir)
        if metric == "shapes":
            results[name] = shapes.summarise(shape_scores)
        else:
            results[name] = evaluate_run(run_dir, settings.eval, clip=clip, targets=targets, force=True)
    table = shapes_markdown(results) if metric == "shapes" else comparison_markdown(results)
    write_atomically(out_dir / "comparison.md", table + "\n")
    return table, results


def comparison_markdown(results: dict[str, RunEvaluation]) -> str:
    columns = {name: result.table for name, result in results.items()}
    extra = ["", "| | " + " | ".join(results) + " |", "|---" * (len(results) + 1) + "|"]
    for key in ("consistency", "flicker", "clip_prompt"):
        cells = [result.summary.get(key) for result in results.values()]
        extra.append(f"| {key} | " + " | ".join("" if c is None else f"{c:.4f}" for c in cells) + " |")
    return (
        "CLIP similarity of each frame to its frame prompt (paper Table 1 layout); "
        "t2v-z renders every frame from the user prompt but is scored against the frame prompts.\n\n"
        + metrics.markdown_table(columns) + "\n" + "\n".join(extra)
    )


def shapes_markdown(results: dict[str, dict[str, tuple[float, float]]]) -> str:
    """The shape-world measures per variant (mean ± std over videos), one column per variant."""
    lines = ["| measure | " + " | ".join(results) + " |", "|---" * (len(results) + 1) + "|"]
    for key in shapes.VIDEO_MEASURES:
        cells = [f"{summary[key][0]:.3f} ± {summary[key][1]:.3f}" if key in summary else "" for summary in results.values()]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return (
        "Shape-world detectors on each variant's MP4s against the frame prompts (mean ± std over videos; "
        "adherence and colour: higher is better, count_errors and flicker: lower); t2v-z renders every "
        "frame from the user prompt but is scored against the frame prompts.\n\n" + "\n".join(lines)
    )
