"""Prompt lists of any length in bounded memory: shards, and the shard files between the stages.

``stream_prompt_shards`` reads the prompt file line by line (``prompt_files.read_prompt_file``) and
yields shards of at most ``size`` records/problems; only one shard is held at a time. Between the
plan and the render stage each shard is a small file, ``shards/shard-00001.jsonl``: the prompt ids
to render (with their source) and the rows already final (unreadable lines, prompts without a
plan). Pure file handling: no Prefect, no torch.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from direct2v.core.files import write_atomically
from direct2v.director.prompt_files import check_prompt_file, numbered_lines, read_prompt_file
from direct2v.director.prompts import PromptProblem, PromptRecord
from direct2v.job.manifest import ManifestRow
from direct2v.job.rundir import SHARDS_DIR, shard_name

T = TypeVar("T")


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


def stream_prompt_shards(path: Path, size: int) -> Iterator[PromptShard]:
    """The prompt file in shards of at most ``size`` meaningful lines (records and problems)."""
    for index, items in enumerate(shard_records(read_prompt_file(path), size), start=1):
        shard = PromptShard(index)
        for item in items:
            (shard.records if isinstance(item, PromptRecord) else shard.problems).append(item)
        yield shard


def count_prompt_lines(path: Path) -> int:
    """Lines that are neither blank nor ``#`` comments (streamed): the length of a progress bar,
    and 0 for a file with no prompts at all."""
    count = 0
    path = check_prompt_file(path)
    with open(path, "rb") as stream:
        for _, raw in numbered_lines(stream):
            if raw is None:  # a line too long to hold: a problem, so a meaningful line
                count += 1
                continue
            stripped = raw.strip().removeprefix(b"\xef\xbb\xbf").strip()
            count += bool(stripped) and (path.suffix.lower() == ".csv" or not stripped.startswith(b"#"))
    return max(0, count - 1) if path.suffix.lower() == ".csv" else count  # a CSV's first line is its header


def stream_plan_files(plans_dir: Path, size: int) -> Iterator[list[Path]]:
    """The ``*.json`` files of ``plans_dir`` in name order, in shards of at most ``size``. The
    sorted names are held (one short string per plan, for a stable shard order on reruns); the
    plans themselves are read one shard at a time."""
    names = sorted(entry.name for entry in os.scandir(plans_dir) if entry.name.endswith(".json") and entry.is_file())
    yield from shard_records((Path(plans_dir) / name for name in names), size)


@dataclass
class ShardWork:
    """What the render stage does for one shard: render ``to_render`` (prompt id, source);
    ``rows`` are already final (unreadable lines, prompts without a plan)."""

    index: int
    to_render: list[tuple[str, str]] = field(default_factory=list)
    rows: list[ManifestRow] = field(default_factory=list)


def shard_file(run_dir: Path, index: int) -> Path:
    return Path(run_dir) / SHARDS_DIR / f"shard-{shard_name(index)}.jsonl"


def clear_shard_files(run_dir: Path) -> None:
    """Shard files are derived from the prompt file: a new plan stage writes them all again."""
    for path in (Path(run_dir) / SHARDS_DIR).glob("shard-*.jsonl"):
        path.unlink()


def write_shard_file(run_dir: Path, work: ShardWork) -> Path:
    path = shard_file(run_dir, work.index)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"render": prompt_id, "source": source}) for prompt_id, source in work.to_render]
    lines += [json.dumps({"row": json.loads(row.model_dump_json())}) for row in work.rows]
    return write_atomically(path, "".join(line + "\n" for line in lines))


def read_shard_file(path: Path) -> ShardWork:
    work = ShardWork(int(Path(path).stem.removeprefix("shard-")))
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
