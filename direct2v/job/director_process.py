"""The director process: a run's prompt records -> plan files, with one vLLM engine, then exit.

    python -m direct2v.job.director_process RECORDS_FILE RUN_DIR

vLLM must never share a process with the renderer (nor a CUDA context forked from it), so the plan
stage (``planning.plan_in_subprocess``) starts this module in a child process for each shard. It
reads the run's resolved ``settings.json``, plans every record of ``RECORDS_FILE`` (written by the plan
stage: one record per sample) in one batched
engine call per round, and writes ``plans/<id>.json``, ``plan_failures.jsonl`` and
``director_report.json`` into ``RUN_DIR``. ``direct2v plan`` runs the same function in its own
process. Exit codes: 0 done (failed prompts are recorded, not fatal), 2 our error (one
``error:`` line), 3 the disk is full (``error: disk full writing PATH``: the parent stops the
job, as for its own writes), 1 a bug (its traceback, kept in ``director.log`` by the parent).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from direct2v.core.config import Settings
from direct2v.core.errors import Direct2VError
from direct2v.core.files import DiskFullError, write_atomically
from direct2v.director.plan import PlanFailure, write_plan
from direct2v.director.prompt_files import read_prompt_file
from direct2v.director.prompts import PromptRecord
from direct2v.job.planning import DIRECTOR_DISK_FULL, expand_samples, token_budget, write_plan_failures
from direct2v.job.rundir import DIRECTOR_REPORT, PLANS_DIR, SETTINGS

log = logging.getLogger(__name__)


def plan_prompt_file(prompt_file: Path, out: Path, settings: Settings) -> tuple[list, list[PlanFailure], dict]:
    """``direct2v plan``: every valid record of ``prompt_file`` (as the records of its samples)
    through ``plan_records``. Returns (results, failures, report); no results if the file holds no
    valid record."""
    records = []
    for item in read_prompt_file(prompt_file):
        if isinstance(item, PromptRecord):
            records.append(item)
        else:
            log.error("%s", item)
    records, problems = expand_samples(records, settings)
    for problem in problems:
        log.error("%s", problem)
    return plan_records(records, out, settings)


def read_records(records_file: Path) -> list[PromptRecord]:
    """The plan stage's records file (``rundir.RECORDS``): one record per line, samples expanded."""
    lines = Path(records_file).read_text(encoding="utf-8").splitlines()
    return [PromptRecord.model_validate_json(line) for line in lines if line.strip()]


def plan_records(records: list[PromptRecord], out: Path, settings: Settings) -> tuple[list, list[PlanFailure], dict]:
    """What the director process does: ``records`` planned by one vLLM engine, batched; plans to
    ``out/plans``, failures to plan_failures.jsonl, the rule rates to director_report.json.
    Returns (results, failures, report)."""
    from direct2v.director.director import Director  # vLLM: only in the director process

    if not records:
        return [], [], {}
    Path(out).mkdir(parents=True, exist_ok=True)
    budget = token_budget(settings)
    if budget is None:
        log.warning("%s has no tokenizer/: frame descriptions are not checked against the text encoder's "
                    "token limit", settings.render.model_dir)
    with Director(settings.director, settings.state_dir, budget) as director:
        results = director.plan(records, settings.frames, settings.fps, settings.seed, settings.fps_doublings)
        report = director.report.as_dict()
    failures = [result for result in results if isinstance(result, PlanFailure)]
    for result in results:
        if not isinstance(result, PlanFailure):
            write_plan(result, Path(out) / PLANS_DIR)
    write_plan_failures(failures, out)
    write_atomically(Path(out) / DIRECTOR_REPORT, json.dumps(report, indent=2) + "\n")
    return results, failures, report


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m direct2v.job.director_process RECORDS_FILE RUN_DIR", file=sys.stderr)
        return 2
    records_file, run_dir = Path(args[0]), Path(args[1])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        settings = Settings.model_validate_json((run_dir / SETTINGS).read_text(encoding="utf-8"))
        plan_records(read_records(records_file), run_dir, settings)
    except DiskFullError as error:
        print(f"error: {error}", file=sys.stderr)
        return DIRECTOR_DISK_FULL
    except (Direct2VError, FileNotFoundError) as error:  # ours, or a file gone: one line (others: a traceback)
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
