"""Durable file writes and model ids: the small helpers every stage shares.

Everything a run publishes is written under a temporary name, flushed to disk and renamed, so a
crash at any point leaves either the old file or the new one, never a half-written file under
the final name. A disk (or quota) that fills up during a write is a ``DiskFullError`` naming the
file: the write is undone, and the job stops there, resumable once there is space.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from direct2v.core.errors import Direct2VError

#: What the system says when a disk or a quota is full: ENOSPC, EDQUOT.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(Direct2VError):
    """The disk (or the user's quota) filled up while writing ``path``. Not an OSError, so that no
    handler meant for one bad file turns it into a failed video: the job stops (exit code 3), with
    every finished video and manifest row kept. ``run_dir``, once known, names the resume command."""

    def __init__(self, path: str | Path, run_dir: str | Path | None = None):
        super().__init__(str(path))  # (the args a pickled copy, e.g. from a Dask worker, is made from)
        self.path = Path(path)
        self.run_dir = Path(run_dir) if run_dir is not None else None

    def __str__(self) -> str:
        written = f"disk full writing {self.path}"
        return written if self.run_dir is None else f"{written}: free space, then: direct2v resume {self.run_dir}"


def says_disk_full(text: str) -> bool:
    """Whether an error text is the system's for a full disk or quota (what ffmpeg and pyarrow keep
    of the errno)."""
    return any(os.strerror(code) in text for code in DISK_FULL_ERRNOS)


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and (error.errno in DISK_FULL_ERRNOS or says_disk_full(str(error)))


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Writes to ``path`` inside: a full disk is a ``DiskFullError`` naming it, other errors pass."""
    try:
        yield
    except OSError as error:
        if is_disk_full(error):
            raise DiskFullError(path) from error
        raise


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a directory's entries (after a rename), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_name(path: Path) -> Path:
    """Where ``atomic_path`` writes ``path`` first (``clean_partials`` removes what a crash left)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")


@contextlib.contextmanager
def atomic_path(path: Path, temporary: Path | None = None) -> Iterator[Path]:
    """Yield a temporary path to write (``temporary``, default ``temporary_name(path)``: a writer
    whose tool needs the suffix, ffmpeg, names its own); on success it is fsync'd and renamed to
    ``path`` (and the directory entry fsync'd), on an exception it is removed."""
    path = Path(path)
    temporary = Path(temporary) if temporary is not None else temporary_name(path)
    try:
        with writing(path):
            yield temporary
            fsync_path(temporary)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    with writing(path):
        temporary.replace(path)
        fsync_path(path.parent)


@contextlib.contextmanager
def staged_directory(path: Path) -> Iterator[Path]:
    """Yield an empty ``<path>.partial`` directory to fill; on success it replaces ``path`` (a model
    directory is never seen half written), on an exception it is removed."""
    import shutil

    path = Path(path)
    staging = path.with_name(path.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    try:
        with writing(path):
            yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    staging.replace(path)


def write_atomically(path: Path, text: str) -> Path:
    """``text`` as ``path``, all or nothing (``atomic_path``); a full disk is a DiskFullError."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


#: The weights file of a LoRA directory (diffusers' ``save_lora_weights`` name).
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


def model_id(model_dir: Path, *identifying_files: str) -> str:
    """A short, stable name for a local model: ``<directory name>@<hash>``, the hash over the
    first of ``identifying_files`` that exists ("unknown" if none does)."""
    model_dir = Path(model_dir)
    for name in identifying_files:
        if (model_dir / name).is_file():
            return f"{model_dir.name}@{hashlib.sha256((model_dir / name).read_bytes()).hexdigest()[:8]}"
    return f"{model_dir.name}@unknown"


def render_model_id(model_dir: Path, lora_dir: Path | None = None) -> str:
    """The render model's name in rows and hashes: ``<directory>@<hash of model_index.json>``, and
    with a LoRA ``+<lora directory>@<hash of its weights>``."""
    name = model_id(model_dir, "model_index.json")
    if lora_dir is not None:
        name += "+" + model_id(lora_dir, LORA_WEIGHTS)
    return name


def directory_hash(path: Path) -> str:
    """sha256 over a directory's files (names and bytes, sorted): which model a copy was made from."""
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
