"""The commands over finished runs: ``eval``, ``review``, ``export`` and ``compare``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from direct2v.cli.common import ClipOption, ConfigOption, SetOption, UserError, app, resolve_settings
from direct2v.core.config import Settings

log = logging.getLogger("direct2v")


def _eval_settings(config: Path | None, sets: list[str] | None, clip_model: Path | None) -> Settings:
    settings = resolve_settings(config, sets)
    if clip_model is not None:
        settings = settings.model_copy(update={"eval": settings.eval.model_copy(update={"clip_model_dir": clip_model})})
    return settings


@app.command("eval")
def eval_(
    run_dir: Annotated[Path, typer.Argument(help="a run directory (with manifest.jsonl or manifest.parquet)")],
    clip_model: ClipOption = None,
    config: ConfigOption = None,
    sets: SetOption = None,
    force: Annotated[bool, typer.Option(help="recompute metrics already stored for the same CLIP model")] = False,
    review: Annotated[bool, typer.Option(help="also write contact sheets and index.html")] = True,
) -> None:
    """CLIP scores per frame, Avg. Dist., consistency, flicker -> manifest columns; QC; Table-1 summary."""
    from direct2v.evaluation.evaluate import evaluate_run
    from direct2v.job.rundir import EVALUATION_MD
    from direct2v.publish.gallery import write_review

    settings = _eval_settings(config, sets, clip_model)
    if settings.eval.clip_model_dir is None:
        log.warning("no CLIP model (eval.clip_model_dir / --clip-model): only the flicker score is computed")
    result = evaluate_run(run_dir, settings.eval, force=force, progress=lambda pid: log.info("evaluating %s", pid))
    typer.echo(result.markdown())
    typer.echo(f"manifest: {result.manifest}; summary: {run_dir / EVALUATION_MD}")
    if review:
        typer.echo(f"gallery: {write_review(run_dir)}")


@app.command()
def review(
    run_dir: Annotated[Path, typer.Argument(help="a run directory")],
) -> None:
    """Contact sheet PNG per video (review/<id>.png) and a static index.html for the run."""
    from direct2v.publish.gallery import write_review

    typer.echo(f"gallery: {write_review(run_dir)}")  # a ManifestError says it is not a run directory


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="a run directory")],
    format: Annotated[str, typer.Option("--format", help="webdataset (tar shards) or hf (Hugging Face datasets)")] = "webdataset",
    out: Annotated[Optional[Path], typer.Option(help="where the dataset goes (default: RUN_DIR/export/FORMAT)")] = None,
    max_samples: Annotated[int, typer.Option(min=1, help="most samples per shard (per Parquet file for hf)")] = 1000,
    max_bytes: Annotated[int, typer.Option(min=1, help="most bytes per tar shard (a larger video gets one of its own)")] = 1 << 30,
    include_rejected: Annotated[bool, typer.Option(help="also export videos QC marked rejected")] = False,
) -> None:
    """The run's finished videos as a training dataset: WebDataset shards or a Hugging Face datasets directory."""
    from direct2v.publish.export import export_run

    result = export_run(run_dir, out or Path(run_dir) / "export" / format, format, max_samples, max_bytes,
                        include_rejected, progress=sys.stderr.isatty())
    left_out = ", ".join(f"{count} {reason}" for reason, count in result.skipped.items() if count) or "nothing"
    typer.echo(f"exported {result.samples} videos as {result.format} into {result.out_dir} ({len(result.files)} files, "
               f"{result.kept} kept from an earlier export; left out: {left_out}); index: {result.index}")


@app.command()
def compare(
    plans: Annotated[Path, typer.Option(help="directory of plan .json files")],
    out: Annotated[Path, typer.Option(help="directory for one run directory per variant")],
    variants: Annotated[
        str, typer.Option(help="comma-separated: t2v-z (user prompt only), t2v-z-frames, rvm, rvm-dsf")
    ] = "t2v-z,t2v-z-frames,rvm,rvm-dsf",
    clip_model: ClipOption = None,
    metric: Annotated[
        str, typer.Option(help="clip (CLIP similarity to the frame prompts) or shapes (the shape world's exact detectors)")
    ] = "clip",
    config: ConfigOption = None,
    sets: SetOption = None,
) -> None:
    """Render the same plans with T2V-Z, RVM and RVM+DSF; print the paper's Table-1 comparison."""
    from direct2v.evaluation.compare import compare as compare_variants
    from direct2v.job.planning import read_plan_files, token_budget
    from direct2v.publish.gallery import write_review

    settings = _eval_settings(config, sets, clip_model)
    paths = sorted(Path(plans).glob("*.json")) if Path(plans).is_dir() else []
    if not paths:
        raise UserError(f"{plans}: no plan .json files found")
    valid, bad_rows = read_plan_files(paths, out.name, token_budget(settings), set())
    if not valid:
        raise UserError(f"{plans}: no valid plans")
    names = [name.strip() for name in variants.split(",") if name.strip()]
    table, results = compare_variants([plan for plan, _ in valid], out, settings, names, echo=typer.echo,
                                      bad_rows=bad_rows, metric=metric)
    for name in results:
        write_review(out / name)
    typer.echo(table)
    typer.echo(f"comparison: {out / 'comparison.md'}; galleries: {out}/<variant>/index.html")

