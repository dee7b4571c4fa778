"""What every command shares: the Typer apps, the options, ``--set`` parsing, and the one way a
command runs a job (``start_job``: check, then run the flow by its entrypoint)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from direct2v.core.config import Settings, load_settings
from direct2v.core.errors import Direct2VError
from direct2v.job.request import JobRequest

#: The flow every job runs, named as prefect.yaml names its deployments' flows, and loaded the way a
#: Prefect worker loads it: the library never imports ``flows`` (it sits above the library).
GENERATE_ENTRYPOINT = "flows.generate:generate"

app = typer.Typer(add_completion=False, no_args_is_help=True, help="DirecT2V: prompt lists -> videos, offline.")
models_app = typer.Typer(no_args_is_help=True, help="Build or inspect the local models.")
app.add_typer(models_app, name="models")

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
ClipOption = Annotated[
    Optional[Path],
    typer.Option("--clip-model", help="local Hugging Face CLIP directory (default: eval.clip_model_dir)"),
]


class UserError(Direct2VError):
    """A mistake in the command line itself."""


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


def resolve_settings(config: Path | None, sets: list[str] | None, **flags: Any) -> Settings:
    return load_settings(config, **parse_overrides(sets, **flags))



def check_export(export: str | None) -> str | None:
    from direct2v.job.request import EXPORT_FORMATS

    if export is not None and export not in EXPORT_FORMATS:
        raise UserError(f"--export {export}: unknown format; choose one of {', '.join(EXPORT_FORMATS)}")
    return export


def new_or_resumed(config: Path | None, resume_dir: Path | None, overrides: dict) -> None:
    """A new run takes ``--config``; a resumed one continues with its own settings.json."""
    if resume_dir is None:
        load_settings(config, **overrides)  # a bad value is reported here, naming its key
    elif config is not None:
        raise UserError(f"{resume_dir} continues with its own settings.json; change a setting with --set KEY=VALUE, "
                        "not --config")


def load_generate_flow():
    """The flow of ``GENERATE_ENTRYPOINT``, with Prefect's environment set up before Prefect loads."""
    from direct2v.core.environment import configure_prefect_environment

    configure_prefect_environment()
    from prefect.flows import load_flow_from_entrypoint

    return load_flow_from_entrypoint(GENERATE_ENTRYPOINT, use_placeholder_flow=False)


def start_job(request: JobRequest, strict: bool) -> dict:
    """The one way every command runs a job: resolve and check what can be checked before Prefect
    or any model starts, then run the flow with the request pinned to its run, and print the summary."""
    from direct2v.job.request import check_job, resolve_run
    from direct2v.job.summary import outcome_line

    run = resolve_run(request)
    check_job(run)
    summary = load_generate_flow()(request.pinned(run))
    typer.echo(json.dumps(summary, indent=2))
    typer.echo(outcome_line(summary), err=True)
    if summary.get("gallery"):
        typer.echo(f"gallery: {summary['gallery']}", err=True)
    if summary.get("export_index"):
        typer.echo(f"export: {summary['export_index']}", err=True)
    if not summary["ok"] or (strict and summary["failed"]):
        raise typer.Exit(1)
    return summary
