"""The ``direct2v`` command line.

    direct2v models build                      # make the embedded default models (once)
    direct2v run prompts_in/examples.txt       # the whole job under Prefect
    direct2v resume outputs/<run-id>           # finish an interrupted run in place
    direct2v plan prompts_in/examples.txt --out outputs/plans-only
    direct2v render --plans outputs/plans-only/plans --out outputs/hand-edited
    direct2v eval outputs/<run-id> --clip-model DIR  # metrics, QC, summary, index.html

Commands by group: ``jobs`` (plan, render, run, resume, dataset), ``runs`` (eval, review, export,
compare), ``models``; what they share is in ``common``. Settings: ``--config FILE.toml``,
``DIRECT2V_*`` environment variables, and ``--set KEY=VALUE`` (docs/configuration.md).

Imports any part of the library; runs the Prefect flow by its entrypoint (as a Prefect worker does),
so nothing in ``direct2v`` imports ``flows``. Every fault ends the command with one line, never a
traceback on the console: a ``DiskFullError`` with exit code 3 (and the resume command), any other
``Direct2VError`` with 2, and an exception of no kind we know (a bug) with 1, its traceback written
to the run's ``run.log`` (or a file of its own outside a job); ``--debug`` or ``DIRECT2V_DEBUG=1``
prints it instead.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import traceback
from datetime import datetime
from pathlib import Path

import typer

from direct2v.cli import jobs, models, runs  # noqa: F401  (each registers its commands on the app)
from direct2v.cli.common import JobCrashed, app, console_without_tracebacks, debugging
from direct2v.core.errors import Direct2VError
from direct2v.core.files import DiskFullError
from direct2v.job.rundir import RUN_LOG

__all__ = ["app", "main"]

#: Exit codes: what must be fixed before anything starts (a Direct2VError), and a full disk.
USER_ERROR_EXIT, DISK_FULL_EXIT = 2, 3


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "httpcore"):  # one line per Prefect API call otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    console_without_tracebacks()


def _command() -> str:
    words = [arg for arg in sys.argv[1:] if not arg.startswith("-")]
    return f"direct2v {words[0]}" if words else "direct2v"


def _unexpected(error: Exception) -> str:
    """The one line for an exception of no kind we know (a bug): what failed, in which run, and
    where its traceback went (the run's run.log, else a file of its own)."""
    cause = error.__cause__ if isinstance(error, JobCrashed) and error.__cause__ else error
    run_dir = error.run_dir if isinstance(error, JobCrashed) else None
    text = "".join(traceback.format_exception(cause))
    try:
        if run_dir is not None and run_dir.is_dir():
            log_path = run_dir / RUN_LOG
            with open(log_path, "a", encoding="utf-8") as log:
                log.write(f"{datetime.now().isoformat(sep=' ', timespec='seconds')} ERROR direct2v: "
                          f"{_command()} stopped on an unexpected error\n{text}")
        else:
            with tempfile.NamedTemporaryFile("w", prefix="direct2v-traceback-", suffix=".log", delete=False) as log:
                log.write(text)
            log_path = Path(log.name)
        where = f"the traceback is in {log_path}"
    except OSError as write_error:  # (a full disk, say): the console is the only place left
        where = f"the traceback could not be written ({write_error.strerror}); --debug prints it"
    what = " ".join(str(cause).split())[:300] or "(no message)"
    run = f"; run directory: {run_dir}" if run_dir is not None else ""
    return f"error: {_command()} stopped on an unexpected {type(cause).__name__}: {what} (a bug{run}; {where})"


def _is_usage_error(error: Exception) -> bool:
    """Whether ``error`` is a command-line usage error: click's, or the copy of click that typer
    0.2x vendors (``typer._click``), whose exceptions do not derive from click's."""
    import click
    from typer.exceptions import TyperException

    return isinstance(error, (click.ClickException, TyperException)) and hasattr(error, "show")


def main() -> None:
    _setup_logging()
    try:
        code = app(standalone_mode=False)  # returns the exit code instead of raising SystemExit
    except DiskFullError as error:  # free space, then resume (a job) or run the command again: one line
        typer.echo(f"error: {error}" + ("" if error.run_dir else ": free space, then run the command again"), err=True)
        sys.exit(DISK_FULL_EXIT)
    except (Direct2VError, FileNotFoundError) as error:  # ours, or a path the user named: one line
        typer.echo(f"error: {error}", err=True)
        sys.exit(USER_ERROR_EXIT)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except Exception as error:  # usage errors arrive here with standalone_mode=False
        if _is_usage_error(error):  # a missing option, an unknown one: click's "Usage: ... Error: ..." lines
            error.show()
            sys.exit(error.exit_code)
        if debugging():  # the traceback, as Python prints it
            if isinstance(error, JobCrashed) and error.__cause__:
                raise error.__cause__ from None
            raise
        typer.echo(_unexpected(error), err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
