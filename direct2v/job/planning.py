"""The plan stage: prompt records -> validated frame plans, in a director process of their own.

vLLM must never share a process with the renderer, so the director runs in a child process
(``python -m direct2v.job.director_process``) that reads the run's ``settings.json`` and writes ``plans/<id>.json`` and
``plan_failures.jsonl``; it exits (freeing the GPU) before anything renders. A plan already on
disk that still fits its record is reused. Hand-written plan files come in through
``import_plan_files``, validated the same way. Nothing here raises for a prompt: every record ends
as a plan or as a failed manifest row.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import os
import re
import subprocess
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path

from direct2v.core.config import Settings
from direct2v.core.environment import offline_environment
from direct2v.core.files import DiskFullError, write_atomically, writing
from direct2v.director.plan import FramePlan, PlanFailure, PlanFileError, TokenBudget, read_plan, write_plan
from direct2v.director.prompts import PromptProblem, PromptRecord, sample_records
from direct2v.job.manifest import ManifestRow, failed_row
from direct2v.job.rundir import DIRECTOR_LOG, PLAN_FAILURES, PLANS_DIR, RECORDS

log = logging.getLogger(__name__)

DIRECTOR_TIMED_OUT = 124  # the exit code `timeout` uses
DIRECTOR_DISK_FULL = 3  # the director could not write a plan: the job stops, as for the flow's own writes
_DISK_FULL_PATH = re.compile(r"error: disk full writing (.+?)(?: \| |$)")


def problem_row(run_id: str, problem: PromptProblem, index: int) -> ManifestRow:
    """A prompt line that could not be read still gets a (failed) manifest row."""
    line = problem.source.rsplit(":", 1)[-1]
    prompt_id = f"invalid-line-{line}" if line.isdigit() else f"invalid-{index}"
    return failed_row(run_id, prompt_id, "input", problem.message, problem.source, problem.prompt)


def expand_samples(records: list[PromptRecord], settings: Settings) -> tuple[list[PromptRecord], list[PromptProblem]]:
    """Each record as the records of its samples (``prompts.sample_records``: itself when the
    prompt asks for one video), and a problem for a record whose sample ids cannot be file names."""
    expanded, problems = [], []
    for record in records:
        try:
            expanded += sample_records(record, record.samples or settings.samples, settings.seed)
        except ValueError as error:
            problems.append(PromptProblem(source=record.source, message=str(error), id=record.id, prompt=record.prompt))
    return expanded, problems


def token_budget(settings: Settings) -> TokenBudget | None:
    """The render model's token budget for plan checks, or None if it has no tokenizer. Loaded once
    per process and model: every shard asks for it (plan reuse, then the director's plans)."""
    return _token_budget(Path(settings.render.model_dir).resolve())


@functools.lru_cache(maxsize=4)
def _token_budget(model_dir: Path) -> TokenBudget | None:
    if not (model_dir / "tokenizer").is_dir():
        return None
    try:
        return TokenBudget.from_sd_model(model_dir)
    except (OSError, ValueError) as error:
        log.warning("cannot load the render model's tokenizer (%s); plans are checked without it", error)
        return None


def fitting_plan(plan: FramePlan, record: PromptRecord, settings: Settings) -> bool:
    """Whether a plan on disk was made for this record as the run now asks for it."""
    scale = 2**settings.fps_doublings
    return (
        plan.prompt_id == record.id
        and plan.prompt == record.prompt
        and len(plan.frames) == (record.frames or settings.frames) * scale
        and plan.fps == (record.fps or settings.fps) * scale
        and plan.seed == (record.seed if record.seed is not None else settings.seed)
    )


def _plan_on_disk(record: PromptRecord, run_dir: Path, settings: Settings, budget: TokenBudget | None) -> FramePlan | None:
    path = Path(run_dir) / PLANS_DIR / f"{record.id}.json"
    if not path.is_file():
        return None
    try:
        plan = read_plan(path, budget)
    except PlanFileError as error:
        log.warning("%s; planning it again", error)
        return None
    if not fitting_plan(plan, record, settings):
        log.info("%s was made for another prompt, frame count, fps or seed; planning it again", path)
        return None
    return plan


def reusable_plans(records: list[PromptRecord], run_dir: Path, settings: Settings) -> tuple[list[FramePlan], list[PromptRecord]]:
    """Split records into (plans already on disk that still fit them, records still to plan)."""
    if not any((Path(run_dir) / PLANS_DIR).glob("*.json")):
        return [], list(records)
    budget = token_budget(settings)
    reused, to_plan = [], []
    for record in records:
        plan = _plan_on_disk(record, run_dir, settings, budget)
        (to_plan if plan is None else reused).append(record if plan is None else plan)
    if reused:
        log.info("reusing %d plans already on disk; %d prompts still to plan", len(reused), len(to_plan))
    return reused, to_plan


def plan_records(records: list[PromptRecord], run_dir: Path, settings: Settings) -> tuple[list[FramePlan], list[ManifestRow]]:
    """Plan ``records`` in one director process: (plans, failed rows with ``failed_stage="plan"``).

    A director killed by a signal (the OOM killer, an engine crash) is started once more for the
    records it left unplanned; one that exits with an error code is not (the same error would
    come back).
    """
    run_dir = Path(run_dir)
    if not records:
        return [], []
    budget = token_budget(settings)
    failures_file = run_dir / PLAN_FAILURES
    offset = failures_file.stat().st_size if failures_file.exists() else 0
    plans: dict[str, FramePlan] = {}
    pending = list(records)
    code, last_line = 0, ""
    for attempt in (1, 2):
        request = write_atomically(run_dir / RECORDS, "".join(r.model_dump_json(exclude_none=True) + "\n" for r in pending))
        code, last_line = plan_in_subprocess(request, run_dir, settings.director.timeout_s)
        for record in pending:
            plan = _plan_on_disk(record, run_dir, settings, budget)  # a stale plan of an earlier run does not count
            if plan is not None:
                plans[record.id] = plan
        pending = [r for r in pending if r.id not in plans]
        if code == DIRECTOR_DISK_FULL:
            written = _DISK_FULL_PATH.search(last_line)
            raise DiskFullError(written.group(1) if written else run_dir / PLANS_DIR)
        if code >= 0 or not pending or attempt == 2:
            break
        log.warning("the director was killed by signal %d; starting it again for %d prompts", -code, len(pending))
    if code != 0:
        log.error("the director process failed with exit code %d: %s (full output: %s)",
                  code, last_line, run_dir / DIRECTOR_LOG)
    failures = {f.prompt_id: f for f in read_plan_failures(run_dir, offset)}
    rows = []
    for record in pending:
        if record.id in failures:
            reason = failures[record.id].reason
        elif code != 0:
            reason = (f"the director process failed (exit code {code}): {last_line[:300]}; see {DIRECTOR_LOG}, "
                      "then resume the run to plan it again")
        else:
            reason = f"the director wrote no plan for this prompt; see {DIRECTOR_LOG}"
        rows.append(failed_row(run_dir.name, record.id, "plan", reason, record.source, record.prompt, record.sample,
                               record.sample_of))
    return [plans[r.id] for r in records if r.id in plans], rows


def read_plan_failures(run_dir: Path, offset: int = 0) -> list[PlanFailure]:
    """The director's recorded failures, from byte ``offset`` of plan_failures.jsonl on."""
    path = Path(run_dir) / PLAN_FAILURES
    if not path.exists():
        return []
    failures = []
    with open(path, "rb") as stream:
        stream.seek(offset)
        for line in stream.read().decode("utf-8", "replace").splitlines():
            with contextlib.suppress(ValueError):  # blank, or torn by a crash
                failures.append(PlanFailure.model_validate_json(line))
    return failures


def write_plan_failures(failures: list[PlanFailure], run_dir: Path) -> None:
    path = Path(run_dir) / PLAN_FAILURES
    with writing(path), open(path, "a", encoding="utf-8") as stream:
        for failure in failures:
            stream.write(failure.model_dump_json() + "\n")


def read_plan_files(paths: list[Path], run_id: str, budget: TokenBudget | None,
                    seen: set[str]) -> tuple[list[tuple[FramePlan, str]], list[ManifestRow]]:
    """Hand-written (or another run's) plan files, validated like the director's: ((plan, source
    path), ...) and a failed ``input`` row, with the reason, for each file that is unreadable,
    invalid, or uses a prompt id already ``seen`` (both would write the same video)."""
    plans, rows = [], []
    for path in paths:
        try:
            plan = read_plan(path, budget)
            if plan.prompt_id in seen:
                raise PlanFileError(f"{path}: prompt_id {plan.prompt_id!r} is used by another plan file; "
                                    "give each plan its own prompt_id")
        except PlanFileError as error:
            log.error("%s", error)
            rows.append(failed_row(run_id, f"invalid-plan-{Path(path).stem}", "input", str(error), str(path)))
            continue
        seen.add(plan.prompt_id)
        plans.append((plan, str(path)))
    return plans, rows


def import_plan_files(paths: list[Path], run_dir: Path, budget: TokenBudget | None,
                      seen: set[str]) -> tuple[list[tuple[FramePlan, str]], list[ManifestRow]]:
    """``read_plan_files``, the valid plans copied into the run's ``plans/``."""
    plans, rows = read_plan_files(paths, Path(run_dir).name, budget, seen)
    plans_dir = Path(run_dir) / PLANS_DIR
    for plan, source in plans:
        target = plans_dir / f"{plan.prompt_id}.json"
        if not target.exists() or target.resolve() != Path(source).resolve():
            write_plan(plan, plans_dir)
    return plans, rows


# --- the director process ------------------------------------------------------------------------


def director_command(records_file: Path, run_dir: Path) -> list[str]:
    """The director process for the run's records, with the run's resolved settings."""
    return [sys.executable, "-m", "direct2v.job.director_process", str(records_file), str(run_dir)]


def kill_process_tree(pid: int) -> None:
    """SIGKILL a process and its descendants (the director's vLLM engine-core processes too)."""
    import psutil

    try:
        parent = psutil.Process(pid)
        family = [*parent.children(recursive=True), parent]
    except psutil.NoSuchProcess:
        return
    for process in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def plan_in_subprocess(records_file: Path, run_dir: Path, timeout_s: float | None = None) -> tuple[int, str]:
    """Run the director as its own process; its output is copied to stderr and appended to
    ``run_dir/director.log``. Returns the exit code (negative: killed by that signal; 127: it
    could not start; DIRECTOR_TIMED_OUT: stopped after ``timeout_s``) and its most telling output
    line, for the failure message. Raises only DiskFullError, when director.log cannot be written
    (the director is stopped first)."""
    command = director_command(records_file, run_dir)
    log.info("starting the director: %s", " ".join(command))
    tail: collections.deque[str] = collections.deque(maxlen=60)
    env = offline_environment(dict(os.environ))
    with writing(Path(run_dir) / DIRECTOR_LOG), open(Path(run_dir) / DIRECTOR_LOG, "a", encoding="utf-8") as director_log:
        director_log.write(f"--- {datetime.now(timezone.utc).isoformat(timespec='seconds')} {command}\n")
        try:
            # argv list, no shell; stdout belongs to the caller's result (the run summary)
            child = subprocess.Popen(
                command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                text=True, encoding="utf-8", errors="replace", bufsize=1,
            )
        except OSError as error:
            director_log.write(f"cannot start the director: {error}\n")
            return 127, f"cannot start the director: {error}"
        assert child.stdout is not None
        timed_out = threading.Event()

        def stop() -> None:
            timed_out.set()
            kill_process_tree(child.pid)

        watchdog = threading.Timer(timeout_s, stop) if timeout_s else None
        if watchdog:
            watchdog.daemon = True
            watchdog.start()
        try:
            for line in child.stdout:
                sys.stderr.write(line)
                director_log.write(line)
                if line.strip():
                    tail.append(line.strip())
            code = child.wait()
        except OSError:  # the log cannot be written (a full disk): the director must not run on, unread
            kill_process_tree(child.pid)
            child.wait()
            raise
        finally:
            if watchdog:
                watchdog.cancel()
        director_log.write(f"--- exit code {code}\n")
    if timed_out.is_set() and code < 0:  # not a director that finished as the watchdog fired
        message = f"the director did not finish within {timeout_s:g} s (director.timeout_s) and was stopped"
        log.error("%s", message)
        return DIRECTOR_TIMED_OUT, message
    return code, error_summary(list(tail))


_ERROR_LINE = re.compile(r"^\W*(error:|[\w.]*(Error|Exception)\b:?)")


def error_summary(lines: list[str]) -> str:
    """The most telling line of a process's last output lines: its last error line (with the next
    line, which often holds the detail), else its last line."""
    for index in range(len(lines) - 1, -1, -1):
        if _ERROR_LINE.match(lines[index]):
            return " | ".join(line.strip() for line in lines[index:index + 2])[:400]
    return lines[-1][:400] if lines else ""
