"""What every command shares: the Typer apps, the options, ``--set`` parsing, ``--debug``, and the
one way a command runs a job (``start_job``: check, then run the flow by its entrypoint)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from direct2v.core.config import Settings, load_settings
from direct2v.core.errors import Direct2VError
from direct2v.core.files import DiskFullError
from direct2v.job.request import EXPORT_FORMATS, JobRequest

#: The flow every job runs, named as prefect.yaml names its deployments' flows, and loaded the way a
#: Prefect worker loads it: the library never imports ``flows`` (it sits above the library).
GENERATE_ENTRYPOINT = "flows.generate:generate"

app = typer.Typer(add_completion=False, no_args_is_help=True, help="DirecT2V: prompt lists -> videos, offline.")
models_app = typer.Typer(no_args_is_help=True, help="Build or inspect the local models.")
app.add_typer(models_app, name="models")

#: Set (to anything but 0) for tracebacks on the console, as ``--debug`` does.
DEBUG_VARIABLE = "DIRECT2V_DEBUG"


def debugging() -> bool:
    return os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


@app.callback()
def options(
    debug: Annotated[bool, typer.Option("--debug", help=f"print the traceback of an unexpected error, and every "
                                        f"traceback a log line carries ({DEBUG_VARIABLE}=1 does the same)")] = False,
) -> None:
    """DirecT2V: prompt lists -> videos, offline."""
    if debug:
        os.environ[DEBUG_VARIABLE] = "1"


class ConsoleWithoutTracebacks(logging.Formatter):
    """A console handler's formatter, less the tracebacks its log lines carry (Prefect logs one for
    every failed task and flow): the console gets the line, ``run.log`` keeps the traceback, and
    ``--debug`` shows it here too."""

    def __init__(self, inner: logging.Formatter | None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        if debugging() or not (record.exc_info or record.exc_text or record.stack_info):
            return self.inner.format(record)
        kept = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None  # (the record is shared: put back below)
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = kept


def console_without_tracebacks() -> None:
    """Give every console handler of the root logger a ``ConsoleWithoutTracebacks`` formatter."""
    for handler in logging.getLogger().handlers:
        console = isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
        if console and not isinstance(handler.formatter, ConsoleWithoutTracebacks):
            handler.setFormatter(ConsoleWithoutTracebacks(handler.formatter))

ConfigOption = Annotated[Optional[Path], typer.Option("--config", help="TOML settings file")]
SetOption = Annotated[
    Optional[list[str]], typer.Option("--set", help="override a setting: KEY=VALUE, e.g. render.num_inference_steps=20")
]
FramesOption = Annotated[Optional[int], typer.Option(help="frames per video (default from settings: 8)")]
FpsOption = Annotated[Optional[int], typer.Option(help="frame rate given to the director and the MP4")]
SeedOption = Annotated[Optional[int], typer.Option(help="seed for prompts without their own")]
SamplesOption = Annotated[Optional[int], typer.Option(
    help="videos per prompt without its own samples (default from settings: 1): a plan and a video each, ids "
    "<prompt id>-s<k>; on a resume, raising it adds the missing samples only")]
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


class PrefectServerError(Direct2VError):
    """``PREFECT_API_URL`` names a server that does not answer."""


class JobCrashed(Exception):
    """A job ended on an exception of no kind we know (a bug, its ``__cause__``), in ``run_dir``."""

    def __init__(self, run_dir: Path):
        super().__init__(str(run_dir))
        self.run_dir = Path(run_dir)


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
    """The flow of ``GENERATE_ENTRYPOINT``, with Prefect's environment set up before Prefect loads
    (and its console handler, which Prefect installs as it loads, without tracebacks)."""
    from direct2v.core.environment import configure_prefect_environment

    configure_prefect_environment()
    from prefect.flows import load_flow_from_entrypoint

    flow = load_flow_from_entrypoint(GENERATE_ENTRYPOINT, use_placeholder_flow=False)
    console_without_tracebacks()
    return flow


def check_prefect_server() -> None:
    """With ``PREFECT_API_URL`` set (in the environment or a Prefect profile), its server must
    answer ``GET <url>/health`` before anything starts: Prefect finds out only once the run has
    begun, with hundreds of lines of traceback. Without it, the flow starts a temporary server."""
    from direct2v.core.environment import configure_prefect_environment, prefect_api_problem

    configure_prefect_environment()
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    reason = prefect_api_problem(url) if url else ""
    if reason:
        raise PrefectServerError(f"the Prefect server at {url} (PREFECT_API_URL) does not answer ({reason}); start it "
                                 "(prefect server start), or unset PREFECT_API_URL to run on a temporary local server")


def start_job(request: JobRequest, strict: bool) -> dict:
    """The one way every command runs a job: resolve and check what can be checked before Prefect
    or any model starts, then run the flow with the request pinned to its run, and print the summary.

    Exit codes: 0 done, 1 videos failed (or a skipped export, or a bug: ``JobCrashed``), 2 a
    ``Direct2VError``, 3 a full disk (``DiskFullError``, naming the resume command)."""
    from direct2v.job.request import check_job, resolve_run
    from direct2v.job.summary import outcome_line

    check_prefect_server()
    run = resolve_run(request)
    check_job(run)
    try:
        summary = load_generate_flow()(request.pinned(run))
    except DiskFullError as error:
        from direct2v.job.rundir import is_recorded

        error.run_dir = run.dir if is_recorded(run.dir) else None  # (else: the same command again)
        raise
    except Direct2VError:
        raise
    except Exception as error:
        raise JobCrashed(run.dir) from error
    typer.echo(json.dumps(summary, indent=2))
    typer.echo(outcome_line(summary), err=True)
    if summary.get("gallery"):
        typer.echo(f"gallery: {summary['gallery']}", err=True)
    if summary.get("export_index"):
        typer.echo(f"export: {summary['export_index']}", err=True)
    for step, reason in summary.get("skipped", {}).items():
        if not reason.startswith("disk full"):  # (the last line says that one)
            typer.echo(f"{step} skipped: {reason}", err=True)
    if summary.get("disk_full"):  # the videos are done; the gallery or export needs space
        raise DiskFullError(summary["disk_full"], run_dir=run.dir)
    if not summary["ok"] or (strict and summary["failed"]) or "export" in summary.get("skipped", {}):
        raise typer.Exit(1)
    return summary
