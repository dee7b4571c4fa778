"""Prompt files -> validated prompt records (the first stage's contract).

Three formats, chosen by suffix:

* ``.txt``: one prompt per line; blank lines and lines starting with ``#`` are skipped.
* ``.jsonl``: one JSON object per line with ``prompt`` and optional ``id``, ``frames``, ``fps``,
  ``seed``; blank lines and ``#`` lines are skipped.
* ``.csv``: what a spreadsheet exports: a header row naming the columns (``prompt``, required, and
  the optional ``id``, ``frames``, ``fps``, ``seed``, in any order and case), then one row per
  video, read with the csv module's quoting rules (a field may hold commas, quotes written twice
  and line breaks inside double quotes); an empty cell means "the run's default"; a UTF-8
  byte-order mark and CRLF line ends are fine; blank rows are skipped.

Reading is streamed: ``read_prompt_file`` yields records and problems line by line (row by row),
so a long list never has to fit in memory. A bad line never stops the file: it becomes a
``PromptProblem`` naming the file and line, and every other line is still read -- whatever the line
holds: JSON nested past the parser's recursion limit, numbers of thousands of digits, a line of
gigabytes (read in bounded pieces and skipped past ``MAX_LINE_BYTES``), control characters, lone
surrogates, a byte-order mark where files were concatenated, or a CSV quote that is never closed
(the row is reported at its first line and the lines after it are read again as rows of their own).
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import unicodedata
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from direct2v.core.errors import Direct2VError
from direct2v.core.messages import problem

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
    source: str = Field("", description="file:line the record came from")

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
            f"or digit, and not be a reserved device name; got {_shown(value, 100)}"
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
        message = problem(item)
        hint = _FIELD_HINTS.get(field, "")
        if "id must be" in message:  # the id validator's message already says how to fix it
            hint = ""
        elif field != "prompt" and "input" in item and item["type"] != "value_error":
            message += f" (got {_shown(item['input'])})"
        parts.append(f"{field}: {message}" + (f"; {hint}" if hint else ""))
    return "; ".join(parts)


def _shown(value: object, limit: int = 60) -> str:
    """A bad value as a message quotes it: its repr, cut short. The repr itself can fail (a list
    nested a thousand deep, an integer of thousands of digits): then what kind of value it is."""
    try:
        shown = repr(value)
    except (RecursionError, ValueError):
        return _json_type(value)
    return shown[:limit] + "..." if len(shown) > limit else shown


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
    except ValueError:  # Python refuses to convert integers of more than 4300 digits
        return PromptProblem(source=source, message="holds a number of thousands of digits; "
                             'write frames, fps and seed as ordinary whole numbers, such as "seed": 7')
    except RecursionError:  # the parser recurses once per level: [[[[... a hundred thousand deep
        return PromptProblem(source=source, message="nested too deeply to read (lists or objects inside each other); "
                             'write one flat JSON object per line, such as {"prompt": "..."}')
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


PROMPT_SUFFIXES = (".txt", ".jsonl", ".csv")


def check_prompt_file(path: Path) -> Path:
    """Problems with the file as a whole, found before any work starts."""
    path = Path(path)
    if not path.exists():
        raise PromptFileError(f"prompt file not found: {path}")
    if path.is_dir():
        raise PromptFileError(f"{path} is a directory; give a .txt, .jsonl or .csv prompt file")
    if path.suffix.lower() not in PROMPT_SUFFIXES:
        raise PromptFileError(f"{path}: unsupported prompt file type {path.suffix!r}; use .txt, .jsonl or .csv")
    if path.suffix.lower() == ".csv":
        csv_columns(path)  # a bad header row is a problem of the whole file
    return path


def read_prompt_file(path: Path) -> Iterator[PromptRecord | PromptProblem]:
    """Yield one record or problem per meaningful line of ``path``, in file order.

    Raises ``PromptFileError`` only for problems with the file as a whole (missing, a directory,
    an unsupported suffix); everything wrong with a single line is yielded as a PromptProblem.
    Duplicate ids are problems too: the first occurrence wins.
    """
    path = check_prompt_file(path)
    suffix = path.suffix.lower()
    items = _read_csv(path) if suffix == ".csv" else _read_lines(path, jsonl=suffix == ".jsonl")
    seen: dict[str, int] = {}
    for item in items:
        if isinstance(item, PromptRecord):
            line_number = int(item.source.rsplit(":", 1)[1])
            if item.id in seen:
                item = PromptProblem(
                    source=item.source,
                    message=f"duplicate id {item.id!r} (first used on line {seen[item.id]}); ids must be unique",
                    prompt=item.prompt,
                )
            else:
                seen[item.id] = line_number
        yield item


def numbered_lines(stream: BinaryIO) -> Iterator[tuple[int, bytes | None]]:
    """(line number, the line's bytes) of a binary stream, from 1; None for a line longer than
    ``MAX_LINE_BYTES``, which is read past in bounded pieces instead of being held whole."""
    number = 0
    while line := stream.readline(MAX_LINE_BYTES + 1):
        number += 1
        if len(line) <= MAX_LINE_BYTES:
            yield number, line
            continue
        while line and not line.endswith(b"\n"):
            line = stream.readline(1 << 16)
        yield number, None


#: The problem of a line longer than ``MAX_LINE_BYTES``.
TOO_LONG = (f"the line is longer than {MAX_LINE_BYTES >> 20} MiB, far more than a record can need (a prompt is at "
            f"most {MAX_PROMPT_CHARS} characters); shorten it, or check that the file is a prompt list")


def _read_lines(path: Path, jsonl: bool) -> Iterator[PromptRecord | PromptProblem]:
    """The line formats: one record (or problem) per meaningful line."""
    with path.open("rb") as stream:
        for line_number, raw_bytes in numbered_lines(stream):
            source = f"{path}:{line_number}"
            if raw_bytes is None:
                yield PromptProblem(source=source, message=TOO_LONG)
                continue
            try:
                raw = raw_bytes.decode("utf-8")
            except UnicodeDecodeError as error:
                yield PromptProblem(source=source, message=f"not UTF-8 text (byte {error.start}); save the file as UTF-8")
                continue
            # A UTF-8 byte-order mark: Windows editors write one on line 1, and files concatenated
            # with `cat` carry theirs into the middle.
            raw = raw.removeprefix("\ufeff")
            if "\x00" in raw:
                yield PromptProblem(source=source, message="contains a NUL byte; remove it")
                continue
            stripped = raw.strip()
            if not stripped or stripped.startswith("#"):
                continue
            yield _parse_line(stripped, line_number, source, jsonl=jsonl)


#: The columns a CSV prompt list may have (the fields of a .jsonl record).
CSV_COLUMNS = ("prompt", "id", "frames", "fps", "seed")

#: csv.Error texts (CPython's reader) -> what the user wrote wrong and how to fix it.
_CSV_ERRORS = {
    "unexpected end of data": "a double quote opened on this row is never closed (unbalanced quote); "
    "close it, or write a quote inside a quoted field as two quotes (\"\")",
    "',' expected after '\"'": "text follows the closing double quote of a field; put the whole field in "
    "quotes and write a quote inside it as two quotes (\"\")",
}


class _LineTooLong(Exception):
    """Raised through ``csv.reader`` for a line longer than ``MAX_LINE_BYTES`` (never held whole)."""

    def __init__(self, number: int):
        super().__init__(number)
        self.number = number


class _CsvLines:
    """A CSV prompt list's lines for ``csv.reader``: UTF-8 (undecodable bytes kept as surrogates, so
    that the row holding them can be reported instead of stopping the file; a byte-order mark at a
    line's start dropped), numbered. The lines of the row being read are kept, so that a row that
    fails can be read again from its second line (``read_again``)."""

    def __init__(self, stream: BinaryIO):
        self._lines = numbered_lines(stream)
        self._again: deque[tuple[int, str | None]] = deque()
        self.row: list[tuple[int, str | None]] = []  # (number, text) of the lines of the current row

    def __iter__(self) -> _CsvLines:
        return self

    def __next__(self) -> str:
        if self._again:
            number, text = self._again.popleft()
        else:
            number, raw = next(self._lines)
            text = None if raw is None else raw.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
        self.row.append((number, text))
        if text is None:
            raise _LineTooLong(number)
        return text

    @property
    def start(self) -> int:
        """The line the current row starts on."""
        return self.row[0][0]

    def next_row(self) -> None:
        self.row = []

    def read_again(self) -> None:
        """The current row failed: its lines after the first are read again, as rows of their own."""
        self._again.extendleft(reversed(self.row[1:]))
        self.row = []


def _header(reader, path: Path) -> list[str] | None:
    """The header row of a CSV prompt list as column names (None for an empty file), or PromptFileError."""
    try:
        header = next(reader, None)
    except csv.Error as error:
        raise PromptFileError(f"{path}:1: the header row is not valid CSV ({error})") from None
    except _LineTooLong:
        raise PromptFileError(f"{path}:1: the header row is longer than {MAX_LINE_BYTES >> 20} MiB; the first row "
                              "must name the columns: prompt (required), id, frames, fps, seed") from None
    if header is None:
        return None
    columns = [name.strip().lower() for name in header]
    unknown = [name for name in columns if name not in CSV_COLUMNS]
    if unknown or "prompt" not in columns or len(set(columns)) != len(columns):
        found = ", ".join(_shown(name) for name in header)
        what = (f"unknown column {_shown(unknown[0])}" if unknown else
                "no 'prompt' column" if "prompt" not in columns else "a column is named twice")
        raise PromptFileError(
            f"{path}:1: {what} in the header row ({found}); the first row must name the columns: "
            f"prompt (required), id, frames, fps, seed"
        )
    return columns


def csv_columns(path: Path) -> list[str] | None:
    """Read and check only the header row of a CSV prompt list (before any work starts)."""
    with path.open("rb") as stream:
        return _header(csv.reader(_CsvLines(stream), strict=True), path)


def _csv_message(error: csv.Error) -> str:
    text = str(error)
    if text.startswith("field larger than field limit"):  # a quote left open runs on to the limit
        return (f"a field is longer than {csv.field_size_limit()} characters: a double quote opened on this row is "
                "probably never closed; close it, or write a quote inside a quoted field as two quotes (\"\")")
    return _CSV_ERRORS.get(text, f"not valid CSV ({text}); check the quoting of this row")


def _read_csv(path: Path) -> Iterator[PromptRecord | PromptProblem]:
    """A CSV prompt list: the header row, then one record (or problem) per row.

    A quoted field may hold line breaks, so one stray double quote would make every line up to the
    next quote (or the end of the file) a single bad row. A row that spans lines and is not a valid
    record is therefore reported at its first line, and the lines after that are read again as rows
    of their own: a stray quote costs its own row only (a bad record that really spans lines may then
    be reported once more, at a later line of it)."""
    with path.open("rb") as stream:
        lines = _CsvLines(stream)
        reader = csv.reader(lines, strict=True)
        columns = _header(reader, path)
        if columns is None:
            return
        while True:
            lines.next_row()
            try:
                row = next(reader)
            except StopIteration:
                return
            except _LineTooLong as error:
                if error.number == lines.start:  # the row is the long line itself: skip it
                    yield PromptProblem(source=f"{path}:{error.number}", message=TOO_LONG)
                    continue
                item = PromptProblem(source=f"{path}:{lines.start}", message=_CSV_ERRORS["unexpected end of data"])
            except csv.Error as error:
                item = PromptProblem(source=f"{path}:{lines.start}", message=_csv_message(error))
            else:
                if not any(cell.strip() for cell in row):
                    continue  # a blank row (spreadsheets end with some)
                item = _parse_row(row, columns, lines.start, f"{path}:{lines.start}")
            if isinstance(item, PromptProblem) and len(lines.row) > 1:
                lines.read_again()
            yield item


def _parse_row(row: list[str], columns: list[str], line_number: int, source: str) -> PromptRecord | PromptProblem:
    if len(row) != len(columns):
        fix = ("put a field that contains a comma in double quotes" if len(row) > len(columns) else
               "give every column a cell (an empty one for the run's default)")
        return PromptProblem(source=source, message=f"the row has {len(row)} fields but the header {len(columns)}; {fix}")
    if any("\udc80" <= char <= "\udcff" for cell in row for char in cell):
        return PromptProblem(source=source, message="not UTF-8 text; save the file as UTF-8")
    values = {column: cell.strip() for column, cell in zip(columns, row)}
    data = {column: value for column, value in values.items() if value != "" or column == "prompt"}
    if "\x00" in "".join(row):
        return PromptProblem(source=source, message="contains a NUL byte; remove it")
    record_id = data.get("id") or default_prompt_id(" ".join(data["prompt"].split()), line_number)
    try:
        return PromptRecord(**{**data, "id": record_id, "source": source})
    except ValidationError as error:
        return PromptProblem(source=source, message=_pydantic_message(error), id=data.get("id"),
                             prompt=data["prompt"][:200])


class PromptFileError(Direct2VError, ValueError):
    """The prompt file as a whole cannot be read."""
