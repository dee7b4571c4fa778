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
so nothing in ``direct2v`` imports ``flows``. Every ``Direct2VError`` ends the command with one line
and exit code 2; nothing a user caused prints a traceback.
"""

from __future__ import annotations

import logging
import sys

import typer

from direct2v.cli import jobs, models, runs  # noqa: F401  (each registers its commands on the app)
from direct2v.cli.common import app
from direct2v.core.errors import Direct2VError

__all__ = ["app", "main"]


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "httpcore"):  # one line per Prefect API call otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main() -> None:
    _setup_logging()
    try:
        code = app(standalone_mode=False)  # returns the exit code instead of raising SystemExit
    except (Direct2VError, FileNotFoundError) as error:  # ours, or a path the user named: one line
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
