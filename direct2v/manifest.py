"""The run manifest: one row per prompt, as Parquet (pyarrow).

Rows are appended to a JSON-lines journal as each video finishes (one ``write`` + ``fsync`` per
row, so a crash loses at most the row being written), and ``compact`` turns the journal into
``manifest.parquet`` with a fixed schema. The last row per prompt id wins, so a rerun that redoes
a failed prompt simply appends its new row.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

Status = Literal["ok", "failed", "rejected"]  # rejected: rendered, but failed QC (direct2v eval)
Stage = Literal["input", "plan", "render", "encode", ""]

SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string()),
        pa.field("source", pa.string()),
        pa.field("frame_prompts", pa.list_(pa.string())),
        pa.field("fps", pa.int32()),
        pa.field("frame_count", pa.int32()),
        pa.field("seed", pa.int64()),
        pa.field("director_model", pa.string()),
        pa.field("template_version", pa.string()),
        pa.field("render_model", pa.string()),
        pa.field("video_path", pa.string()),
        pa.field("plan_path", pa.string()),
        pa.field("video_hash", pa.string()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("failed_stage", pa.string()),
        pa.field("error", pa.string()),
        pa.field("plan_s", pa.float64()),
        pa.field("render_s", pa.float64()),
        pa.field("encode_s", pa.float64()),
        pa.field("finished_at", pa.timestamp("us", tz="UTC")),
        # direct2v eval (direct2v/evaluate.py); null until a run is evaluated
        pa.field("clip_frame_scores", pa.list_(pa.float64())),
        pa.field("clip_prompt_scores", pa.list_(pa.float64())),
        pa.field("clip_frame", pa.float64()),
        pa.field("clip_prompt", pa.float64()),
        pa.field("avg_dist", pa.float64()),
        pa.field("consistency", pa.float64()),
        pa.field("flicker", pa.float64()),
        pa.field("eval_model", pa.string()),
        pa.field("qc_reason", pa.string()),
    ]
)


class ManifestRow(BaseModel):
    """One prompt's outcome. Paths are relative to the run directory."""

    run_id: str
    prompt_id: str
    prompt: str | None = None
    source: str = ""
    frame_prompts: list[str] = Field(default_factory=list)
    fps: int | None = None
    frame_count: int | None = None
    seed: int | None = None
    director_model: str = ""
    template_version: str = ""
    render_model: str = ""
    video_path: str = ""
    plan_path: str = ""
    video_hash: str = Field("", description="identity of the requested video (run.video_hash); a resume skips a video only if it matches")
    status: Status
    failed_stage: Stage = ""
    error: str = ""
    plan_s: float | None = None
    render_s: float | None = None
    encode_s: float | None = None
    finished_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    # direct2v eval: per-frame CLIP cosine to each frame's prompt and to the user prompt, their means,
    # Avg. Dist., consecutive-frame CLIP consistency, flicker (direct2v/metrics.py); why QC rejected it
    clip_frame_scores: list[float] | None = None
    clip_prompt_scores: list[float] | None = None
    clip_frame: float | None = None
    clip_prompt: float | None = None
    avg_dist: float | None = None
    consistency: float | None = None
    flicker: float | None = None
    eval_model: str | None = None
    qc_reason: str = ""


JOURNAL_NAME = "manifest.jsonl"
MANIFEST_NAME = "manifest.parquet"


def append_rows(run_dir: Path, rows: Iterable[ManifestRow]) -> None:
    """Append rows to the run's journal, durably."""
    lines = "".join(row.model_dump_json() + "\n" for row in rows)
    if not lines:
        return
    with open(Path(run_dir) / JOURNAL_NAME, "a+b") as journal:
        if journal.tell() > 0:  # "a" mode: the position is the end of the file
            journal.seek(-1, os.SEEK_END)
            if journal.read(1) != b"\n":  # a line torn by a crash: never glue a new row onto it
                lines = "\n" + lines
        journal.write(lines.encode("utf-8"))
        journal.flush()
        os.fsync(journal.fileno())


def read_journal(run_dir: Path) -> list[ManifestRow]:
    """The journal's rows, last row per prompt id, in first-seen order. A torn last line is ignored."""
    path = Path(run_dir) / JOURNAL_NAME
    if not path.exists():
        return []
    latest: dict[str, ManifestRow] = {}
    with open(path, encoding="utf-8", errors="replace") as journal:  # a torn multi-byte character too
        for line in journal:
            try:
                row = ManifestRow.model_validate_json(line)
            except ValueError:
                continue  # a line cut short by a crash
            latest[row.prompt_id] = row
    return list(latest.values())


def rows_to_table(rows: Iterable[ManifestRow]) -> pa.Table:
    records = [json.loads(row.model_dump_json()) for row in rows]
    for record in records:
        record["finished_at"] = datetime.fromisoformat(record["finished_at"])
    return pa.Table.from_pylist(records, schema=SCHEMA)


def compact(run_dir: Path) -> Path:
    """Write ``manifest.parquet`` from the journal (atomically) and return its path."""
    run_dir = Path(run_dir)
    target = run_dir / MANIFEST_NAME
    temporary = run_dir / f".{MANIFEST_NAME}.tmp"
    pq.write_table(rows_to_table(read_journal(run_dir)), temporary)
    fsync_path(temporary)
    temporary.replace(target)
    fsync_path(run_dir)
    return target


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a directory's entries (after a rename), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifest(path: Path) -> pa.Table:
    return pq.read_table(path, schema=SCHEMA)
