"""Prompt records: the first stage's contract, and what a line that cannot be one becomes.

A ``PromptRecord`` is one video idea as the director receives it (prompt, id, frames, fps, seed,
samples, and the file and line it came from; ``sample_records`` makes one record per sample); a ``PromptProblem`` names the file and line of a line that is
not one, in our words. Ids are checked to be safe file names. ``prompt_files`` reads the three
prompt file formats into these.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from pydantic import BaseModel, ConfigDict, Field, field_validator

from direct2v.core.config import MAX_SAMPLES
from direct2v.core.errors import Direct2VError

MAX_PROMPT_CHARS = 2000
#: The longest line a prompt file may hold, line end included: far above any valid record (a prompt
#: is at most 2000 characters, 12 bytes each as a JSON escape), far below what could exhaust memory.
#: A longer line is read in bounded pieces and skipped, never held whole.
MAX_LINE_BYTES = 1 << 20
_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")
# Names Windows refuses as file names, whatever the extension.
_RESERVED_IDS = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


class PromptRecord(BaseModel):
    """One video to make. ``frames``/``fps``/``seed`` of None mean "use the run's defaults"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    frames: int | None = Field(None, ge=2, le=512)
    fps: int | None = Field(None, ge=1, le=120)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    samples: int | None = Field(None, ge=1, le=MAX_SAMPLES, description="videos of this prompt (None: the run's)")
    source: str = Field("", description="file:line the record came from")
    # Set by ``sample_records`` only (a prompt file cannot: prompt_files.INTERNAL_FIELDS):
    sample: int = Field(0, ge=0, description="which of the prompt's samples this record asks for")
    sample_of: str | None = Field(None, description="the id of the prompt this record is a sample of")

    @field_validator("prompt")
    @classmethod
    def _clean_prompt(cls, value: str) -> str:
        value = " ".join(value.split())
        if not value:
            raise ValueError("is empty")
        unreadable = first_unprintable(value)
        if unreadable == "\x00":
            raise ValueError("contains a NUL byte")
        if unreadable is not None:  # would reach logs, terminals and file writes as it is
            raise ValueError(f"contains {describe_character(unreadable)}, which is not text")
        return value

    @field_validator("frames", "fps", "seed", "samples", mode="before")
    @classmethod
    def _no_booleans(cls, value: object) -> object:
        if isinstance(value, bool):  # JSON true/false would otherwise pass as 1/0
            raise ValueError("expected a whole number, got a boolean")
        return value

    @field_validator("id")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        return check_safe_id(value)


def sample_seed(seed: int, sample: int) -> int:
    """The render seed of sample ``sample`` of a prompt seeded ``seed``: ``seed`` itself for sample
    0 (a prompt asked for one video is rendered as it always was), else 32 bits of
    sha256("seed:sample") -- not ``seed + sample``, which would be the next prompt's seed in a list
    numbered 0, 1, 2..."""
    if sample == 0:
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed}:{sample}".encode()).digest()[:4], "big")


def sample_id(prompt_id: str, sample: int) -> str:
    return f"{prompt_id}-s{sample}"


def sample_records(record: PromptRecord, samples: int, seed: int) -> list[PromptRecord]:
    """``record`` as the ``samples`` records of its videos: itself when ``samples`` is 1 (ids,
    seeds and plans exactly as without samples), else one per sample k with id ``<id>-s<k>``, the
    render seed ``sample_seed(record's seed or seed, k)``, ``sample`` k and ``sample_of`` the id.
    Raises ValueError when an id would be too long to be a file name."""
    if samples == 1:
        return [record]
    base = record.seed if record.seed is not None else seed
    longest = sample_id(record.id, samples - 1)
    if not is_safe_id(longest):
        raise ValueError(f"id {quoted(record.id, 100)} is too long for {samples} samples (their ids end in "
                         f"-s0 ... -s{samples - 1}, at most 80 characters in all); give the prompt a shorter id")
    return [record.model_copy(update={"id": sample_id(record.id, k), "seed": sample_seed(base, k), "samples": None,
                                      "sample": k, "sample_of": record.id})
            for k in range(samples)]


def first_unprintable(text: str) -> str | None:
    """The first control character (other than whitespace) or lone surrogate of ``text``, or None.
    Surrogates come from JSON escapes such as ``"\\ud800"``: no file can be written with them."""
    for char in text:
        if unicodedata.category(char) in ("Cc", "Cs") and not char.isspace():
            return char
    return None


def describe_character(char: str) -> str:
    kind = "a lone surrogate" if unicodedata.category(char) == "Cs" else "the control character"
    return f"{kind} U+{ord(char):04X}"


def printable(text: str | None) -> str | None:
    """``text`` with its control characters and lone surrogates written as escapes: what a problem
    may quote of a bad line, safe in a log, a terminal and the manifest."""
    if text is None or first_unprintable(text) is None:
        return text
    return "".join(char if first_unprintable(char) is None else char.encode("unicode_escape").decode("ascii")
                   for char in text)


def is_safe_id(value: str) -> bool:
    """Ids become file names (plans, videos, contact sheets): a conservative character set, never a path."""
    return bool(_ID_PATTERN.match(value)) and value.lower().split(".")[0] not in _RESERVED_IDS


def check_safe_id(value: str) -> str:
    """Validator form of ``is_safe_id``: the id, or a ValueError that says what an id may be."""
    if not is_safe_id(value):
        raise ValueError(
            "id must be 1-80 characters of letters, digits, '_', '-', '.', start with a letter "
            f"or digit, and not be a reserved device name; got {quoted(value, 100)}"
        )
    return value


class PromptProblem(BaseModel):
    """A line that could not become a record: where, what, and how to fix it."""

    model_config = ConfigDict(frozen=True)

    source: str
    message: str
    id: str | None = None
    prompt: str | None = None

    @field_validator("id", "prompt")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        return printable(value)  # quoted from a bad line: it must still be writable wherever the row goes

    def __str__(self) -> str:
        return f"{self.source}: {self.message}"


def default_prompt_id(prompt: str, line_number: int) -> str:
    """A stable id for a prompt without one: its line and a short hash of its text."""
    # (surrogatepass: a lone surrogate from a JSON escape must reach the validator that rejects it)
    digest = hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"p{line_number:05d}-{digest}"


#: How to fix a bad value, per field: appended to the validation message.


def quoted(value: object, limit: int = 60) -> str:
    """A bad value as a message quotes it: its repr, cut short. The repr itself can fail (a list
    nested a thousand deep, an integer of thousands of digits): then what kind of value it is."""
    try:
        shown = repr(value)
    except (RecursionError, ValueError):
        return json_type(value)
    return shown[:limit] + "..." if len(shown) > limit else shown


def json_type(value: object) -> str:
    if value is None:
        return "null"
    return {bool: "true/false", int: "a number", float: "a number", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__
    )


class PromptFileError(Direct2VError, ValueError):
    """The prompt file as a whole cannot be read."""
