"""The video stage: one plan -> one MP4 and its manifest row, and the one rule for which videos
need no work.

A video's identity is its ``video_hash``: everything that decides its pixels (frames, fps, seed,
every render setting, the render model). A video needs no work when its latest row is ``ok`` or
``rejected`` (QC turned it down; rendering it again would give the same video -- re-deciding QC is
``direct2v eval``'s job), made for the same hash, and its MP4 is there (``verify``: and decodes with
the plan's frame count and fps). A finished MP4 whose row a crash kept from the manifest carries
its hash in its comment tag and is adopted instead of rendered again; a finished video of another
run with the same hash is hard-linked (``ReuseIndex``).
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from glob import glob
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from direct2v.core.config import RenderSettings
from direct2v.core.files import atomic_path, writing
from direct2v.director.plan import FramePlan
from direct2v.director.prompts import is_safe_id
from direct2v.job.manifest import MANIFEST_NAME, ManifestRow, plan_row
from direct2v.job.rundir import VIDEOS_DIR
from direct2v.render.encode import EncodeError, encode_mp4, partial_name, probe_video, read_comment

log = logging.getLogger(__name__)

#: Bump when the meaning of ``video_hash`` changes: every finished video is then rendered again.
#: 2: the RVM reference counts the joint steps from t' = 1, as the paper does (pixels changed).
VIDEO_HASH_VERSION = 2
#: The smallest render batch an out-of-memory retry goes down to (one anchor + one new frame).
MIN_RENDER_BATCH = 2
FINISHED_STATUSES = ("ok", "rejected")


def video_file(prompt_id: str) -> str:
    """The video's path in the run directory: named after the id (validated plans and prompt
    records only hold safe ids), else, defensively, after a hash of it."""
    if is_safe_id(prompt_id):
        return f"{VIDEOS_DIR}/{prompt_id}.mp4"
    return f"{VIDEOS_DIR}/id-{hashlib.sha256(prompt_id.encode('utf-8')).hexdigest()[:16]}.mp4"


#: Settings keys that only say how the schedule is derived (the hash holds the resolved t0, t1,
#: period and guidance instead, so that two ways of writing the same schedule render one video, and
#: videos made before these keys existed keep their identity), or that the render model id covers.
_DERIVATION_KEYS = frozenset({"model_dir", "lora_dir", "t0_fraction", "t1_fraction", "rvm_period_steps"})
#: Settings keys that say how the same computation is executed, not what it computes (compiled and
#: eager, channels-last and contiguous renders agree within float tolerance, tests/test_compile.py).
_EXECUTION_KEYS = frozenset({"compile", "channels_last"})


def identity_settings(render_settings: RenderSettings) -> dict:
    """The render settings as the video hash sees them: resolved, without the derivation keys."""
    schedule = render_settings.schedule()
    resolved = render_settings.model_copy(update={
        "t0": schedule.t0, "t1": schedule.t1, "rvm_period": float(schedule.period),
        "guidance_scale": render_settings.resolved_guidance_scale(),
    })
    exclude = _DERIVATION_KEYS | _EXECUTION_KEYS | ({"lora_scale"} if render_settings.lora_dir is None else set())
    return resolved.model_dump(mode="json", exclude=exclude)


def video_hash(plan: FramePlan, render_settings: RenderSettings | None, render_model: str) -> str:
    """The identity of a video: what decides its pixels. A resume re-renders a video when it changes."""
    settings = identity_settings(render_settings) if render_settings else None
    payload = {"version": VIDEO_HASH_VERSION, "frames": plan.frames, "fps": plan.fps, "seed": plan.seed,
               "render": settings, "render_model": render_model}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=True).encode("ascii")).hexdigest()[:20]


def video_comment(expected_hash: str) -> str:
    """What each MP4's comment tag holds: the video's identity (so an orphan can be adopted)."""
    return f"direct2v video_hash={expected_hash}"


def _reads_back(path: Path, plan: FramePlan) -> str | None:
    try:
        video = probe_video(path)
    except (EncodeError, OSError) as error:
        return f"the video does not read back ({error})"
    if video.frame_count != len(plan.frames) or abs(video.fps - plan.fps) > 1e-3:
        return f"the video holds {video.frame_count} frames at {video.fps} fps"
    return None


def unfinished_reason(row: ManifestRow | None, plan: FramePlan, run_dir: Path, expected_hash: str,
                      verify: bool = False) -> str | None:
    """Why the video of ``plan`` must be (re)made, or None when it needs no work (module docstring)."""
    if row is None:
        return "no manifest row"
    if row.status not in FINISHED_STATUSES:
        return f"its last row is {row.status}"
    if row.video_hash != expected_hash:
        return "the plan, the render settings or the render model changed"
    path = Path(run_dir) / row.video_path if row.video_path else None
    if path is None or not path.is_file() or path.stat().st_size == 0:
        return "its video is missing"
    # encode_mp4 publishes a file only after reading it back, so one that exists is whole; verify
    # also catches a file damaged since
    return _reads_back(path, plan) if verify else None


def adopt_video(plan: FramePlan, run_dir: Path, expected_hash: str, render_model: str, source: str = "",
                render_architecture: str = "") -> ManifestRow | None:
    """The ok row of a video that was finished (renamed into place, read back) but whose row a
    crash kept from the manifest: its MP4 carries this video hash in its comment tag and reads back
    with the plan's frame count and fps. None if there is no such video."""
    video_rel = video_file(plan.prompt_id)
    path = Path(run_dir) / video_rel
    if not path.is_file():
        return None
    try:
        if read_comment(path) != video_comment(expected_hash) or _reads_back(path, plan):
            return None
    except (EncodeError, OSError, subprocess.SubprocessError):
        return None
    log.info("%s: %s was finished before the interruption; recording it instead of rendering it again",
             plan.prompt_id, video_rel)
    return plan_row(Path(run_dir).name, plan, source, render_model=render_model,
                    render_architecture=render_architecture, video_hash=expected_hash,
                    status="ok", frame_count=len(plan.frames), video_path=video_rel)


# --- finished videos of other runs ---------------------------------------------------------------

_REUSE_COLUMNS = ["video_hash", "status", "video_path", "frame_count", "fps", "render_batch_size"]


class ReuseIndex:
    """Finished videos of earlier runs, by ``video_hash``: one entry per distinct hash, so its size
    is the number of distinct finished videos however many runs made them. Built from the
    ``manifest.parquet`` of each run directory matched by ``patterns`` (globs such as
    ``outputs/nightly/*``); run ids sort by time, so the newest run that finished a hash is used."""

    def __init__(self, patterns: Iterable[str], exclude: Path | None = None, batch_rows: int = 2048):
        excluded = Path(exclude).resolve() if exclude else None
        dirs = sorted({Path(p) for pattern in patterns for p in glob(str(pattern))})
        self.run_dirs = [d for d in dirs if (d / MANIFEST_NAME).is_file() and d.resolve() != excluded]
        seen: set[str] = set()
        tables = []
        for number in reversed(range(len(self.run_dirs))):
            with pq.ParquetFile(self.run_dirs[number] / MANIFEST_NAME) as parquet:
                names = parquet.schema_arrow.names
                if "video_hash" not in names:  # a manifest older than video hashes
                    continue
                for batch in parquet.iter_batches(batch_size=batch_rows, columns=[c for c in _REUSE_COLUMNS if c in names],
                                                  use_threads=False):
                    table = pa.Table.from_batches([batch])
                    finished = table.filter(pc.and_(pc.equal(table.column("status"), "ok"),
                                                    pc.invert(pc.equal(pc.fill_null(table.column("video_hash"), ""), ""))))
                    new = [h not in seen and not seen.add(h) for h in finished.column("video_hash").to_pylist()]
                    if any(new):
                        kept = finished.filter(pa.array(new))
                        kept = pa.table({c: kept.column(c) if c in kept.column_names else pa.nulls(kept.num_rows)
                                         for c in _REUSE_COLUMNS})
                        tables.append(kept.append_column("run", pa.array([number] * kept.num_rows, pa.int32())))
        self.table = pa.concat_tables(tables, promote_options="default") if tables else None
        log.info("reuse index: %d finished videos in %d earlier runs", len(self), len(self.run_dirs))

    def __len__(self) -> int:
        return self.table.num_rows if self.table is not None else 0

    def find(self, hashes: Iterable[str]) -> dict[str, tuple[Path, dict]]:
        """``hash -> (run directory, row)`` for the hashes that an earlier run finished."""
        wanted = list(set(hashes))
        if self.table is None or not wanted:
            return {}
        matches = self.table.filter(pc.is_in(self.table.column("video_hash"), value_set=pa.array(wanted)))
        return {record["video_hash"]: (self.run_dirs[record.pop("run")], record) for record in matches.to_pylist()}


def link_video(source: Path, target: Path) -> Path:
    """Put a finished video of another run at ``target``: a hard link (no copy) where the file
    system allows it, else a copy; published atomically under ``encode_mp4``'s partial name, so an
    interrupted run's cleanup removes a half-made one."""
    target = Path(target)
    with writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target, partial_name(target)) as temporary:  # a half copy (a full disk) is removed
        temporary.unlink(missing_ok=True)
        try:
            os.link(source, temporary)
        except OSError:
            shutil.copy2(source, temporary)
    return target


def reused_row(hit: tuple[Path, dict], plan: FramePlan, run_dir: Path, expected_hash: str, render_model: str,
               source: str = "", render_architecture: str = "") -> ManifestRow | None:
    """The row of a video reused (hard-linked) from another run with the same video hash."""
    other_run, record = hit
    video = other_run / record["video_path"]
    if not video.is_file() or record.get("frame_count") not in (None, len(plan.frames)):
        return None
    video_rel = video_file(plan.prompt_id)
    link_video(video, Path(run_dir) / video_rel)
    return plan_row(Path(run_dir).name, plan, source, render_model=render_model,
                    render_architecture=render_architecture, video_hash=expected_hash,
                    status="ok", frame_count=len(plan.frames), video_path=video_rel,
                    render_batch_size=record.get("render_batch_size"))


# --- rendering -----------------------------------------------------------------------------------


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
    """(frames, frames per UNet call used): ``renderer.render(plan)``; on out-of-memory, again with
    half the frames per UNet call, down to MIN_RENDER_BATCH, before giving up with a RenderError.

    A smaller batch takes the cached-attention chunked path, which makes a different video (the
    anchors' K/V and the DSF threshold see other frames), so the caller records the batch used and
    hashes the video with it. Splitting the CFG halves instead would not keep it identical either:
    DSF's confidence quantile is taken over both halves of one layer call.
    """
    from direct2v.render.renderer import RenderError

    batch = min(renderer.settings.batch_size, len(plan.frames))
    override = None
    while True:
        try:
            frames = renderer.render(plan) if override is None else renderer.render(plan, batch_size=override)
            return frames, batch
        except (MemoryError, RuntimeError) as error:
            if not is_out_of_memory(error):
                raise
            message = " ".join(str(error).split())[:300]
        free_memory()  # outside the except block: the traceback no longer holds the failed tensors
        if batch // 2 < MIN_RENDER_BATCH:
            raise RenderError(
                f"{plan.prompt_id}: out of memory even with {batch} frames per UNet call ({message}); "
                "lower render.height/width or render.batch_size, use render.dtype=float16, or free the GPU"
            )
        log.warning("%s: out of memory with %d frames per UNet call; retrying with %d, which makes a different "
                    "video (recorded in render_batch_size and video_hash) (%s)", plan.prompt_id, batch, batch // 2, message)
        batch //= 2
        override = batch


def render_plan(plan: FramePlan, run_dir: Path, renderer, source: str = "") -> ManifestRow:
    """Render and encode one plan; any failure becomes a failed row, never an exception -- except a
    full disk (``DiskFullError``), which is no fault of the video: it stops the job.

    The row is ``ok`` only once the MP4 is complete under its final name and has been read back
    with the plan's frame count and fps (``encode_mp4``).
    """
    from direct2v.render.renderer import RenderError  # torch-heavy: imported only where rendering happens

    run_dir = Path(run_dir)
    settings = renderer.settings
    requested_hash = video_hash(plan, settings, renderer.model_id)
    row = dict(render_model=renderer.model_id, render_architecture=renderer.architecture, video_hash=requested_hash)
    started = time.perf_counter()

    def failed(stage: str, error: str, **times) -> ManifestRow:
        log.error("%s failed for %s: %s", stage, plan.prompt_id, error)
        return plan_row(run_dir.name, plan, source, **row, status="failed", failed_stage=stage, error=error, **times)

    try:
        frames, used_batch = render_with_oom_retry(renderer, plan)
    except (RenderError, ValueError, RuntimeError, MemoryError) as error:
        return failed("render", str(error), render_s=time.perf_counter() - started)
    except Exception as error:  # a bug must still not stop the other videos
        log.exception("render failed for %s", plan.prompt_id)
        return failed("render", f"{type(error).__name__}: {error}", render_s=time.perf_counter() - started)
    row["render_batch_size"] = used_batch
    if used_batch < min(settings.batch_size, len(plan.frames)):  # the OOM retry made another video
        row["video_hash"] = video_hash(plan, settings.model_copy(update={"batch_size": used_batch}), renderer.model_id)
    rendered = time.perf_counter()
    video_rel = video_file(plan.prompt_id)
    try:
        video = encode_mp4(frames, run_dir / video_rel, fps=plan.fps, comment=video_comment(row["video_hash"]))
    except (EncodeError, ValueError, OSError) as error:
        return failed("encode", str(error), render_s=rendered - started, encode_s=time.perf_counter() - rendered)
    return plan_row(run_dir.name, plan, source, **row, status="ok", frame_count=video.frame_count, video_path=video_rel,
                    render_s=rendered - started, encode_s=time.perf_counter() - rendered)
