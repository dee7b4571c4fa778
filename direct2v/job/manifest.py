"""The run manifest: one row per prompt, as Parquet (pyarrow), written so that nothing is lost.

Where rows live while a run works, oldest first (a later row of the same prompt id wins):

    manifest.parquet                      the last compaction
    manifest.jsonl                        rows appended outside a shard (``direct2v eval``, compare)
    manifest.parts/part-00001.parquet     one finished shard (written atomically)
    manifest.parts/journal-00001/manifest.jsonl   the shard in progress: one fsync'd line per video

``compact`` merges them all into a new ``manifest.parquet`` (atomically) and then removes what it
folded in, so after it the Parquet file alone is the manifest. It reads every source twice in
batches -- first only the prompt ids, then the rows, writing the winners row group by row group --
so its memory is one batch plus one id per row, whatever the length of the run. Repeating it after
a crash gives the same table.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, Field, model_validator

from direct2v.core.columns import Int32, arrow_schema
from direct2v.core.errors import Direct2VError
from direct2v.core.files import atomic_path, writing
from direct2v.director.plan import FramePlan
from direct2v.job.rundir import PARTS_DIR, PLANS_DIR, shard_name

Status = Literal["ok", "failed", "rejected"]  # rejected: rendered, but failed QC (direct2v eval)
Stage = Literal["input", "plan", "render", "encode", ""]

JOURNAL_NAME = "manifest.jsonl"
MANIFEST_NAME = "manifest.parquet"
#: Rows per read batch and per written row group during compaction.
COMPACT_BATCH_ROWS = 2048


class _PromptOutcome(BaseModel):
    """The columns every row fills: the prompt, its plan, its video and how it went."""

    run_id: str
    prompt_id: str
    sample: Int32 = Field(0, description="which video of its prompt this is (setting samples), from 0")
    sample_of: str = Field("", description="the id of the prompt this video is a sample of (its own prompt_id when "
                           "the prompt asked for one video, or in a manifest older than the column): group or "
                           "hold out by it")
    prompt: str | None = None
    source: str = ""
    frame_prompts: list[str] = Field(default_factory=list)
    fps: Int32 | None = None
    frame_count: Int32 | None = None
    seed: int | None = None
    director_model: str = ""
    template_version: str = ""
    director_sampling: str = Field("", description="JSON: the template and sampling settings that made the plan")
    plan_warnings: list[str] = Field(default_factory=list, description="soft rules the plan broke and was accepted "
                                     "with (director.quality_policy); empty = a clean plan")
    render_model: str = ""
    render_architecture: str = Field("", description="the render model's family, as its model_index.json names it: "
                                     "sd (Stable Diffusion 1.x/2.x) or sdxl (empty in a manifest older than the column)")
    video_path: str = ""
    plan_path: str = ""
    video_hash: str = Field("", description="identity of the video made (videos.video_hash); a resume keeps a "
                            "video only if it matches the one asked for")
    render_batch_size: Int32 | None = Field(None, description="frames per UNet call actually used (an out-of-memory "
                                            "retry lowers it, and the video_hash then says so)")
    status: Status
    failed_stage: Stage = ""
    error: str = ""
    render_s: float | None = None
    encode_s: float | None = None
    worker: str = Field("", description="the process that rendered the video: a Dask worker's address, or host:pid "
                        "(empty for a video kept, adopted or reused)")
    finished_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))

    @model_validator(mode="after")
    def _one_video_is_its_own_sample(self) -> "_PromptOutcome":
        self.sample_of = self.sample_of or self.prompt_id
        return self


class VideoMetrics(BaseModel):
    """``direct2v eval``'s measurements of one video (direct2v/evaluation/evaluate.py, metrics.py):
    per-frame CLIP cosine to each frame's prompt and to the user prompt, their means, Avg. Dist.,
    consecutive-frame CLIP consistency and flicker. Null in the manifest until a run is evaluated;
    without a CLIP model only flicker is measured."""

    clip_frame_scores: list[float] | None = None
    clip_prompt_scores: list[float] | None = None
    clip_frame: float | None = None
    clip_prompt: float | None = None
    avg_dist: float | None = None
    consistency: float | None = None
    flicker: float | None = None


# The row's fields are the manifest's columns (``SCHEMA``), in this order: ``_PromptOutcome``'s, then
# ``VideoMetrics``', then the row's own (pydantic puts the last base's fields first).
class ManifestRow(VideoMetrics, _PromptOutcome):
    """One prompt's outcome. Paths are relative to the run directory."""

    # direct2v eval: the CLIP model that measured the metrics ("none": flicker only); why QC rejected the video
    eval_model: str | None = None
    qc_reason: str = ""


#: The manifest's Parquet schema, made from ``ManifestRow`` (tests/test_encode_manifest.py pins it).
SCHEMA = arrow_schema(ManifestRow)


class ManifestError(Direct2VError, ValueError):
    """A directory holds no manifest (it is not a run directory)."""


# --- row builders --------------------------------------------------------------------------------


def plan_row(run_id: str, plan: FramePlan, source: str = "", **fields) -> ManifestRow:
    """The row of a prompt that has a plan: the plan's fields, then ``fields`` (status, video...)."""
    return ManifestRow(
        run_id=run_id, prompt_id=plan.prompt_id, sample=plan.director_sampling.get("sample", 0),
        sample_of=plan.director_sampling.get("sample_of", ""), prompt=plan.prompt, source=source,
        frame_prompts=plan.frames,
        fps=plan.fps, seed=plan.seed, director_model=plan.director_model, template_version=plan.template_version,
        director_sampling=json.dumps(plan.director_sampling, sort_keys=True) if plan.director_sampling else "",
        plan_warnings=plan.warnings, plan_path=f"{PLANS_DIR}/{plan.prompt_id}.json", **fields,
    )


def failed_row(run_id: str, prompt_id: str, stage: Stage, error: str, source: str = "",
               prompt: str | None = None, sample: int = 0, sample_of: str | None = None) -> ManifestRow:
    """The row of a prompt that has no plan: an unreadable line or plan file, a failed director."""
    return ManifestRow(run_id=run_id, prompt_id=prompt_id, sample=sample, sample_of=sample_of or "",
                       prompt=prompt, source=source, status="failed", failed_stage=stage, error=error)


# --- journals and parts --------------------------------------------------------------------------


def append_rows(directory: Path, rows: Iterable[ManifestRow]) -> None:
    """Append rows to ``directory/manifest.jsonl``, durably (one write and fsync per call)."""
    lines = "".join(row.model_dump_json() + "\n" for row in rows)
    if not lines:
        return
    path = Path(directory) / JOURNAL_NAME
    with writing(path):
        Path(directory).mkdir(parents=True, exist_ok=True)
        with open(path, "a+b", buffering=0) as journal:  # unbuffered: nothing is written after a failure
            end = journal.seek(0, os.SEEK_END)
            if end > 0:
                journal.seek(-1, os.SEEK_END)
                if journal.read(1) != b"\n":  # a line torn by a crash: never glue a new row onto it
                    lines = "\n" + lines
            data = memoryview(lines.encode("utf-8"))
            try:
                while data:
                    data = data[journal.write(data):]
                os.fsync(journal.fileno())
            except OSError:
                journal.truncate(end)  # a full disk: these rows are not recorded, and no torn line stays
                raise


def journal_rows(path: Path) -> Iterator[ManifestRow]:
    """The rows of a journal file in file order; a line torn by a crash is skipped."""
    with open(path, encoding="utf-8", errors="replace") as journal:  # a torn multi-byte character too
        for line in journal:
            try:
                yield ManifestRow.model_validate_json(line)
            except ValueError:
                continue


def part_path(run_dir: Path, index: int) -> Path:
    return Path(run_dir) / PARTS_DIR / f"part-{shard_name(index)}.parquet"


def shard_journal_dir(run_dir: Path, index: int) -> Path:
    return Path(run_dir) / PARTS_DIR / f"journal-{shard_name(index)}"


def append_shard_rows(run_dir: Path, index: int, rows: Iterable[ManifestRow]) -> None:
    """Durably record rows of a shard in progress, before its part exists."""
    append_rows(shard_journal_dir(run_dir, index), rows)


def write_part(run_dir: Path, index: int, rows: list[ManifestRow]) -> Path:
    """The shard's rows as ``manifest.parts/part-NNNNN.parquet`` (atomically); its journal is then removed."""
    path = part_path(run_dir, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        pq.write_table(rows_to_table(rows), temporary)
    shutil.rmtree(shard_journal_dir(run_dir, index), ignore_errors=True)
    return path


def rows_to_table(rows: Iterable[ManifestRow]) -> pa.Table:
    records = [json.loads(row.model_dump_json()) for row in rows]
    for record in records:
        record["finished_at"] = datetime.fromisoformat(record["finished_at"])
    return pa.Table.from_pylist(records, schema=SCHEMA)


def row_from_record(record: dict) -> ManifestRow:
    """A manifest row read back from Parquet (nulls become the model's defaults)."""
    return ManifestRow.model_validate({key: value for key, value in record.items() if value is not None})


def read_manifest(path: Path) -> pa.Table:
    return pq.read_table(path, schema=SCHEMA)


# --- reading every source ------------------------------------------------------------------------


def manifest_sources(run_dir: Path) -> list[Path]:
    """Every file holding manifest rows of the run, oldest first (a later row wins)."""
    run_dir = Path(run_dir)
    parts = run_dir / PARTS_DIR
    sources = [run_dir / MANIFEST_NAME, run_dir / JOURNAL_NAME]
    sources += sorted(parts.glob("part-*.parquet"))
    sources += sorted(parts.glob(f"journal-*/{JOURNAL_NAME}"))
    return [path for path in sources if path.is_file()]


def _conform(batch: pa.RecordBatch | pa.Table) -> pa.Table:
    """A batch read from any manifest version, as a table with exactly the current SCHEMA."""
    columns = []
    for schema_field in SCHEMA:
        position = batch.schema.get_field_index(schema_field.name)
        if position < 0:
            columns.append(pa.nulls(batch.num_rows, schema_field.type))
        else:
            column = batch.column(position)
            columns.append(column if column.type == schema_field.type else column.cast(schema_field.type))
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def _batches(path: Path, batch_rows: int, ids_only: bool = False) -> Iterator[pa.Table]:
    """A source in tables of at most ``batch_rows`` rows, in file order."""
    if path.suffix == ".parquet":
        with pq.ParquetFile(path) as parquet:
            for batch in parquet.iter_batches(batch_size=batch_rows, columns=["prompt_id"] if ids_only else None,
                                              use_threads=False):
                yield pa.Table.from_batches([batch]) if ids_only else _conform(batch)
        return
    rows: list[ManifestRow] = []
    for row in journal_rows(path):
        rows.append(row)
        if len(rows) >= batch_rows:
            yield rows_to_table(rows)
            rows = []
    if rows:
        yield rows_to_table(rows)


def read_rows(run_dir: Path) -> list[ManifestRow]:
    """Every row of the run as it stands (last row per prompt id), read from all its sources
    without changing them. For a run's review and evaluation; large runs use ``compact``."""
    sources = manifest_sources(run_dir)
    if not sources:
        raise ManifestError(f"{run_dir}: no manifest ({JOURNAL_NAME} or {MANIFEST_NAME}); is it a run directory?")
    latest: dict[str, ManifestRow] = {}
    for source in sources:
        for table in _batches(source, COMPACT_BATCH_ROWS):
            latest.update((record["prompt_id"], row_from_record(record)) for record in table.to_pylist())
    return list(latest.values())


def lookup_rows(manifest_path: Path, prompt_ids: Iterable[str]) -> dict[str, ManifestRow]:
    """The rows of ``prompt_ids`` in a compacted manifest, read with a filter (never the whole table)."""
    ids = list(prompt_ids)
    if not ids or not Path(manifest_path).is_file():
        return {}
    table = _conform(pq.read_table(manifest_path, filters=pc.field("prompt_id").isin(ids)))
    return {record["prompt_id"]: row_from_record(record) for record in table.to_pylist()}


# --- the one compaction --------------------------------------------------------------------------


@dataclass
class CompactResult:
    """The compacted manifest and what it holds (counted while writing it)."""

    path: Path
    rows: int = 0
    statuses: Counter = field(default_factory=Counter)
    failed_stages: Counter = field(default_factory=Counter)
    ok_with_plan_warnings: int = 0  # ok rows whose plan was accepted with quality warnings
    failures: list[dict] = field(default_factory=list)  # the first ``failure_sample`` failed rows


def compact(run_dir: Path, batch_rows: int = COMPACT_BATCH_ROWS, failure_sample: int = 50) -> CompactResult:
    """Merge every manifest source of the run into ``manifest.parquet`` (atomically), last row per
    prompt id winning, then remove the journals and parts it folded in (see the module docstring)."""
    run_dir = Path(run_dir)
    sources = manifest_sources(run_dir)

    # Pass 1: which row (global sequence number) is the last one of each prompt id.
    id_tables, offset = [], 0
    for source in sources:
        for batch in _batches(source, batch_rows, ids_only=True):
            ids = batch.column("prompt_id").combine_chunks() if batch.num_rows else pa.array([], pa.string())
            sequence = pa.array(np.arange(offset, offset + batch.num_rows, dtype=np.int64))
            id_tables.append(pa.table({"prompt_id": ids, "seq": sequence}))
            offset += batch.num_rows
    keep = np.zeros(offset, dtype=bool)  # one byte per row read
    if id_tables:
        grouped = pa.concat_tables(id_tables).group_by("prompt_id", use_threads=False).aggregate([("seq", "max")])
        keep[grouped.column("seq_max").to_numpy()] = True
    del id_tables

    # Pass 2: stream the rows again and write only the winners, row group by row group.
    result = CompactResult(run_dir / MANIFEST_NAME)
    buffered: list[pa.Table] = []
    buffered_rows, offset = 0, 0
    with atomic_path(result.path) as temporary, pq.ParquetWriter(temporary, SCHEMA) as writer:
        for source in sources:
            for batch in _batches(source, batch_rows):
                mask = keep[offset:offset + batch.num_rows]
                offset += batch.num_rows
                if len(mask) != batch.num_rows:
                    raise RuntimeError(f"{source} changed while the manifest was being compacted")
                kept = batch.filter(pa.array(mask))
                if not kept.num_rows:
                    continue
                _count(result, kept, failure_sample)
                buffered.append(kept)
                buffered_rows += kept.num_rows
                if buffered_rows >= batch_rows:
                    writer.write_table(pa.concat_tables(buffered))
                    buffered, buffered_rows = [], 0
        if buffered:
            writer.write_table(pa.concat_tables(buffered))
    for source in sources:
        if source.parent.parent.name == PARTS_DIR:  # a shard journal (a shard cut short)
            shutil.rmtree(source.parent, ignore_errors=True)
        elif source != result.path:  # a part, or the run's own journal
            source.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # only if empty: a shard journal written meanwhile stays
        (run_dir / PARTS_DIR).rmdir()
    return result


def _count(result: CompactResult, table: pa.Table, failure_sample: int) -> None:
    result.rows += table.num_rows
    statuses = table.column("status").to_pylist()
    result.statuses.update(statuses)
    warnings = table.column("plan_warnings").to_pylist()
    result.ok_with_plan_warnings += sum(status == "ok" and bool(warned) for status, warned in zip(statuses, warnings))
    failed = [i for i, status in enumerate(statuses) if status == "failed"]
    if not failed:
        return
    stages = table.column("failed_stage").to_pylist()
    result.failed_stages.update(stages[i] for i in failed)
    room = failure_sample - len(result.failures)
    if room > 0:
        picked = table.take(failed[:room]).select(["prompt_id", "source", "failed_stage", "error"]).to_pylist()
        result.failures.extend(picked)
