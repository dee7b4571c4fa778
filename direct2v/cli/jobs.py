"""The job commands: ``plan``, ``render --plans``, ``run``, ``resume`` and ``dataset``, each one
``JobRequest`` for the one flow (``plan`` alone runs the director here, without Prefect)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from direct2v.cli.common import (
    ConfigOption,
    DoublingsOption,
    ExportOption,
    FpsOption,
    FramesOption,
    GalleryOption,
    ReuseOption,
    SamplesOption,
    SeedOption,
    SetOption,
    ShardOption,
    StrictOption,
    UserError,
    app,
    check_export,
    new_or_resumed,
    parse_overrides,
    resolve_settings,
    start_job,
)
from direct2v.core.config import load_settings
from direct2v.job.request import JobRequest


@app.command()
def plan(
    prompt_file: Annotated[Path, typer.Argument(help=".txt (one prompt per line), .jsonl or .csv (a header row with a prompt column)")],
    out: Annotated[Path, typer.Option(help="run directory to write plans/ into")],
    config: ConfigOption = None,
    sets: SetOption = None,
    frames: FramesOption = None,
    fps: FpsOption = None,
    seed: SeedOption = None,
    samples: SamplesOption = None,
    fps_doublings: DoublingsOption = None,
) -> None:
    """Plan frames for every prompt with the LLM director (vLLM), one batched call per round."""
    from direct2v.job.director_process import plan_prompt_file

    settings = resolve_settings(config, sets, frames=frames, fps=fps, seed=seed, samples=samples,
                                fps_doublings=fps_doublings)
    results, failures, report = plan_prompt_file(prompt_file, out, settings)
    if not results:
        raise UserError(f"{prompt_file}: no valid prompts to plan")
    warned = sum(bool(getattr(result, "warnings", None)) for result in results)
    typer.echo(f"planned {len(results) - len(failures)}/{len(results)} prompts ({len(results) - len(failures) - warned} "
               f"clean, {warned} accepted with quality warnings) -> {out / 'plans'}")
    typer.echo(
        f"first try: {report['usable_rate_first_try']:.0%} pass the hard rules, {report['valid_rate_first_try']:.0%} "
        f"break no rule; after repair: {report['accepted_rate_final']:.0%} accepted, {report['valid_rate_final']:.0%} "
        f"break no rule ({report['cached']} from cache); rules broken on the first try: {report['rule_rates_first_try']}"
    )
    for failure in failures:
        typer.echo(f"  failed {failure.prompt_id}: {failure.reason}", err=True)



@app.command()
def render(
    plans: Annotated[Path, typer.Option(help="directory of plan .json files (e.g. a run's plans/)")],
    out: Annotated[Path, typer.Option(help="run directory for videos/ and the manifest")],
    config: ConfigOption = None,
    sets: SetOption = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="continue the run in OUT: keep its videos finished for the same plan and settings")
    ] = False,
    gallery: GalleryOption = True,
) -> None:
    """Render plan files (LLM-made or hand-written) to MP4, without the LLM; exit 1 unless every plan made a video."""
    from direct2v.job.rundir import is_run_dir

    if is_run_dir(out) and not resume:
        raise UserError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
    overrides = parse_overrides(sets)
    new_or_resumed(config, out if is_run_dir(out) else None, overrides)
    summary = start_job(JobRequest(plans_dir=str(plans), run_dir=str(out), settings=overrides, verify_videos=True,
                                   gallery=gallery), strict=True)
    typer.echo(f"rendered {summary['render_ok']}/{summary['rendered']} plans, kept {summary['skipped_finished']} finished "
               "videos", err=True)



@app.command()
def run(
    prompt_file: Annotated[Path, typer.Argument(help=".txt (one prompt per line), .jsonl or .csv (a header row with a prompt column)")] = Path(
        "prompts_in/examples.txt"
    ),
    config: ConfigOption = None,
    sets: SetOption = None,
    frames: FramesOption = None,
    fps: FpsOption = None,
    seed: SeedOption = None,
    samples: SamplesOption = None,
    fps_doublings: DoublingsOption = None,
    shard_size: ShardOption = None,
    reuse_from: ReuseOption = None,
    strict: StrictOption = False,
    resume: Annotated[
        Optional[Path],
        typer.Option("--resume", metavar="RUN_DIR",
                     help="finish this earlier run in place: reuse its plans, keep its finished videos, redo the rest"),
    ] = None,
    gallery: GalleryOption = True,
    export: ExportOption = None,
) -> None:
    """The whole job under Prefect: plan (vLLM, own process) -> render -> MP4 -> manifest.

    The small-list preset of the one flow: renders on one thread and decodes every finished video
    before keeping it on a resume. ``direct2v dataset`` is the same flow with the options of large runs."""
    overrides = parse_overrides(sets, frames=frames, fps=fps, seed=seed, samples=samples,
                                fps_doublings=fps_doublings)
    new_or_resumed(config, resume, overrides)
    if resume is not None and not (resume / "settings.json").is_file():
        raise UserError(f"--resume {resume}: not a run directory (it has no settings.json)")
    start_job(JobRequest(prompt_file=str(prompt_file), run_dir=str(resume) if resume else None, settings=overrides,
                         shard_size=shard_size, reuse_from=reuse_from, verify_videos=True, gallery=gallery,
                         export=check_export(export)), strict)


DaskWorkersOption = Annotated[
    Optional[int], typer.Option(min=1, help="render on a local Dask cluster of N worker processes")
]
DaskAddressOption = Annotated[
    Optional[str], typer.Option(help="render on a running Dask scheduler, e.g. tcp://10.0.0.5:8786")
]
DaskCudaOption = Annotated[
    bool, typer.Option("--dask-cuda", help="one Dask worker per GPU (dask-cuda LocalCUDACluster; GPU hosts)")
]


@app.command()
def resume(
    run_dir: Annotated[Path, typer.Argument(help="an earlier run's directory, e.g. outputs/20260101-120000-abcdef")],
    sets: SetOption = None,
    dask_workers: DaskWorkersOption = None,
    dask_address: DaskAddressOption = None,
    dask_cuda: DaskCudaOption = False,
    strict: StrictOption = False,
    gallery: GalleryOption = True,
    export: ExportOption = None,
) -> None:
    """Finish an interrupted or partly failed run in place, with its own job (job.json) and settings
    (renders on one thread, or on Dask as ``dataset`` does: a cluster is not part of a run)."""
    if not (run_dir / "settings.json").is_file():
        raise UserError(f"{run_dir}: not a run directory (it has no settings.json)")
    start_job(JobRequest(run_dir=str(run_dir), settings=parse_overrides(sets), dask_address=dask_address,
                         dask_workers=dask_workers, dask_cluster="cuda" if dask_cuda else "local", gallery=gallery,
                         export=check_export(export)), strict)


@app.command()
def dataset(
    prompt_file: Annotated[
        Optional[Path], typer.Argument(help=".txt, .jsonl or .csv prompt list of any length (streamed in shards)")
    ] = None,
    plans: Annotated[
        Optional[Path], typer.Option("--plans", help="render these plan files instead of a prompt list (no director)")
    ] = None,
    config: ConfigOption = None,
    sets: SetOption = None,
    frames: FramesOption = None,
    fps: FpsOption = None,
    seed: SeedOption = None,
    samples: SamplesOption = None,
    fps_doublings: DoublingsOption = None,
    shard_size: ShardOption = None,
    run_id: Annotated[
        Optional[str], typer.Option("--run-id", help="run directory name under output_root; an existing one is resumed")
    ] = None,
    dask_workers: DaskWorkersOption = None,
    dask_address: DaskAddressOption = None,
    dask_cuda: DaskCudaOption = False,
    reuse_from: ReuseOption = None,
    verify_videos: Annotated[
        Optional[bool], typer.Option(help="on a resume, decode every finished MP4 before keeping it (slow for large runs)")
    ] = None,
    progress: Annotated[bool, typer.Option(help="progress bars on stderr")] = True,
    strict: StrictOption = False,
    gallery: GalleryOption = True,
    export: ExportOption = None,
) -> None:
    """Large prompt lists under Prefect: sharded planning, rendering fanned out (optionally on Dask),
    manifest parts compacted at the end; rerun with the same --run-id to resume."""
    from direct2v.job.rundir import check_run_id

    if (prompt_file is None) == (plans is None):
        raise UserError("give either a prompt file or --plans DIR")
    overrides = parse_overrides(sets, frames=frames, fps=fps, seed=seed, samples=samples,
                                fps_doublings=fps_doublings)
    settings = load_settings(config, **overrides)
    existing = Path(settings.output_root) / check_run_id(run_id) if run_id else None
    new_or_resumed(config, existing if existing and (existing / "settings.json").is_file() else None, overrides)
    start_job(JobRequest(prompt_file=str(prompt_file) if prompt_file else None, plans_dir=str(plans) if plans else None,
                         run_id=run_id, settings=overrides, shard_size=shard_size, reuse_from=reuse_from,
                         verify_videos=verify_videos, dask_address=dask_address, dask_workers=dask_workers,
                         dask_cluster="cuda" if dask_cuda else "local", progress=progress, gallery=gallery,
                         export=check_export(export)), strict)
