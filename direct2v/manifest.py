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

Status = Literal["ok", "failed"]
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
        pa.field("status", pa.string(), nullable=False),
        pa.field("failed_stage", pa.string()),
        pa.field("error", pa.string()),
        pa.field("plan_s", pa.float64()),
        pa.field("render_s", pa.float64()),
        pa.field("encode_s", pa.float64()),
        pa.field("finished_at", pa.timestamp("us", tz="UTC")),
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
    status: Status
    failed_stage: Stage = ""
    error: str = ""
    plan_s: float | None = None
    render_s: float | None = None
    encode_s: float | None = None
    finished_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))


JOURNAL_NAME = "manifest.jsonl"
MANIFEST_NAME = "manifest.parquet"


def append_rows(run_dir: Path, rows: Iterable[ManifestRow]) -> None:
    """Append rows to the run's journal, durably."""
    lines = "".join(row.model_dump_json() + "\n" for row in rows)
    if not lines:
        return
    with open(Path(run_dir) / JOURNAL_NAME, "a", encoding="utf-8") as journal:
        journal.write(lines)
        journal.flush()
        os.fsync(journal.fileno())


def read_journal(run_dir: Path) -> list[ManifestRow]:
    """The journal's rows, last row per prompt id, in first-seen order. A torn last line is ignored."""
    path = Path(run_dir) / JOURNAL_NAME
    if not path.exists():
        return []
    latest: dict[str, ManifestRow] = {}
    with open(path, encoding="utf-8") as journal:
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
    temporary.replace(target)
    return target


def read_manifest(path: Path) -> pa.Table:
    return pq.read_table(path, schema=SCHEMA)
