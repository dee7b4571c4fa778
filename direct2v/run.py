"""The stages of a run as plain functions; the Prefect flows and the CLI only wire them.

Data flows one way: prompt file -> records -> plans (director subprocess) -> frames -> MP4 ->
manifest rows. A run directory looks like::

    outputs/<run-id>/
        settings.json        the resolved settings of the run
        records.jsonl        the validated prompt records (itself a valid prompt file)
        plans/<id>.json      one validated frame plan per prompt (editable, re-renderable)
        plan_failures.jsonl  prompts the director could not plan, with the reason
        videos/<id>.mp4      one video per planned prompt
        manifest.jsonl       the journal of manifest rows
        manifest.parquet     the manifest, one row per prompt
        job.json             the prompt file and FPS doublings (what ``direct2v resume`` reruns)
        run.log              this run's log; director.log: the director process's output

Resuming (``direct2v resume RUN_DIR``) reruns the same stages into the same directory: a prompt
whose plan file still fits its record keeps its plan (the director only sees the others), and a
video whose latest manifest row is ``ok``, whose ``video_hash`` still matches (same frames, fps,
seed, render settings and render model) and whose MP4 still reads back is not rendered again.
Everything is written under a temporary name and renamed, so a crash at any point leaves either
the old file or the new one; the journal keeps the last row per prompt, so no row is lost or
duplicated.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import gc
import hashlib
import html
import json
import logging
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from .config import RenderSettings, Settings
from .encode import EncodeError, encode_mp4, partial_name, probe_video, read_comment
from .manifest import MANIFEST_NAME, ManifestRow, fsync_path, read_journal
from .plan import FramePlan, PlanFailure, PlanFileError, read_plan
from .prompts import PromptProblem, PromptRecord, is_safe_id, read_prompt_file

log = logging.getLogger(__name__)

PLANS_DIR = "plans"
VIDEOS_DIR = "videos"
PLAN_FAILURES = "plan_failures.jsonl"
RECORDS = "records.jsonl"
PLAN_REQUEST = "plan_request.jsonl"  # the records last sent to the director (a resume sends only some)
SETTINGS = "settings.json"
JOB = "job.json"
RUN_LOG = "run.log"
DIRECTOR_LOG = "director.log"
LOCK = ".lock"

#: The smallest render batch an out-of-memory retry goes down to (one anchor + one new frame).
MIN_RENDER_BATCH = 2
#: Bump when the meaning of ``video_hash`` changes: every finished video is then rendered again.
VIDEO_HASH_VERSION = 1


class RunDirError(ValueError):
    """A run directory cannot be started or resumed (missing, not a run, or in use)."""


def new_run_id() -> str:
    """Sortable and unique: UTC time plus a random suffix."""
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def create_run_dir(output_root: Path, run_id: str | None = None) -> Path:
    """A fresh run directory; an existing one is never reused, so earlier runs are never clobbered."""
    run_dir = Path(output_root) / (run_id or new_run_id())
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_dir


def write_job(run_dir: Path, prompt_file: Path, fps_doublings: int) -> None:
    """Record what the run was asked to do, so ``direct2v resume RUN_DIR`` can ask it again."""
    path = Path(run_dir) / JOB
    job = read_job(run_dir) if path.exists() else {}
    job.update(prompt_file=str(Path(prompt_file).resolve()), fps_doublings=fps_doublings)
    job.setdefault("started_at", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    if path.exists():
        job["resumed_at"] = [*job.get("resumed_at", []), datetime.now(timezone.utc).isoformat(timespec="seconds")]
    write_atomically(path, json.dumps(job, indent=2) + "\n")


def read_job(run_dir: Path) -> dict:
    path = Path(run_dir) / JOB
    try:
        job = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise RunDirError(f"{run_dir} cannot be resumed: cannot read {JOB} ({error}); "
                          f"use `direct2v run PROMPTS --resume {run_dir}` instead") from None
    if not isinstance(job, dict) or not isinstance(job.get("prompt_file"), str):
        raise RunDirError(f"{path}: not a job file (expected a JSON object with \"prompt_file\")")
    return job


def check_resumable(run_dir: Path) -> Path:
    """A directory that a run started: it exists and holds the run's ``settings.json``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory not found: {run_dir}")
    if not (run_dir / SETTINGS).is_file():
        raise RunDirError(f"{run_dir} is not a run directory (it has no {SETTINGS})")
    return run_dir


def resume_settings(run_dir: Path, overrides: dict) -> Settings:
    """The settings a resumed run continues with: its own ``settings.json``, then ``overrides``
    (``--set``/flags). Environment variables and ``--config`` are not consulted, so that a resume
    finishes the run that was started rather than a different one."""
    from .config import ConfigError, _describe
    from pydantic import ValidationError

    path = check_resumable(run_dir) / SETTINGS
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise RunDirError(f"cannot read {path}: {error}") from None

    def merge(base: dict, extra: dict) -> dict:
        merged = dict(base)
        for key, value in extra.items():
            merged[key] = merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
        return merged

    try:
        return Settings.model_validate(merge(saved, overrides))
    except ValidationError as error:
        raise ConfigError("invalid configuration:\n" + _describe(error)) from None


def prepare_run_dir(settings: Settings, prompt_file: Path, fps_doublings: int, run_dir: Path, resumed: bool) -> Path:
    """Record the run's settings and job in ``run_dir``; a resumed one first loses the temporaries
    an interrupted process left (call it holding ``run_dir_lock``)."""
    if resumed:
        clean_partials(run_dir)
    write_settings(settings, run_dir)
    write_job(run_dir, prompt_file, fps_doublings)
    return run_dir


@contextlib.contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """Only one process works in a run directory at a time (released when the process dies)."""
    path = Path(run_dir) / LOCK
    stream = open(path, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            stream.seek(0)
            holder = stream.read().strip() or "unknown"
            raise RunDirError(f"{run_dir} is in use by another direct2v process (pid {holder}); "
                              "wait for it to finish, or stop it first") from None
        stream.seek(0)
        stream.truncate()
        stream.write(str(os.getpid()))
        stream.flush()
        yield
    finally:
        stream.close()


@contextlib.contextmanager
def run_log(run_dir: Path) -> Iterator[Path]:
    """Copy every log line of the run (stages and Prefect alike) to ``run_dir/run.log``."""
    path = Path(run_dir) / RUN_LOG
    handler = logging.FileHandler(path, encoding="utf-8")
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
    """Remove what a killed process may have left half-written (never a finished file)."""
    run_dir = Path(run_dir)
    stale = [
        *(run_dir / VIDEOS_DIR).glob(".*.partial.mp4"),
        *(run_dir / PLANS_DIR).glob("*.json.tmp"),
        *run_dir.glob(".*.tmp"),
    ]
    for path in stale:
        log.info("removing %s, left half-written by an interrupted run", path)
        path.unlink(missing_ok=True)
    return stale


def write_atomically(path: Path, text: str) -> Path:
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    fsync_path(temporary)
    temporary.replace(path)
    return path


def has_prompts(path: Path) -> bool:
    """Whether the prompt file has any line that is neither blank nor a ``#`` comment."""
    from .prompts import PromptFileError

    try:
        with open(path, "rb") as stream:
            for raw in stream:
                stripped = raw.strip().removeprefix(b"\xef\xbb\xbf").strip()
                if stripped and not stripped.startswith(b"#"):
                    return True
    except OSError as error:
        raise PromptFileError(f"cannot read the prompt file {path}: {error.strerror}") from None
    return False


def preflight(settings: Settings) -> None:
    """The model directories, checked before any model loads; a ConfigError names the key."""
    from .config import ConfigError
    from .director import check_model_dir
    from .pipeline import missing_model_files

    try:
        check_model_dir(settings.director.model_dir)
    except FileNotFoundError as error:
        raise ConfigError(f"director.model_dir: {error}") from None
    root = Path(settings.render.model_dir)
    if not root.is_dir():
        raise ConfigError(
            f"render.model_dir: directory not found: {root} (run `direct2v models build` for the tiny default, "
            "or set render.model_dir to a local diffusers Stable Diffusion 1.x directory)"
        )
    missing = missing_model_files(root)
    if missing:
        raise ConfigError(f"render.model_dir: {root} is not a complete diffusers Stable Diffusion directory "
                          f"(safetensors only); missing: {', '.join(missing)}")


def split_prompt_file(path: Path) -> tuple[list[PromptRecord], list[PromptProblem]]:
    records, problems = [], []
    for item in read_prompt_file(path):
        (records if isinstance(item, PromptRecord) else problems).append(item)
    return records, problems


def problem_row(run_id: str, problem: PromptProblem, index: int) -> ManifestRow:
    """A prompt line that could not be read still gets a (failed) manifest row."""
    line = problem.source.rsplit(":", 1)[-1]
    return ManifestRow(
        run_id=run_id,
        prompt_id=f"invalid-line-{line}" if line.isdigit() else f"invalid-{index}",
        prompt=problem.prompt,
        source=problem.source,
        status="failed",
        failed_stage="input",
        error=problem.message,
    )


def write_records(records: list[PromptRecord], path: Path) -> Path:
    return write_atomically(path, "".join(record.model_dump_json(exclude_none=True) + "\n" for record in records))


def director_environment() -> dict[str, str]:
    """The director's environment: the parent's, plus what keeps vLLM off the network.

    ``VLLM_HOST_IP``: without it vLLM finds its own address by connecting a UDP socket to
    8.8.8.8 (no packet is sent, but it is a socket attempt towards the internet).
    """
    env = os.environ.copy()
    env.setdefault("VLLM_HOST_IP", "127.0.0.1")
    env.setdefault("_TYPER_STANDARD_TRACEBACK", "1")  # plain tracebacks: director.log stays greppable
    for key in ("VLLM_NO_USAGE_STATS", "VLLM_DO_NOT_TRACK", "DO_NOT_TRACK", "HF_HUB_OFFLINE",
                "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
        env.setdefault(key, "1")
    return env


DIRECTOR_TIMED_OUT = 124  # the exit code `timeout` uses


def director_command(records_file: Path, run_dir: Path, fps_doublings: int = 0) -> list[str]:
    """``direct2v plan`` for the run's records, with the run's resolved settings."""
    command = [
        sys.executable, "-m", "direct2v", "plan", str(records_file),
        "--out", str(run_dir), "--settings", str(Path(run_dir) / SETTINGS),
    ]
    if fps_doublings:
        command += ["--fps-doublings", str(fps_doublings)]
    return command


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


def plan_in_subprocess(
    records_file: Path, run_dir: Path, fps_doublings: int = 0, timeout_s: float | None = None
) -> tuple[int, str]:
    """Run the director as its own process (vLLM must not share a process with the renderer).

    The child reads the run's resolved ``settings.json``, so it plans with exactly the settings
    of the run, whatever overrides the parent had. Its output goes to stderr and is appended to
    ``run_dir/director.log``. Returns the exit code (negative: killed by that signal; 127: it
    could not start; DIRECTOR_TIMED_OUT: stopped after ``timeout_s``) and its last output line,
    for the failure message; never raises.
    """
    command = director_command(records_file, run_dir, fps_doublings)
    log.info("starting the director: %s", " ".join(command))
    tail: collections.deque[str] = collections.deque(maxlen=60)
    with open(Path(run_dir) / DIRECTOR_LOG, "a", encoding="utf-8") as director_log:
        director_log.write(f"--- {datetime.now(timezone.utc).isoformat(timespec='seconds')} {command}\n")
        try:
            # argv list, no shell. The child's report goes to stderr: stdout belongs to the caller's
            # result (the run summary).
            child = subprocess.Popen(
                command, env=director_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, text=True, encoding="utf-8", errors="replace", bufsize=1,
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


def fitting_plan(plan: FramePlan, record: PromptRecord, settings: Settings, fps_doublings: int) -> bool:
    """Whether a plan on disk was made for this record as the run now asks for it."""
    scale = 2**fps_doublings
    return (
        plan.prompt_id == record.id
        and plan.prompt == record.prompt
        and len(plan.frames) == (record.frames or settings.frames) * scale
        and plan.fps == (record.fps or settings.fps) * scale
        and plan.seed == (record.seed if record.seed is not None else settings.seed)
    )


def token_budget(settings: Settings):
    """The render model's token budget for plan checks, or None if it has no tokenizer."""
    from .plan import TokenBudget

    if not (Path(settings.render.model_dir) / "tokenizer").is_dir():
        return None
    try:
        return TokenBudget.from_sd_model(settings.render.model_dir)
    except (OSError, ValueError) as error:
        log.warning("cannot load the render model's tokenizer (%s); plans are checked without it", error)
        return None


def reusable_plans(
    records: list[PromptRecord], run_dir: Path, settings: Settings, fps_doublings: int = 0
) -> tuple[list[FramePlan], list[PromptRecord]]:
    """Split records into (plans already on disk that still fit them, records still to plan)."""
    plans_dir = Path(run_dir) / PLANS_DIR
    if not any(plans_dir.glob("*.json")):
        return [], list(records)
    budget = token_budget(settings)
    reused, to_plan = [], []
    for record in records:
        path = plans_dir / f"{record.id}.json"
        if path.is_file():
            try:
                plan = read_plan(path, budget)
            except PlanFileError as error:
                log.warning("%s; planning it again", error)
            else:
                if fitting_plan(plan, record, settings, fps_doublings):
                    reused.append(plan)
                    continue
                log.info("%s was made for another prompt, frame count, fps or seed; planning it again", path)
        to_plan.append(record)
    if reused:
        log.info("reusing %d plans already in %s; %d prompts still to plan", len(reused), plans_dir, len(to_plan))
    return reused, to_plan


def plan_records(
    records: list[PromptRecord], run_dir: Path, settings: Settings, fps_doublings: int = 0
) -> tuple[list[FramePlan], list[ManifestRow]]:
    """Plan ``records`` in one director process. Never raises: every record ends as a plan or as
    a failed manifest row (``failed_stage="plan"``), also when the director process dies.

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
        request = write_records(pending, run_dir / PLAN_REQUEST)
        code, last_line = plan_in_subprocess(request, run_dir, fps_doublings, settings.director.timeout_s)
        for record in pending:
            path = run_dir / PLANS_DIR / f"{record.id}.json"
            if path.is_file():
                try:
                    plan = read_plan(path, budget)
                except PlanFileError as error:
                    log.error("%s", error)
                    continue
                if fitting_plan(plan, record, settings, fps_doublings):  # not a stale plan of an earlier run
                    plans[record.id] = plan
        pending = [r for r in pending if r.id not in plans]
        if code >= 0 or not pending or attempt == 2:
            break
        log.warning("the director was killed by signal %d; starting it again for %d prompts", -code, len(pending))
    if code != 0:
        log.error("the director process failed with exit code %d: %s (full output: %s)",
                  code, last_line, run_dir / DIRECTOR_LOG)
    failures = {f.prompt_id: f for f in read_plan_failures(run_dir, offset)}
    rows = []
    for record in pending:
        failure = failures.get(record.id)
        if failure is None:
            reason = (
                f"the director process failed (exit code {code}): {last_line[:300]}; see {DIRECTOR_LOG}, "
                "then resume the run to plan it again"
                if code != 0 else "the director wrote no plan for this prompt; see director.log"
            )
            failure = PlanFailure(prompt_id=record.id, prompt=record.prompt, reason=reason)
        rows.append(plan_failure_row(run_dir.name, failure, record))
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
            try:
                failures.append(PlanFailure.model_validate_json(line))
            except ValueError:
                continue  # blank, or torn by a crash
    return failures


def load_plans(run_dir: Path) -> tuple[list[FramePlan], list[PlanFailure]]:
    """Plans (validated again on reading) and the director's recorded failures."""
    plans, failures = [], []
    for path in sorted((Path(run_dir) / PLANS_DIR).glob("*.json")):
        try:
            plans.append(read_plan(path))
        except PlanFileError as error:
            failures.append(PlanFailure(prompt_id=path.stem, prompt="", reason=str(error)))
    return plans, failures + read_plan_failures(run_dir)


def write_plan_failures(failures: list[PlanFailure], run_dir: Path) -> None:
    with open(Path(run_dir) / PLAN_FAILURES, "a", encoding="utf-8") as stream:
        for failure in failures:
            stream.write(failure.model_dump_json() + "\n")


def plan_failure_row(run_id: str, failure: PlanFailure, record: PromptRecord | None) -> ManifestRow:
    return ManifestRow(
        run_id=run_id,
        prompt_id=failure.prompt_id,
        prompt=failure.prompt or (record.prompt if record else None),
        source=record.source if record else "",
        status="failed",
        failed_stage="plan",
        error=failure.reason,
    )


def failed_row(run_id: str, plan: FramePlan, stage: str, error: str, source: str = "") -> ManifestRow:
    return ManifestRow(
        run_id=run_id, prompt_id=plan.prompt_id, prompt=plan.prompt, source=source, frame_prompts=plan.frames,
        fps=plan.fps, seed=plan.seed, status="failed", failed_stage=stage, error=error,
    )


def video_file(prompt_id: str) -> str:
    """The video's path in the run directory: named after the id (validated plans and prompt
    records only hold safe ids), else, defensively, after a hash of it."""
    if is_safe_id(prompt_id):
        return f"{VIDEOS_DIR}/{prompt_id}.mp4"
    return f"{VIDEOS_DIR}/id-{hashlib.sha256(prompt_id.encode('utf-8')).hexdigest()[:16]}.mp4"


def video_hash(plan: FramePlan, render_settings: RenderSettings | None, render_model: str) -> str:
    """The identity of a requested video: what decides its pixels (frames, fps, seed, every render
    setting, the render model). A resume re-renders a finished video when this changes."""
    settings = render_settings.model_dump(mode="json", exclude={"model_dir"}) if render_settings else None
    payload = {
        "version": VIDEO_HASH_VERSION,
        "frames": plan.frames,
        "fps": plan.fps,
        "seed": plan.seed,
        "render": settings,
        "render_model": render_model,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=True).encode("ascii")).hexdigest()[:20]


def render_model_id(render_settings: RenderSettings) -> str:
    from .render import model_identifier  # the renderer's own name for its model

    return model_identifier(render_settings.model_dir)


def finished_problem(row: ManifestRow | None, plan: FramePlan, run_dir: Path, expected_hash: str) -> str | None:
    """Why the video of ``plan`` must be (re)made, or None when it is finished: its latest row is
    ok (or rejected by QC: rendering it again would give the same video), made for the same video
    hash, and its MP4 reads back with the plan's frame count and fps."""
    if row is None:
        return "no manifest row"
    if row.status not in ("ok", "rejected"):
        return f"its last row is {row.status}"
    if row.video_hash != expected_hash:
        return "the plan, the render settings or the render model changed"
    if not row.video_path:
        return "no video path"
    try:
        video = probe_video(Path(run_dir) / row.video_path)
    except (EncodeError, OSError) as error:
        return f"the video does not read back ({error})"
    if video.frame_count != len(plan.frames) or abs(video.fps - plan.fps) > 1e-3:
        return f"the video holds {video.frame_count} frames at {video.fps} fps"
    return None


def video_comment(expected_hash: str) -> str:
    """What ``render_plan`` stores in each MP4's comment tag: the video's identity."""
    return f"direct2v video_hash={expected_hash}"


def adopt_video(
    plan: FramePlan, run_dir: Path, expected_hash: str, render_model: str, source: str = ""
) -> ManifestRow | None:
    """The ok row of a video that was finished (renamed into place, read back) but whose row a
    crash kept from the journal: its MP4 must carry this video hash in its comment tag and read
    back with the plan's frame count and fps. None if there is no such video."""
    video_rel = video_file(plan.prompt_id)
    path = Path(run_dir) / video_rel
    if not path.is_file():
        return None
    try:
        if read_comment(path) != video_comment(expected_hash):
            return None
        video = probe_video(path)
    except (EncodeError, OSError, subprocess.SubprocessError):
        return None
    if video.frame_count != len(plan.frames) or abs(video.fps - plan.fps) > 1e-3:
        return None
    log.info("%s: %s was finished before the interruption; recording it instead of rendering it again",
             plan.prompt_id, video_rel)
    return ManifestRow(
        run_id=Path(run_dir).name, prompt_id=plan.prompt_id, prompt=plan.prompt, source=source,
        frame_prompts=plan.frames, fps=plan.fps, seed=plan.seed, director_model=plan.director_model,
        template_version=plan.template_version, render_model=render_model, plan_path=f"{PLANS_DIR}/{plan.prompt_id}.json",
        video_hash=expected_hash, status="ok", frame_count=video.frame_count, video_path=video_rel,
    )


def split_finished(
    plans: list[FramePlan], run_dir: Path, render_settings: RenderSettings, sources: dict[str, str] | None = None
) -> tuple[list[FramePlan], list[FramePlan]]:
    """(plans still to render, plans whose videos are finished); see ``finished_problem``.

    A video finished just before a crash, with no row yet, is recognised by ``adopt_video`` and
    its ok row appended to the journal here.
    """
    from .manifest import append_rows

    if not plans:
        return [], []
    latest = {row.prompt_id: row for row in read_journal(run_dir)}
    videos = Path(run_dir) / VIDEOS_DIR
    if not latest and not (videos.is_dir() and any(videos.glob("*.mp4"))):
        return list(plans), []  # a fresh run: nothing to check
    model = render_model_id(render_settings)
    todo, done = [], []
    for plan in plans:
        expected = video_hash(plan, render_settings, model)
        problem = finished_problem(latest.get(plan.prompt_id), plan, run_dir, expected)
        if problem is not None:
            adopted = adopt_video(plan, run_dir, expected, model, (sources or {}).get(plan.prompt_id, ""))
            if adopted is not None:
                append_rows(run_dir, [adopted])
                problem = None
        if problem is None:
            done.append(plan)
        else:
            if plan.prompt_id in latest:
                log.info("%s: rendering again: %s", plan.prompt_id, problem)
            todo.append(plan)
    if done:
        log.info("%d videos are already finished and are not rendered again", len(done))
    return todo, done


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA (torch.cuda.OutOfMemoryError), CPU allocator, or Python out-of-memory errors."""
    if isinstance(error, MemoryError):
        return True
    torch = sys.modules.get("torch")
    oom_type = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if oom_type is not None and isinstance(error, oom_type):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)


def free_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def render_with_oom_retry(renderer, plan: FramePlan):
    """``renderer.render(plan)``; on out-of-memory, again with half the frames per UNet call
    (the chunked path), down to MIN_RENDER_BATCH, before giving up with a RenderError."""
    from .render import RenderError

    settings = getattr(renderer, "settings", None)
    batch = min(getattr(settings, "batch_size", len(plan.frames)), len(plan.frames))
    override = None
    while True:
        try:
            return renderer.render(plan) if override is None else renderer.render(plan, batch_size=override)
        except (MemoryError, RuntimeError) as error:
            if not is_out_of_memory(error):
                raise
            message = " ".join(str(error).split())[:300]
        free_memory()  # outside the except block: the traceback no longer holds the failed tensors
        if batch // 2 < MIN_RENDER_BATCH:
            raise RenderError(
                f"{plan.prompt_id}: out of memory even with {batch} frames per UNet call ({message}); "
                "lower render.height/width, use render.dtype=float16, or free the GPU"
            )
        log.warning("%s: out of memory with %d frames per UNet call; retrying with %d (%s)",
                    plan.prompt_id, batch, batch // 2, message)
        batch //= 2
        override = batch


def render_plan(plan: FramePlan, run_dir: Path, renderer, source: str = "") -> ManifestRow:
    """Render and encode one plan; any failure becomes a failed row, never an exception.

    The row is ``ok`` only once the MP4 is complete under its final name and has been read back
    with the plan's frame count and fps (``encode_mp4``).
    """
    from .render import RenderError  # torch-heavy: imported only where rendering happens

    run_dir = Path(run_dir)
    video_rel = video_file(plan.prompt_id)
    row = dict(
        run_id=run_dir.name,
        prompt_id=plan.prompt_id,
        prompt=plan.prompt,
        source=source,
        frame_prompts=plan.frames,
        fps=plan.fps,
        seed=plan.seed,
        director_model=plan.director_model,
        template_version=plan.template_version,
        render_model=renderer.model_id,
        plan_path=f"{PLANS_DIR}/{plan.prompt_id}.json",
        video_hash=video_hash(plan, getattr(renderer, "settings", None), renderer.model_id),
    )
    started = time.perf_counter()
    try:
        frames = render_with_oom_retry(renderer, plan)
    except (RenderError, ValueError, RuntimeError, MemoryError) as error:
        log.error("render failed for %s: %s", plan.prompt_id, error)
        return ManifestRow(**row, status="failed", failed_stage="render", error=str(error),
                           render_s=time.perf_counter() - started)
    except Exception as error:  # a bug must still not stop the other videos
        log.exception("render failed for %s", plan.prompt_id)
        return ManifestRow(**row, status="failed", failed_stage="render", error=f"{type(error).__name__}: {error}",
                           render_s=time.perf_counter() - started)
    rendered = time.perf_counter()
    try:
        video = encode_mp4(frames, run_dir / video_rel, fps=plan.fps, comment=video_comment(row["video_hash"]))
    except (EncodeError, ValueError, OSError) as error:
        log.error("encoding failed for %s: %s", plan.prompt_id, error)
        return ManifestRow(**row, status="failed", failed_stage="encode", error=str(error),
                           render_s=rendered - started, encode_s=time.perf_counter() - rendered)
    return ManifestRow(
        **row,
        status="ok",
        frame_count=video.frame_count,
        video_path=video_rel,
        render_s=rendered - started,
        encode_s=time.perf_counter() - rendered,
    )


def write_settings(settings: Settings, run_dir: Path) -> None:
    write_atomically(Path(run_dir) / SETTINGS, json.dumps(settings.model_dump(mode="json"), indent=2) + "\n")


def summarise(run_dir: Path, manifest_path: Path) -> dict:
    """Counts of the finished run, read back from its manifest."""
    from .manifest import read_manifest

    statuses = read_manifest(manifest_path).column("status").to_pylist()
    return {
        "total": len(statuses),
        "ok": statuses.count("ok"),
        "failed": statuses.count("failed"),
        "rejected": statuses.count("rejected"),  # rendered, but QC turned it down (direct2v eval)
        "manifest": str(manifest_path),
    }


def failed_rows(manifest_path: Path, limit: int = 50) -> list[dict]:
    """The first ``limit`` failed rows of a manifest: id, source, stage, error."""
    from .manifest import read_manifest

    columns = ["prompt_id", "source", "failed_stage", "error"]
    rows = read_manifest(manifest_path).select([*columns, "status"]).to_pylist()
    return [{c: row[c] for c in columns} for row in rows if row["status"] != "ok"][:limit]


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~])")


def markdown_text(value: object, limit: int = 500) -> str:
    """Any text as inert Markdown: one line, HTML escaped, Markdown punctuation backslash-escaped,
    and ``:`` as an entity so that no URL becomes a link."""
    text = " ".join(str(value).split())
    if len(text) > limit:
        text = text[:limit] + "..."
    text = html.escape(_MARKDOWN_SPECIAL.sub(r"\\\1", text), quote=False)  # no "#" in the entities yet
    return re.sub(r"(?i)(www)\.", r"\1&#46;", text.replace(":", "&#58;"))


def summary_markdown(summary: dict, failures: list[dict] | None = None) -> str:
    """The run's Prefect artifact: a table of counts and paths, then the failed prompts (if any).
    Every value is escaped: ids, paths and error messages may hold user text."""
    lines = ["| what | value |", "| --- | --- |"]
    lines += [f"| {markdown_text(key)} | {markdown_text(value)} |" for key, value in summary.items()]
    if failures:
        lines += ["", "**Failed prompts**", "", "| prompt id | source | stage | error |", "| --- | --- | --- | --- |"]
        lines += [
            "| " + " | ".join(markdown_text(f.get(c) or "") for c in ("prompt_id", "source", "failed_stage", "error")) + " |"
            for f in failures
        ]
    return "\n".join(lines)
