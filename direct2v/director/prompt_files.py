"""Prompt files -> prompt records and problems (``prompts``), line by line.

Three formats, chosen by suffix:

* ``.txt``: one prompt per line; blank lines and lines starting with ``#`` are skipped.
* ``.jsonl``: one JSON object per line with ``prompt`` and optional ``id``, ``frames``, ``fps``,
  ``seed``, ``samples``; blank lines and ``#`` lines are skipped.
* ``.csv``: what a spreadsheet exports: a header row naming the columns (``prompt``, required, and
  the optional ``id``, ``frames``, ``fps``, ``seed``, ``samples``, in any order and case), then one row per
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
import json
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from pydantic import ValidationError

from direct2v.core.config import MAX_SAMPLES
from direct2v.core.messages import problem
from direct2v.director.prompts import (
    MAX_LINE_BYTES,
    MAX_PROMPT_CHARS,
    PromptFileError,
    PromptProblem,
    PromptRecord,
    default_prompt_id,
    json_type,
    quoted,
)

_FIELD_HINTS = {
    "prompt": f"give the video idea as text of 1 to {MAX_PROMPT_CHARS} characters",
    "frames": "use a whole number from 2 to 512, or leave it out for the run's default",
    "fps": "use a whole number from 1 to 120, or leave it out for the run's default",
    "seed": f"use a whole number from 0 to {2**32 - 1}, or leave it out for the run's default",
    "id": "use letters, digits, '_', '-', '.' (or leave it out to derive one)",
    "samples": f"use a whole number from 1 to {MAX_SAMPLES}, or leave it out for the run's default",
}
_ALLOWED_FIELDS = "prompt, id, frames, fps, seed, samples"
#: PromptRecord fields that only ``prompts.sample_records`` sets: unknown fields in a prompt file.
INTERNAL_FIELDS = ("sample", "sample_of")


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
            message += f" (got {quoted(item['input'])})"
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
            message=f'missing "prompt" as a string (got {json_type(data["prompt"])}); write the video idea in double quotes',
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
    if internal := [name for name in INTERNAL_FIELDS if name in data]:
        return PromptProblem(source=source, message=f"unknown field {internal[0]!r}; remove it (allowed fields: "
                             f"{_ALLOWED_FIELDS}; for several videos of a prompt: samples)",
                             id=_str_or_none(record_id), prompt=data["prompt"][:200])
    try:
        return PromptRecord(**{**data, "id": record_id, "source": source})
    except ValidationError as error:
        return PromptProblem(
            source=source, message=_pydantic_message(error), id=_str_or_none(record_id), prompt=data["prompt"][:200]
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
CSV_COLUMNS = ("prompt", "id", "frames", "fps", "seed", "samples")

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
                              f"must name the columns: prompt (required), {_ALLOWED_FIELDS.removeprefix('prompt, ')}") from None
    if header is None:
        return None
    columns = [name.strip().lower() for name in header]
    unknown = [name for name in columns if name not in CSV_COLUMNS]
    if unknown or "prompt" not in columns or len(set(columns)) != len(columns):
        found = ", ".join(quoted(name) for name in header)
        what = (f"unknown column {quoted(unknown[0])}" if unknown else
                "no 'prompt' column" if "prompt" not in columns else "a column is named twice")
        raise PromptFileError(
            f"{path}:1: {what} in the header row ({found}); the first row must name the columns: "
            f"prompt (required), {_ALLOWED_FIELDS.removeprefix('prompt, ')}"
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
