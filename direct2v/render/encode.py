"""Frames -> H.264 MP4 with ffmpeg-python, checked by reading the file back.

The ffmpeg binary is the one the ``imageio-ffmpeg`` wheel ships (it has libx264), so a fresh
machine needs no system ffmpeg. A video is written under a temporary name, decoded again to
count its frames and read its frame rate, and only then renamed into place: a crash never
leaves a half-written file under the final name, and a full disk is a ``DiskFullError`` (the
partial file removed), never a failed video.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import ffmpeg
import imageio_ffmpeg
import numpy as np
from pydantic import BaseModel

from direct2v.core.errors import Direct2VError
from direct2v.core.files import DiskFullError, atomic_path, says_disk_full, writing


class EncodedVideo(BaseModel):
    """What was read back from a finished MP4."""

    path: Path
    frame_count: int
    fps: float
    duration_s: float
    width: int
    height: int


class EncodeError(Direct2VError, RuntimeError):
    """ffmpeg failed, or the file it wrote does not hold what was asked for."""


def ffmpeg_exe() -> str:
    return imageio_ffmpeg.get_ffmpeg_exe()


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """(F, H, W, 3) floats in [0, 1] or uint8 -> contiguous uint8."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (F, H, W, 3), got {frames.shape}")
    if frames.dtype != np.uint8:
        frames = (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return np.ascontiguousarray(frames)


@contextlib.contextmanager
def _decoding(path: Path) -> Iterator[tuple[dict, Iterator[bytes]]]:
    """(metadata, raw RGB24 frames) of ``path``, decoded by the wheel's ffmpeg; EncodeError if it
    cannot be read."""
    reader = imageio_ffmpeg.read_frames(str(path))
    try:
        try:
            meta = next(reader)
        except (RuntimeError, OSError, StopIteration) as error:
            raise EncodeError(f"cannot read back {path}: {error}") from None
        yield meta, reader
    except (RuntimeError, OSError) as error:
        raise EncodeError(f"cannot read back {path}: {error}") from None
    finally:
        reader.close()


def probe_video(path: Path) -> EncodedVideo:
    """Decode ``path`` fully: frame count, frame rate, duration and size as a player sees them."""
    with _decoding(path) as (meta, frames):
        frame_count = sum(1 for _ in frames)
    width, height = meta["size"]
    return EncodedVideo(
        path=Path(path),
        frame_count=frame_count,
        fps=float(meta["fps"]),
        duration_s=float(meta["duration"]),
        width=width,
        height=height,
    )


def read_video(path: Path) -> np.ndarray:
    """Decode an MP4 to (F, H, W, 3) uint8 RGB frames."""
    with _decoding(path) as (meta, raw_frames):
        width, height = meta["size"]
        frames = [np.frombuffer(chunk, dtype=np.uint8).reshape(height, width, 3) for chunk in raw_frames]
    if not frames:
        raise EncodeError(f"{path}: no frames")
    return np.stack(frames)


def encode_mp4(frames: np.ndarray, path: Path, fps: int, crf: int = 18, comment: str | None = None) -> EncodedVideo:
    """Encode (F, H, W, 3) frames to ``path`` at ``fps`` and verify the result before publishing it.

    ``comment`` is stored in the MP4's ``comment`` tag (``read_comment``): the run stores the
    video's identity there, so that a video finished just before a crash is recognised.
    """
    frames = to_uint8(frames)
    count, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"H.264 (yuv420p) needs even frame sizes, got {width}x{height}")
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    tags = {"metadata": f"comment={comment}"} if comment else {}
    with atomic_path(path, partial_name(path)) as partial:  # read back before the name says it is complete
        stream = (
            ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}", framerate=fps)
            .output(
                str(partial), vcodec="libx264", pix_fmt="yuv420p", crf=crf, r=fps, movflags="+faststart", format="mp4",
                **tags,
            )
            .overwrite_output()
        )
        try:
            stream.run(cmd=ffmpeg_exe(), input=frames.tobytes(), capture_stdout=True, capture_stderr=True)
        except (ffmpeg.Error, OSError) as error:  # OSError: ffmpeg could not start, or died mid-pipe
            if not isinstance(error, ffmpeg.Error):
                raise EncodeError(f"ffmpeg failed for {path.name}: {error}") from None
            message = error.stderr.decode("utf-8", "replace")
            if says_disk_full(message):  # ffmpeg reports the errno only as text
                raise DiskFullError(path) from None
            tail = message.strip().splitlines()[-3:]
            raise EncodeError(f"ffmpeg failed for {path.name}: {' | '.join(tail)}") from None
        video = probe_video(partial)
        if video.frame_count != count or abs(video.fps - fps) > 1e-3:
            raise EncodeError(
                f"{path.name}: wrote {video.frame_count} frames at {video.fps} fps, expected {count} at {fps}"
            )
    return video.model_copy(update={"path": path})


def read_comment(path: Path) -> str:
    """The MP4's ``comment`` tag ("" if none); raises EncodeError if ffmpeg cannot read the file."""
    import subprocess

    done = subprocess.run(  # argv list, no shell
        [ffmpeg_exe(), "-v", "error", "-nostdin", "-i", str(path), "-f", "ffmetadata", "-"],
        capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120,
    )
    if done.returncode != 0:
        raise EncodeError(f"cannot read the tags of {path}: {done.stderr.strip()[-300:]}")
    for line in done.stdout.splitlines():
        if line.startswith("comment="):  # ffmetadata escapes = ; # \\ and newlines with a backslash
            return re.sub(r"\\(.)", r"\1", line.removeprefix("comment="))
    return ""


def partial_name(path: Path) -> Path:
    """Where ``encode_mp4`` writes ``path`` before it has been read back (a crash may leave it)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.partial.mp4")
