"""Prompt files -> validated prompt records (the first stage's contract).

Two formats, chosen by suffix:

* ``.txt``: one prompt per line; blank lines and lines starting with ``#`` are skipped.
* ``.jsonl``: one JSON object per line with ``prompt`` and optional ``id``, ``frames``, ``fps``,
  ``seed``; blank lines and ``#`` lines are skipped.

Reading is streamed: ``read_prompt_file`` yields records and problems line by line, so a long
list never has to fit in memory. A bad line never stops the file: it becomes a ``PromptProblem``
naming the file and line, and every other line is still read.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_PROMPT_CHARS = 2000
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
    source: str = Field("", description="file:line the record came from")

    @field_validator("prompt")
    @classmethod
    def _clean_prompt(cls, value: str) -> str:
        value = " ".join(value.split())
        if not value:
            raise ValueError("prompt is empty")
        if "\x00" in value:
            raise ValueError("prompt contains a NUL byte")
        return value

    @field_validator("frames", "fps", "seed", mode="before")
    @classmethod
    def _no_booleans(cls, value: object) -> object:
        if isinstance(value, bool):  # JSON true/false would otherwise pass as 1/0
            raise ValueError("expected a whole number, got a boolean")
        return value

    @field_validator("id")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        return check_safe_id(value)


def is_safe_id(value: str) -> bool:
    """Ids become file names (plans, videos, contact sheets): a conservative character set, never a path."""
    return bool(_ID_PATTERN.match(value)) and value.lower().split(".")[0] not in _RESERVED_IDS


def check_safe_id(value: str) -> str:
    """Validator form of ``is_safe_id``: the id, or a ValueError that says what an id may be."""
    if not is_safe_id(value):
        raise ValueError(
            "id must be 1-80 characters of letters, digits, '_', '-', '.', start with a letter "
            f"or digit, and not be a reserved device name; got {value!r}"
        )
    return value


class PromptProblem(BaseModel):
    """A line that could not become a record: where, what, and how to fix it."""

    model_config = ConfigDict(frozen=True)

    source: str
    message: str
    id: str | None = None
    prompt: str | None = None

    def __str__(self) -> str:
        return f"{self.source}: {self.message}"


def default_prompt_id(prompt: str, line_number: int) -> str:
    """A stable id for a prompt without one: its line and a short hash of its text."""
    digest = hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:8]
    return f"p{line_number:05d}-{digest}"


#: How to fix a bad value, per field: appended to the validation message.
_FIELD_HINTS = {
    "prompt": f"give the video idea as text of 1 to {MAX_PROMPT_CHARS} characters",
    "frames": "use a whole number from 2 to 512, or leave it out for the run's default",
    "fps": "use a whole number from 1 to 120, or leave it out for the run's default",
    "seed": f"use a whole number from 0 to {2**32 - 1}, or leave it out for the run's default",
    "id": "use letters, digits, '_', '-', '.' (or leave it out to derive one)",
}
_ALLOWED_FIELDS = "prompt, id, frames, fps, seed"


def _pydantic_message(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"]) or "record"
        if item["type"] == "extra_forbidden":
            parts.append(f"unknown field {field!r}; remove it (allowed fields: {_ALLOWED_FIELDS})")
            continue
        message = item["msg"].removeprefix("Value error, ")
        hint = _FIELD_HINTS.get(field, "")
        if "id must be" in message:  # the id validator's message already says how to fix it
            hint = ""
        elif field != "prompt" and "input" in item and item["type"] != "value_error":
            shown = repr(item["input"])
            message += f" (got {shown[:60] + '...' if len(shown) > 60 else shown})"
        parts.append(f"{field}: {message}" + (f"; {hint}" if hint else ""))
    return "; ".join(parts)


def _parse_line(raw: str, line_number: int, source: str, jsonl: bool) -> PromptRecord | PromptProblem:
    if not jsonl:
        prompt = raw.strip()
        try:
            return PromptRecord(id=default_prompt_id(prompt, line_number), prompt=prompt, source=source)
        except ValidationError as error:
            return PromptProblem(source=source, message=_pydantic_message(error), prompt=prompt[:200])
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as error:
        return PromptProblem(source=source, message=f"not valid JSON ({error.msg}); write one JSON object per line")
    if not isinstance(data, dict):
        return PromptProblem(source=source, message='expected a JSON object such as {"prompt": "..."}')
    if "prompt" in data and not isinstance(data["prompt"], str):
        return PromptProblem(
            source=source,
            message=f'missing "prompt" as a string (got {_json_type(data["prompt"])}); write the video idea in double quotes',
            id=_str_or_none(data.get("id")),
        )
    if not isinstance(data.get("prompt"), str):
        return PromptProblem(
            source=source,
            message='missing "prompt" (a string); add the video idea as "prompt": "..."',
            id=_str_or_none(data.get("id")),
        )
    record_id = data.get("id")
    if record_id is None:
        record_id = default_prompt_id(" ".join(data["prompt"].split()), line_number)
    try:
        return PromptRecord(**{**data, "id": record_id, "source": source})
    except ValidationError as error:
        return PromptProblem(
            source=source, message=_pydantic_message(error), id=_str_or_none(record_id), prompt=data["prompt"][:200]
        )


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    return {bool: "true/false", int: "a number", float: "a number", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__
    )


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def check_prompt_file(path: Path) -> Path:
    """Problems with the file as a whole, found before any work starts."""
    path = Path(path)
    if not path.exists():
        raise PromptFileError(f"prompt file not found: {path}")
    if path.is_dir():
        raise PromptFileError(f"{path} is a directory; give a .txt or .jsonl prompt file")
    if path.suffix.lower() not in {".txt", ".jsonl"}:
        raise PromptFileError(f"{path}: unsupported prompt file type {path.suffix!r}; use .txt or .jsonl")
    return path


def read_prompt_file(path: Path) -> Iterator[PromptRecord | PromptProblem]:
    """Yield one record or problem per meaningful line of ``path``, in file order.

    Raises ``PromptFileError`` only for problems with the file as a whole (missing, a directory,
    an unsupported suffix); everything wrong with a single line is yielded as a PromptProblem.
    Duplicate ids are problems too: the first occurrence wins.
    """
    path = check_prompt_file(path)
    suffix = path.suffix.lower()
    seen: dict[str, int] = {}
    with path.open("rb") as stream:
        for line_number, raw_bytes in enumerate(stream, start=1):
            source = f"{path}:{line_number}"
            try:
                raw = raw_bytes.decode("utf-8")
            except UnicodeDecodeError as error:
                yield PromptProblem(source=source, message=f"not UTF-8 text (byte {error.start}); save the file as UTF-8")
                continue
            if line_number == 1:
                raw = raw.removeprefix("\ufeff")  # a UTF-8 byte-order mark (Windows editors)
            if "\x00" in raw:
                yield PromptProblem(source=source, message="contains a NUL byte; remove it")
                continue
            stripped = raw.strip()
            if not stripped or stripped.startswith("#"):
                continue
            item = _parse_line(stripped, line_number, source, jsonl=suffix == ".jsonl")
            if isinstance(item, PromptRecord):
                if item.id in seen:
                    item = PromptProblem(
                        source=source,
                        message=f"duplicate id {item.id!r} (first used on line {seen[item.id]}); ids must be unique",
                        prompt=item.prompt,
                    )
                else:
                    seen[item.id] = line_number
            yield item


class PromptFileError(ValueError):
    """The prompt file as a whole cannot be read."""
