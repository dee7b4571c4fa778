"""The run directory: its layout, its job file, one process at a time, its log, crash leftovers.

    outputs/<run-id>/
        settings.json        the resolved settings of the run (a resume continues with them)
        job.json             what the run was asked to do: prompt file or plan directory, options
        records.jsonl        the prompt records last sent to the director (itself a prompt file)
        plans/<id>.json      one validated frame plan per prompt (editable, re-renderable)
        plan_failures.jsonl  prompts the director could not plan, with the reason
        director_report.json the director's rule rates, tokens and seconds per engine call
        shards/              per shard: what the render stage does (written by the plan stage)
        videos/<id>.mp4      one video per planned prompt
        manifest.parquet     the manifest, one row per prompt (manifest.py: where rows live meanwhile)
        run.log              this run's log; director.log: the director processes' output

``open_run`` is the one way in: it creates a new directory or reopens an existing run with the
settings it recorded, so ``run``, ``dataset``, ``resume`` and ``render --plans`` all continue a run
the same way.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, Field

from direct2v.core.config import Settings, saved_settings
from direct2v.core.errors import Direct2VError
from direct2v.core.files import write_atomically, writing

log = logging.getLogger(__name__)

PLANS_DIR = "plans"
VIDEOS_DIR = "videos"
SHARDS_DIR = "shards"
PARTS_DIR = "manifest.parts"  # manifest.py: parts and shard journals
SETTINGS = "settings.json"
JOB = "job.json"
RECORDS = "records.jsonl"
PLAN_FAILURES = "plan_failures.jsonl"
RUN_LOG = "run.log"
DIRECTOR_LOG = "director.log"
DIRECTOR_REPORT = "director_report.json"  # the director's rule rates and engine calls
LOCK = ".lock"
EVALUATION_MD = "evaluation.md"  # direct2v eval: the Table-1 summary
EVALUATION_JSON = "evaluation.json"
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class RunDirError(Direct2VError, ValueError):
    """A run directory cannot be started or resumed (missing, not a run, or in use)."""


def shard_name(index: int) -> str:
    return f"{index:05d}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Job(BaseModel):
    """What a run was asked to do (``job.json``); a resume asks it again."""

    prompt_file: str | None = Field(None, description="plan and render this prompt file ...")
    plans_dir: str | None = Field(None, description="... or render these plan files (no director)")
    shard_size: int = Field(256, ge=1, description="prompts per director process and per manifest part")
    reuse_from: list[str] = Field(default_factory=list, description="globs of runs whose finished videos are reused")
    verify_videos: bool = Field(False, description="decode every finished MP4 before keeping it")
    started_at: str = Field(default_factory=_now)
    resumed_at: list[str] = Field(default_factory=list)


def new_run_id() -> str:
    """Sortable and unique: UTC time plus a random suffix."""
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def check_run_id(run_id: str) -> str:
    if not _RUN_ID.match(run_id):
        raise RunDirError(f"run_id must be 1-100 letters, digits, '_', '-', '.', got {run_id!r}")
    return run_id


def is_run_dir(path: Path) -> bool:
    return (Path(path) / SETTINGS).is_file()


def is_recorded(path: Path) -> bool:
    """Whether ``direct2v resume`` can continue the run: its settings and its job are written."""
    return is_run_dir(path) and (Path(path) / JOB).is_file()


def read_job(run_dir: Path) -> Job:
    path = Path(run_dir) / JOB
    try:
        return Job.model_validate_json(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise RunDirError(f"{run_dir} cannot be resumed: cannot read {JOB} ({error.strerror})") from None
    except ValueError as error:
        raise RunDirError(f"{path}: not a job file ({' '.join(str(error).split())[:300]})") from None


def run_settings(run_dir: Path, overrides: dict) -> Settings:
    """The settings an existing run continues with: its ``settings.json``, then ``overrides``."""
    path = Path(run_dir) / SETTINGS
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise RunDirError(f"cannot read {path}: {error}") from None
    job = path.with_name(JOB)
    if "fps_doublings" not in saved and job.is_file():  # runs made before it was a setting kept it in job.json
        with contextlib.suppress(OSError, ValueError):
            saved["fps_doublings"] = json.loads(job.read_text(encoding="utf-8")).get("fps_doublings", 0)
    return saved_settings(saved, overrides)


def open_run(run_dir: Path, job: Job | None, settings: Settings | None, overrides: dict) -> tuple[Path, Job, Settings, bool]:
    """(run directory, job, settings, resumed). A directory that holds a run is continued with its
    own job and settings (``overrides`` laid over them, and the fields a given ``job`` sets over
    the recorded ones); any other is started with ``job`` and ``settings``. Call it holding
    no lock: it only reads."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is a file, not a run directory; choose another directory")
    if is_run_dir(run_dir):
        recorded = read_job(run_dir) if (run_dir / JOB).is_file() else None
        if job is None and recorded is None:
            raise RunDirError(f"{run_dir} cannot be resumed: it has no {JOB}; give the prompt file again")
        chosen = job if recorded is None else recorded.model_copy(update=job.model_dump(include=job.model_fields_set)
                                                                   if job else {})
        chosen = chosen.model_copy(update={"resumed_at": [*chosen.resumed_at, _now()]})
        return run_dir, chosen, run_settings(run_dir, overrides), True
    if job is None or settings is None:
        if run_dir.exists():
            raise RunDirError(f"{run_dir} is not a run directory (it has no {SETTINGS})")
        raise RunDirError(f"run directory not found: {run_dir}")
    return run_dir, job, settings, False


def record_run(run_dir: Path, job: Job, settings: Settings) -> None:
    """Write the run's ``settings.json`` and ``job.json`` (call it holding ``run_dir_lock``)."""
    write_atomically(Path(run_dir) / SETTINGS, json.dumps(settings.model_dump(mode="json"), indent=2) + "\n")
    write_atomically(Path(run_dir) / JOB, job.model_dump_json(indent=2) + "\n")


@contextlib.contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """Only one process works in a run directory at a time (released when the process dies)."""
    with writing(Path(run_dir) / LOCK):
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        stream = open(Path(run_dir) / LOCK, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            stream.seek(0)
            holder = stream.read().strip() or "unknown"
            raise RunDirError(f"{run_dir} is in use by another direct2v process (pid {holder}); "
                              "wait for it to finish, or stop it first") from None
        with writing(Path(run_dir) / LOCK):
            stream.seek(0)
            stream.truncate()
            stream.write(str(os.getpid()))
            stream.flush()
        yield
    finally:
        stream.close()


class _RunLogHandler(logging.FileHandler):
    """``run.log``. logging's own handler prints a traceback to stderr for every line it cannot
    write; on a full disk that is every line, so this one says it once and stops writing."""

    failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if self.failed or not isinstance(error, OSError):
            return super().handleError(record)
        self.failed = True
        log.warning("cannot write %s (%s); its lines go to stderr only from here on", self.baseFilename,
                    error.strerror or error)

    def close(self) -> None:
        with contextlib.suppress(OSError):  # what is still buffered cannot be written either
            super().close()


@contextlib.contextmanager
def run_log(run_dir: Path) -> Iterator[Path]:
    """Copy every log line of the run (stages and Prefect alike) to ``run_dir/run.log``."""
    path = Path(run_dir) / RUN_LOG
    with writing(path):
        handler = _RunLogHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    package = logging.getLogger("direct2v")
    previous_level = package.level
    if package.getEffectiveLevel() > logging.INFO:
        package.setLevel(logging.INFO)  # Prefect sets the root logger to WARNING
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        package.setLevel(previous_level)
        handler.close()


def clean_partials(run_dir: Path) -> list[Path]:
    """Remove what a killed process may have left half-written (never a finished file): the
    temporaries of ``files.atomic_path`` and ``encode_mp4``."""
    run_dir = Path(run_dir)
    stale = [*(run_dir / VIDEOS_DIR).glob(".*.partial.mp4")]
    for directory in (run_dir, run_dir / PLANS_DIR, run_dir / SHARDS_DIR, run_dir / PARTS_DIR):
        stale += directory.glob(".*.tmp")
    for path in stale:
        log.info("removing %s, left half-written by an interrupted run", path)
        path.unlink(missing_ok=True)
    return stale
