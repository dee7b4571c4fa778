"""A run as a training dataset: WebDataset tar shards, or a directory Hugging Face ``datasets`` loads.

One sample per finished video (``ok`` rows; QC-``rejected`` ones too with ``include_rejected``;
failed rows and rows whose video file is missing are counted, never exported), in prompt-id order:

* ``webdataset``: ``shard-00000.tar`` ... of at most ``max_samples`` samples and about
  ``max_bytes`` bytes each, every sample three members, ``KEY.json`` (:func:`sample_metadata`),
  ``KEY.mp4`` and ``KEY.txt`` (the user prompt: the caption), then ``index.json`` (shard -> keys,
  counts, sha256). The tars are deterministic: the same run exported twice gives the same bytes
  (members in sorted order, mtime 0, owner 0/0, mode 0644, USTAR headers, no compression: MP4 does
  not compress).
* ``hf``: ``data/train-00000-of-0000N.parquet`` (the metadata, ``max_samples`` rows per file, and
  ``video``: the video's path relative to the dataset directory), ``videos/KEY.mp4`` (hard links
  where the file system allows, else copies), ``index.json``: the layout ``datasets.load_dataset(DIR)``
  reads as the ``train`` split, with no decoding library needed.

Every file is written under a temporary name and renamed when complete (no half shard is ever
visible; a full disk is a ``DiskFullError``, the shards complete so far kept). An export is resumable: shards (or Parquet files) already complete from an interrupted
export of the same samples are kept, checked by their sha256 in ``export-progress.jsonl``.

A WebDataset key is the text before the first dot of a member's name, so a prompt id with dots
gets them replaced and a short hash of the id appended (``sample_key``); ``prompt_id`` is in the
JSON either way. Several videos of one prompt (the setting ``samples``) carry ``sample`` (0, 1, ...)
and ``sample_of`` (the prompt's id), in the JSON and the Parquet rows: group or hold out by it.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from direct2v.core.errors import Direct2VError
from direct2v.core.files import atomic_path, write_atomically, writing
from direct2v.job.manifest import ManifestRow, read_rows
from direct2v.job.request import EXPORT_FORMATS
from direct2v.job.videos import link_video

FORMATS = EXPORT_FORMATS
INDEX_NAME = "index.json"
PROGRESS_NAME = "export-progress.jsonl"
#: What an export leaves out, by reason (reported in index.json and the summary).
SKIP_REASONS = ("failed", "rejected", "missing_video")
_TAR_BLOCK = 512
_METRICS = ("clip_frame", "clip_prompt", "avg_dist", "consistency", "flicker")


class ExportError(Direct2VError, ValueError):
    """An export cannot be made (bad options, or nothing to export)."""


@dataclass(frozen=True)
class Sample:
    key: str
    row: ManifestRow
    video: Path


@dataclass(frozen=True)
class ExportResult:
    format: str
    out_dir: Path
    samples: int
    files: list[str]
    kept: int  # complete files of an earlier, interrupted export that were kept
    skipped: dict[str, int]
    index: Path


def sample_key(prompt_id: str) -> str:
    """The WebDataset key of a prompt id: the id itself, or, with dots in it, the dots as ``_`` plus a hash."""
    if "." not in prompt_id:
        return prompt_id
    return f"{prompt_id.replace('.', '_')}-{hashlib.sha256(prompt_id.encode()).hexdigest()[:8]}"


def sample_metadata(row: ManifestRow) -> dict:
    """A sample's JSON: what made the video and what it shows, from its manifest row."""
    metadata = {
        "prompt_id": row.prompt_id, "sample": row.sample, "sample_of": row.sample_of,
        "prompt": row.prompt, "frame_prompts": list(row.frame_prompts),
        "fps": row.fps, "frame_count": row.frame_count, "seed": row.seed,
        "director_model": row.director_model, "render_model": row.render_model,
        "template_version": row.template_version, "plan_warnings": list(row.plan_warnings),
        "video_hash": row.video_hash, "status": row.status,
    }
    metrics = {name: getattr(row, name) for name in _METRICS if getattr(row, name) is not None}
    if metrics:
        metadata["metrics"] = metrics
    return metadata


def select_samples(run_dir: Path, include_rejected: bool = False) -> tuple[list[Sample], dict[str, int]]:
    """The run's exportable samples in prompt-id order, and what was left out by reason."""
    run_dir = Path(run_dir)
    skipped = dict.fromkeys(SKIP_REASONS, 0)
    samples = []
    for row in sorted(read_rows(run_dir), key=lambda r: r.prompt_id):
        if row.status == "rejected" and not include_rejected:
            skipped["rejected"] += 1
        elif row.status not in ("ok", "rejected"):
            skipped["failed"] += 1
        elif not row.video_path or not (run_dir / row.video_path).is_file():
            skipped["missing_video"] += 1
        else:
            samples.append(Sample(sample_key(row.prompt_id), row, run_dir / row.video_path))
    return samples, skipped


# --- WebDataset ------------------------------------------------------------------------------------


def _members(sample: Sample) -> list[tuple[str, bytes | Path]]:
    metadata = json.dumps(sample_metadata(sample.row), sort_keys=True, ensure_ascii=False).encode("utf-8")
    return [(f"{sample.key}.json", metadata), (f"{sample.key}.mp4", sample.video),
            (f"{sample.key}.txt", (sample.row.prompt or "").encode("utf-8"))]


def _member_bytes(size: int) -> int:
    return _TAR_BLOCK + -(-size // _TAR_BLOCK) * _TAR_BLOCK  # header + data padded to whole blocks


def _sample_bytes(sample: Sample) -> int:
    return sum(_member_bytes(data.stat().st_size if isinstance(data, Path) else len(data))
               for _, data in _members(sample))


def pack_shards(samples: Sequence[Sample], max_samples: int, max_bytes: int) -> list[list[Sample]]:
    """Consecutive samples per shard: at most ``max_samples``, and no more than ``max_bytes`` of tar
    unless a single sample is larger (it then gets a shard of its own)."""
    shards: list[list[Sample]] = []
    size = 0
    for sample in samples:
        sample_size = _sample_bytes(sample)
        if not shards or len(shards[-1]) >= max_samples or (shards[-1] and size + sample_size > max_bytes):
            shards.append([])
            size = 0
        shards[-1].append(sample)
        size += sample_size
    return shards


def write_tar(path: Path, samples: Iterable[Sample], progress: Callable[[], None] = lambda: None) -> str:
    """Write one deterministic tar shard atomically; returns its sha256."""
    with atomic_path(path) as temporary:
        with tarfile.open(temporary, "w", format=tarfile.USTAR_FORMAT) as tar:
            for sample in samples:
                for name, data in _members(sample):
                    payload = data.read_bytes() if isinstance(data, Path) else data
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = len(payload), 0, 0o644
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    tar.addfile(info, io.BytesIO(payload))
                progress()
    return _sha256(path)


# --- Hugging Face datasets ---------------------------------------------------------------------------

HF_SCHEMA = pa.schema([
    pa.field("key", pa.string()), pa.field("video", pa.string()), pa.field("caption", pa.string()),
    pa.field("prompt_id", pa.string()), pa.field("sample", pa.int64()), pa.field("sample_of", pa.string()),
    pa.field("frame_prompts", pa.list_(pa.string())),
    pa.field("fps", pa.int64()), pa.field("frame_count", pa.int64()), pa.field("seed", pa.int64()),
    pa.field("director_model", pa.string()), pa.field("render_model", pa.string()),
    pa.field("template_version", pa.string()), pa.field("plan_warnings", pa.list_(pa.string())),
    pa.field("video_hash", pa.string()), pa.field("status", pa.string()),
    *(pa.field(name, pa.float64()) for name in _METRICS),
])


def hf_record(sample: Sample) -> dict:
    """One Parquet row: the sample's metadata, its video's relative path, the prompt as caption."""
    metadata = sample_metadata(sample.row)
    metrics = metadata.pop("metrics", {})
    return {"key": sample.key, "video": f"videos/{sample.key}.mp4", "caption": metadata["prompt"], **metadata,
            **{name: metrics.get(name) for name in _METRICS}}


def write_parquet(path: Path, samples: Sequence[Sample], out_dir: Path,
                  progress: Callable[[], None] = lambda: None) -> str:
    """Link each sample's video into ``out_dir/videos``, then write its rows atomically; returns the sha256."""
    for sample in samples:
        link_video(sample.video, out_dir / "videos" / f"{sample.key}.mp4")
        progress()
    table = pa.Table.from_pylist([hf_record(sample) for sample in samples], schema=HF_SCHEMA)
    with atomic_path(path) as temporary:
        pq.write_table(table, temporary)
    return _sha256(path)


# --- the export ----------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _done_files(out_dir: Path) -> dict[str, dict]:
    """What an earlier export into ``out_dir`` finished: file name -> its journal entry."""
    journal = out_dir / PROGRESS_NAME
    if not journal.is_file():
        return {}
    entries = {}
    for line in journal.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
            entries[entry["name"]] = entry
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut short by a crash: that file is made again
    return entries


def export_run(
    run_dir: Path,
    out_dir: Path,
    format: Literal["webdataset", "hf"] = "webdataset",
    max_samples: int = 1000,
    max_bytes: int = 1 << 30,
    include_rejected: bool = False,
    progress: bool = False,
) -> ExportResult:
    """Export the run in ``run_dir`` into ``out_dir`` (module docstring); resumes an interrupted export."""
    from tqdm import tqdm

    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if max_samples < 1 or max_bytes < 1:
        raise ExportError("max_samples and max_bytes must be at least 1")
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} is a file; give --out a directory (new or from an earlier export)")
    if out_dir.resolve() == run_dir.resolve():
        raise ExportError(f"export into a directory of its own (e.g. {run_dir / 'export'}), not the run directory")
    samples, skipped = select_samples(run_dir, include_rejected)
    if not samples:
        raise ExportError(f"{run_dir}: no finished videos to export (left out: {skipped})")
    out_dir.mkdir(parents=True, exist_ok=True)

    if format == "webdataset":
        groups = pack_shards(samples, max_samples, max_bytes)
        names = [f"shard-{i:05d}.tar" for i in range(len(groups))]
    else:
        groups = [list(samples[start : start + max_samples]) for start in range(0, len(samples), max_samples)]
        names = [f"data/train-{i:05d}-of-{len(groups):05d}.parquet" for i in range(len(groups))]
    done = _done_files(out_dir)
    bar = tqdm(total=len(samples), desc=f"export {format}", unit="video", disable=not progress)
    entries, kept = [], 0
    with writing(out_dir / PROGRESS_NAME), open(out_dir / PROGRESS_NAME, "a", encoding="utf-8") as journal:
        for name, group in zip(names, groups):
            keys = [sample.key for sample in group]
            earlier = done.get(name)
            path = out_dir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if (earlier and earlier.get("keys") == keys and path.is_file() and _sha256(path) == earlier["sha256"]
                    and (format == "webdataset" or all((out_dir / "videos" / f"{k}.mp4").is_file() for k in keys))):
                entry, kept = earlier, kept + 1
                bar.update(len(group))
            else:
                step = lambda: bar.update(1)  # noqa: E731
                if format == "webdataset":
                    sha = write_tar(path, group, step)
                else:
                    sha = write_parquet(path, group, out_dir, step)
                entry = {"name": name, "keys": keys, "samples": len(group), "bytes": path.stat().st_size, "sha256": sha}
                journal.write(json.dumps(entry) + "\n")
                journal.flush()
            entries.append(entry)
    bar.close()
    index = {"format": format, "run_id": run_dir.name, "samples": len(samples), "skipped": skipped,
             "include_rejected": include_rejected, "files": entries}
    index_path = write_atomically(out_dir / INDEX_NAME, json.dumps(index, indent=2, sort_keys=True) + "\n")
    return ExportResult(format, out_dir, len(samples), names, kept, skipped, index_path)
