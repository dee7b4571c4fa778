"""Large prompt lists in bounded memory: shards, per-shard manifest parts, streaming compaction.

A 100,000-line prompt list never has to fit in memory:

* ``stream_prompt_shards`` reads the prompt file line by line (``prompts.read_prompt_file``) and
  yields shards of at most ``size`` records/problems; only one shard is held at a time.
* Between the plan and the render stage each shard is a small file, ``shards/shard-00001.jsonl``:
  the prompt ids to render (with their source line) and the rows already known (unreadable lines,
  prompts the director could not plan).
* While a shard renders, its rows go to a journal of their own, one fsync'd line per video
  (``manifest.parts/journal-00001/manifest.jsonl``), so a crash loses nothing finished; when the
  shard is done they become one Parquet part, ``manifest.parts/part-00001.parquet`` (written
  atomically), and the journal is removed.
* ``compact_parts`` merges ``manifest.parquet`` (the previous compaction), the run's own journal
  ``manifest.jsonl`` (if another command wrote one), the parts and any journals a crash left,
  keeping the **last row per prompt id in that order**, into a new ``manifest.parquet``. It reads
  every source twice in batches -- first only the prompt ids, then the rows, writing the winners
  row group by row group -- so its memory is one batch plus one id per row, not the whole table.

Everything here is pure file handling (pyarrow, pydantic): no Prefect, no torch.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from glob import glob
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .manifest import JOURNAL_NAME, MANIFEST_NAME, SCHEMA, ManifestRow, append_rows, fsync_path, rows_to_table
from .prompts import PromptProblem, PromptRecord, check_prompt_file, read_prompt_file

log = logging.getLogger(__name__)

T = TypeVar("T")

PARTS_DIR = "manifest.parts"
SHARDS_DIR = "shards"
#: Rows per read batch and per written row group during compaction.
COMPACT_BATCH_ROWS = 2048


# --- sharding ------------------------------------------------------------------------------------


def shard_records(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of at most ``size`` items; never holds more than one list."""
    if size < 1:
        raise ValueError(f"shard size must be at least 1, got {size}")
    iterator = iter(items)
    while shard := list(itertools.islice(iterator, size)):
        yield shard


@dataclass
class PromptShard:
    """One shard of a prompt file: the valid records and the unreadable lines among its items."""

    index: int  # 1-based
    records: list[PromptRecord] = field(default_factory=list)
    problems: list[PromptProblem] = field(default_factory=list)

    @property
    def name(self) -> str:
        return shard_name(self.index)


def shard_name(index: int) -> str:
    return f"{index:05d}"


def stream_prompt_shards(path: Path, size: int) -> Iterator[PromptShard]:
    """The prompt file in shards of at most ``size`` meaningful lines (records and problems)."""
    for index, items in enumerate(shard_records(read_prompt_file(path), size), start=1):
        shard = PromptShard(index)
        for item in items:
            (shard.records if isinstance(item, PromptRecord) else shard.problems).append(item)
        yield shard


def count_prompt_lines(path: Path) -> int:
    """Lines that are neither blank nor ``#`` comments (streamed): the length of a progress bar."""
    count = 0
    with open(check_prompt_file(path), "rb") as stream:
        for raw in stream:
            stripped = raw.strip().removeprefix(b"\xef\xbb\xbf").strip()
            count += bool(stripped) and not stripped.startswith(b"#")
    return count


def stream_plan_files(plans_dir: Path, size: int) -> Iterator[list[Path]]:
    """The ``*.json`` files of ``plans_dir`` in name order, in shards of at most ``size``.

    The sorted names are held (one short string per plan, for a stable shard order on reruns);
    the plans themselves are read one shard at a time.
    """
    names = sorted(entry.name for entry in os.scandir(plans_dir) if entry.name.endswith(".json") and entry.is_file())
    yield from shard_records((Path(plans_dir) / name for name in names), size)


# --- shard files: the plan stage's result, the render stage's input -------------------------------


@dataclass
class ShardWork:
    """What the render stage does for one shard: render ``to_render`` (prompt id, source line);
    ``rows`` are already final (unreadable lines, prompts without a plan)."""

    index: int
    to_render: list[tuple[str, str]] = field(default_factory=list)
    rows: list[ManifestRow] = field(default_factory=list)

    @property
    def name(self) -> str:
        return shard_name(self.index)


def shard_file(run_dir: Path, index: int) -> Path:
    return Path(run_dir) / SHARDS_DIR / f"shard-{shard_name(index)}.jsonl"


def clear_shard_files(run_dir: Path) -> None:
    """Shard files are derived from the prompt file: a new plan stage writes them all again."""
    for pattern in ("shard-*.jsonl", ".shard-*.jsonl.tmp"):
        for path in (Path(run_dir) / SHARDS_DIR).glob(pattern):
            path.unlink()


def write_shard_file(run_dir: Path, work: ShardWork) -> Path:
    path = shard_file(run_dir, work.index)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"render": prompt_id, "source": source}) for prompt_id, source in work.to_render]
    lines += [json.dumps({"row": json.loads(row.model_dump_json())}) for row in work.rows]
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    temporary.replace(path)
    return path


def read_shard_file(path: Path) -> ShardWork:
    index = int(Path(path).stem.removeprefix("shard-"))
    work = ShardWork(index)
    with open(path, encoding="utf-8") as stream:
        for line in stream:
            if not line.strip():
                continue
            item = json.loads(line)
            if "render" in item:
                work.to_render.append((item["render"], item.get("source", "")))
            else:
                work.rows.append(ManifestRow.model_validate(item["row"]))
    return work


def shard_files(run_dir: Path) -> list[Path]:
    return sorted((Path(run_dir) / SHARDS_DIR).glob("shard-*.jsonl"))


# --- manifest parts ------------------------------------------------------------------------------


def part_path(run_dir: Path, index: int) -> Path:
    return Path(run_dir) / PARTS_DIR / f"part-{shard_name(index)}.parquet"


def shard_journal_dir(run_dir: Path, index: int) -> Path:
    return Path(run_dir) / PARTS_DIR / f"journal-{shard_name(index)}"


def append_shard_rows(run_dir: Path, index: int, rows: Iterable[ManifestRow]) -> None:
    """Durably record rows of a shard in progress (one fsync per call), before its part exists."""
    directory = shard_journal_dir(run_dir, index)
    directory.mkdir(parents=True, exist_ok=True)
    append_rows(directory, rows)


def write_part(run_dir: Path, index: int, rows: list[ManifestRow]) -> Path:
    """The shard's rows as ``manifest.parts/part-NNNNN.parquet`` (atomically); the shard's journal
    is then removed. When the run also keeps the classic journal (``manifest.jsonl``, written by
    ``direct2v run``/``eval``), the rows are appended there too, so that it still holds every row."""
    run_dir = Path(run_dir)
    path = part_path(run_dir, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    pq.write_table(rows_to_table(rows), temporary)
    fsync_path(temporary)
    temporary.replace(path)
    fsync_path(path.parent)
    if (run_dir / JOURNAL_NAME).exists():
        append_rows(run_dir, rows)
    shutil.rmtree(shard_journal_dir(run_dir, index), ignore_errors=True)
    return path


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


def _journal_batches(path: Path, batch_rows: int) -> Iterator[pa.Table]:
    """A JSON-lines journal in tables of ``batch_rows`` valid rows (torn lines skipped, as
    ``manifest.read_journal`` does), in file order."""
    rows: list[ManifestRow] = []
    with open(path, encoding="utf-8", errors="replace") as stream:
        for line in stream:
            try:
                rows.append(ManifestRow.model_validate_json(line))
            except ValueError:
                continue
            if len(rows) >= batch_rows:
                yield rows_to_table(rows)
                rows = []
    if rows:
        yield rows_to_table(rows)


def _parquet_batches(path: Path, batch_rows: int, columns: list[str] | None = None) -> Iterator[pa.Table]:
    with pq.ParquetFile(path) as parquet:
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns, use_threads=False):
            yield pa.Table.from_batches([batch]) if columns else _conform(batch)


def manifest_sources(run_dir: Path) -> list[Path]:
    """Every file holding manifest rows of the run, oldest first (a later row wins)."""
    run_dir = Path(run_dir)
    parts = run_dir / PARTS_DIR
    sources = [run_dir / MANIFEST_NAME, run_dir / JOURNAL_NAME]
    sources += sorted(parts.glob("part-*.parquet"))
    sources += sorted(parts.glob(f"journal-*/{JOURNAL_NAME}"))
    return [path for path in sources if path.is_file()]


def _sequence(start: int, count: int) -> pa.Array:
    return pa.array(np.arange(start, start + count, dtype=np.int64))


def _batches(path: Path, batch_rows: int, ids_only: bool = False) -> Iterator[pa.Table]:
    if path.suffix == ".parquet":
        return _parquet_batches(path, batch_rows, ["prompt_id"] if ids_only else None)
    return _journal_batches(path, batch_rows)


@dataclass
class CompactResult:
    """The compacted manifest and what it holds (counted while writing it)."""

    path: Path
    rows: int = 0
    statuses: Counter = field(default_factory=Counter)
    failed_stages: Counter = field(default_factory=Counter)
    failures: list[dict] = field(default_factory=list)  # the first ``failure_sample`` failed rows


def compact_parts(run_dir: Path, batch_rows: int = COMPACT_BATCH_ROWS, failure_sample: int = 50) -> CompactResult:
    """Merge every manifest source of the run into ``manifest.parquet`` (atomically), last row per
    prompt id winning, then remove the parts and shard journals it folded in.

    Bounded memory: besides one batch of rows, only the prompt ids and their winning sequence
    numbers are held. Safe to repeat: a crash before the parts are removed leaves sources whose
    rows are already in the manifest, and merging them again gives the same table.
    """
    run_dir = Path(run_dir)
    sources = manifest_sources(run_dir)

    # Pass 1: which row (global sequence number) is the last one of each prompt id.
    id_tables, offset = [], 0
    for source in sources:
        for batch in _batches(source, batch_rows, ids_only=True):
            ids = batch.column("prompt_id").combine_chunks() if batch.num_rows else pa.array([], pa.string())
            id_tables.append(pa.table({"prompt_id": ids, "seq": _sequence(offset, batch.num_rows)}))
            offset += batch.num_rows
    keep = np.zeros(offset, dtype=bool)  # one byte per row read
    if id_tables:
        grouped = pa.concat_tables(id_tables).group_by("prompt_id", use_threads=False).aggregate([("seq", "max")])
        keep[grouped.column("seq_max").to_numpy()] = True
    del id_tables

    # Pass 2: stream the rows again and write only the winners, row group by row group.
    result = CompactResult(run_dir / MANIFEST_NAME)
    temporary = run_dir / f".{MANIFEST_NAME}.tmp"
    buffered: list[pa.Table] = []
    buffered_rows, offset = 0, 0
    with pq.ParquetWriter(temporary, SCHEMA) as writer:
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
    fsync_path(temporary)
    temporary.replace(result.path)
    fsync_path(run_dir)
    for source in sources:
        if source.parent.parent.name == PARTS_DIR:  # a shard journal (a shard cut short)
            if (run_dir / JOURNAL_NAME).exists():  # keep the classic journal complete (as write_part does)
                for table in _journal_batches(source, batch_rows):
                    append_rows(run_dir, [row_from_record(record) for record in table.to_pylist()])
            shutil.rmtree(source.parent, ignore_errors=True)
        elif source.parent.name == PARTS_DIR:  # a part
            source.unlink(missing_ok=True)
    return result


def _count(result: CompactResult, table: pa.Table, failure_sample: int) -> None:
    result.rows += table.num_rows
    statuses = table.column("status").to_pylist()
    result.statuses.update(statuses)
    failed = [i for i, status in enumerate(statuses) if status != "ok"]
    if not failed:
        return
    stages = table.column("failed_stage").to_pylist()
    result.failed_stages.update(stages[i] or "qc" for i in failed)
    room = failure_sample - len(result.failures)
    if room > 0:
        picked = table.take(failed[:room]).select(["prompt_id", "source", "failed_stage", "error"]).to_pylist()
        result.failures.extend(picked)


def lookup_rows(manifest_path: Path, prompt_ids: Iterable[str]) -> dict[str, ManifestRow]:
    """The rows of ``prompt_ids`` in a compacted manifest, read with a filter (never the whole table)."""
    ids = list(prompt_ids)
    if not ids or not Path(manifest_path).is_file():
        return {}
    table = _conform(pq.read_table(manifest_path, filters=pc.field("prompt_id").isin(ids)))
    return {record["prompt_id"]: row_from_record(record) for record in table.to_pylist()}


def row_from_record(record: dict) -> ManifestRow:
    """A manifest row read back from Parquet (nulls become the model's defaults)."""
    return ManifestRow.model_validate({key: value for key, value in record.items() if value is not None})


# --- reusing finished videos of other runs, by video hash -----------------------------------------

_REUSE_COLUMNS = ["video_hash", "status", "video_path", "frame_count", "fps"]


class ReuseIndex:
    """Finished videos of earlier runs, by ``video_hash``: one entry (hash, run, path, frame
    count, fps) per distinct hash, so its size is the number of distinct finished videos, however
    many runs made them.

    Built from the ``manifest.parquet`` of each run directory matched by ``patterns`` (globs such
    as ``outputs/nightly/*``). Run ids sort by time, so runs are read newest first and the newest
    run that finished a hash is the one used.
    """

    def __init__(self, patterns: Iterable[str], exclude: Path | None = None, batch_rows: int = COMPACT_BATCH_ROWS):
        excluded = Path(exclude).resolve() if exclude else None
        dirs = sorted({Path(p) for pattern in patterns for p in glob(str(pattern))})
        self.run_dirs = [d for d in dirs if (d / MANIFEST_NAME).is_file() and d.resolve() != excluded]
        seen: set[str] = set()
        tables = []
        for number in reversed(range(len(self.run_dirs))):
            with pq.ParquetFile(self.run_dirs[number] / MANIFEST_NAME) as parquet:
                if "video_hash" not in parquet.schema_arrow.names:  # a manifest older than video hashes
                    continue
                columns = [c for c in _REUSE_COLUMNS if c in parquet.schema_arrow.names]
                for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns, use_threads=False):
                    finished = pa.Table.from_batches([batch]).filter(pc.and_(
                        pc.equal(batch.column("status"), "ok"),
                        pc.invert(pc.equal(pc.fill_null(batch.column("video_hash"), ""), ""))))
                    new = [h not in seen and not seen.add(h) for h in finished.column("video_hash").to_pylist()]
                    if any(new):
                        kept = _conform(finished.filter(pa.array(new))).select(_REUSE_COLUMNS)
                        tables.append(kept.append_column("run", pa.array([number] * kept.num_rows, pa.int32())))
        self.table = pa.concat_tables(tables) if tables else None
        log.info("reuse index: %d finished videos in %d earlier runs", len(self), len(self.run_dirs))

    def __len__(self) -> int:
        return self.table.num_rows if self.table is not None else 0

    def find(self, hashes: Iterable[str]) -> dict[str, tuple[Path, dict]]:
        """``hash -> (run directory, row)`` for the hashes that an earlier run finished."""
        wanted = list(set(hashes))
        if self.table is None or not wanted:
            return {}
        matches = self.table.filter(pc.is_in(self.table.column("video_hash"), value_set=pa.array(wanted)))
        found: dict[str, tuple[Path, dict]] = {}
        for record in matches.to_pylist():
            found[record["video_hash"]] = (self.run_dirs[record.pop("run")], record)
        return found


def link_video(source: Path, target: Path) -> Path:
    """Put a finished video of another run at ``target``: a hard link (no copy) where the file
    system allows it, else a copy; published atomically under the name ``encode_mp4`` uses for
    partial files, so an interrupted run's cleanup removes a half-made one."""
    from .encode import partial_name

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = partial_name(target)
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:
        shutil.copy2(source, temporary)
    temporary.replace(target)
    return target
