"""Hostile lines never escape a reader (issue #35): a seeded generator of lines made to break
parsers -- nesting a hundred thousand deep, numbers of thousands of digits, strings past the line
limit, NULs, control characters, lone surrogates, invalid UTF-8, byte-order marks in the middle,
CSV quote storms -- mixed with valid lines, in all three prompt formats.

Through the run's real read path (``shards.stream_prompt_shards`` -> ``planning.problem_row`` ->
shard journal -> ``manifest.parquet``): no exception escapes, every valid line comes out as its
record, and each hostile line gives exactly one problem naming its line, in our words, as a failed
row the manifest can hold. Plan files and TOML settings get the same: a bad one is one clear error.
(``hypothesis`` is not installed here; the generator is seeded, so a failure is reproducible.)
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from direct2v.director.prompts import MAX_LINE_BYTES
from direct2v.job import planning, shards
from direct2v.job.manifest import append_shard_rows, compact, read_manifest

SEEDS = range(10)
LINES_PER_FILE = 120

#: Control characters that are not whitespace (str.split would turn those into spaces).
CONTROLS = [chr(c) for c in [*range(0x01, 0x09), *range(0x0E, 0x1C), *range(0x7F, 0x85), *range(0x86, 0xA0)]]
INVALID_UTF8 = [b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xe2\x82", b"\x80\x80", b"\xf8\x88\x80\x80\x80"]
WORDS = ["red", "blue", "circle", "square", "corgi", "boat", "runs", "sails", "Ünïcödé", "🎬", "a", "the"]


def valid_prompt(rng: random.Random, number: int) -> str:
    return f"A {' '.join(rng.choice(WORDS) for _ in range(rng.randint(1, 6)))} number {number}"


def valid_line(rng: random.Random, fmt: str, number: int) -> tuple[bytes, str]:
    """A valid line and the prompt its record must hold; some start with a byte-order mark."""
    prompt = valid_prompt(rng, number)
    if fmt == "txt":
        line = prompt.encode()
    elif fmt == "jsonl":
        record = {"id": f"valid-{number}", "prompt": prompt, **rng.choice([{}, {"frames": 4}, {"seed": 7, "fps": 3}])}
        line = json.dumps(record, ensure_ascii=rng.random() < 0.5).encode()
    else:
        shown = prompt.replace('"', '""')
        cell = f'"{shown}, ""quoted"""' if rng.random() < 0.3 else shown
        prompt = f'{prompt}, "quoted"' if cell.startswith('"') else prompt
        line = f"valid-{number},{cell},{rng.choice(['', '4'])},,".encode()
    if rng.random() < 0.15:
        line = "\ufeff".encode() + line  # files concatenated with `cat` carry a BOM into the middle
    return line, prompt


def payload(rng: random.Random) -> bytes:
    """Text no prompt may be: each kind is bad whichever field or line it lands in."""
    kind = rng.choice(["nesting", "digits", "long", "huge", "nul", "control", "utf8", "surrogate"])
    depth = rng.choice([2500, 100_000])
    return {
        "nesting": lambda: ("[" * depth + "]" * depth).encode(),
        "digits": lambda: ("9" * rng.choice([2500, 5000, 100_000])).encode(),
        "long": lambda: ("x" * rng.randint(2001, 200_000)).encode(),
        "huge": lambda: b"y" * (MAX_LINE_BYTES + rng.randint(1, 1 << 20)),
        "nul": lambda: b"a \x00 b",
        "control": lambda: f"A cat {rng.choice(CONTROLS)} sleeps".encode(),
        "utf8": lambda: b"A cat " + rng.choice(INVALID_UTF8) + b" sleeps",
        "surrogate": lambda: b"A cat \xed\xb2\x80 sleeps",  # U+DC80 encoded: not UTF-8
    }[kind]()


def hostile_jsonl(rng: random.Random) -> bytes:
    depth = rng.choice([900, 5000, 100_000])
    return rng.choice([
        lambda: b"[" * depth + b"]" * depth,
        lambda: b'{"a":' * depth + b"1" + b"}" * depth,
        lambda: b'{"prompt": "x", "frames": ' + b"[" * 900 + b"]" * 900 + b"}",  # parses; its repr nests too deep
        lambda: b'{"prompt": "x", "seed": ' + b"9" * rng.choice([4000, 5000, 100_000]) + b"}",
        lambda: b'{"prompt": "x", "fps": -' + b"9" * 4000 + b"}",
        lambda: b'{"prompt": "x", "fps": 1e999999}',
        lambda: b'{"prompt": "' + b"x" * rng.randint(2001, 200_000) + b'"}',
        lambda: b'{"prompt": "a\\u0000b"}',
        lambda: b'{"prompt": "a \\u001b[31m b"}',
        lambda: b'{"prompt": "a \x7f b"}',
        lambda: b'{"prompt": "a \\ud800 b"}',
        lambda: b'{"prompt": "ok", "id": "\\udc00"}',
        lambda: b'{"\\ud800": 1, "prompt": "ok"}',
        lambda: b'{"prompt": "ok"}' + "\ufeff".encode(),
        lambda: b'{' + "\ufeff".encode() + b'"prompt": "ok"}',
        lambda: b'""",,,"' * rng.randint(1, 50),
        lambda: b'{"prompt": "' + payload(rng) + b'"}',
        lambda: payload(rng),
    ])()


def hostile_txt(rng: random.Random) -> bytes:
    return b"x" + payload(rng)  # (not a "#" comment, not blank)


def hostile_csv(rng: random.Random) -> bytes:
    if rng.random() < 0.4:
        # A quote storm; "!" is no id, so its row is bad however far its quotes reach.
        storm = "".join(rng.choice(['"', '"', '""', ",", "a", " ", "\ufeff"]) for _ in range(rng.randint(1, 40)))
        return f"!{storm}".encode()
    cell = payload(rng).replace(b'"', b"")  # quote-free: the row is this one line
    return rng.choice([
        lambda: b"bad," + cell + b",,,",
        lambda: b"bad,A cat," + cell + b",,",
        lambda: b"bad,A cat,,," + cell,
        lambda: b"," + cell + b",,,",
        lambda: cell,
    ])()


HOSTILE = {"txt": hostile_txt, "jsonl": hostile_jsonl, "csv": hostile_csv}


def hostile_file(tmp_path: Path, fmt: str, seed: int) -> tuple[Path, dict[int, str], set[int]]:
    """A prompt file of mixed lines: (path, line -> expected prompt of each valid line, hostile lines)."""
    rng = random.Random(f"{fmt}-{seed}")
    lines, valid, hostile = [], {}, set()
    if fmt == "csv":
        lines.append(b"id,prompt,frames,fps,seed")
    for _ in range(LINES_PER_FILE):
        number = len(lines) + 1
        if rng.random() < 0.5:
            line, prompt = valid_line(rng, fmt, number)
            valid[number] = prompt
        else:
            line = HOSTILE[fmt](rng)
            hostile.add(number)
        lines.append(line)
    path = tmp_path / f"hostile-{seed}.{fmt}"
    path.write_bytes(b"".join(line + rng.choice([b"\n", b"\r\n"]) for line in lines))
    return path, valid, hostile


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("fmt", ["txt", "jsonl", "csv"])
def test_no_hostile_line_escapes_the_reader_or_costs_another_line(tmp_path, fmt, seed):
    path, valid, hostile = hostile_file(tmp_path, fmt, seed)
    assert shards.count_prompt_lines(path) >= len(valid) + len(hostile) - 1  # reads past every line too

    (shard,) = shards.stream_prompt_shards(path, 10_000)

    assert {int(r.source.rsplit(":", 1)[1]): r.prompt for r in shard.records} == valid
    lines = Counter(int(p.source.rsplit(":", 1)[1]) for p in shard.problems)
    assert set(lines) == hostile and set(lines.values()) == {1}, [str(p)[:200] for p in shard.problems]
    for problem in shard.problems:
        message = problem.message
        assert problem.source.startswith(f"{path}:")
        assert "; " in message or "such as" in message, message[:300]  # what is wrong, then how to fix it
        assert not any(word in message for word in ("Traceback", "Input should", "Value error", "sys.set_int")), message
        assert "\x00" not in message and "\ufffd" not in message and len(message) < 1000, message[:300]  # bounded, whatever the line

    run_dir = tmp_path / "run"  # every problem is a failed row the manifest can hold
    append_shard_rows(run_dir, 1, [planning.problem_row(run_dir.name, p, i) for i, p in enumerate(shard.problems)])
    rows = read_manifest(compact(run_dir).path).to_pylist()
    assert sorted(row["prompt_id"] for row in rows) == sorted(f"invalid-line-{line}" for line in hostile)
    assert {(row["status"], row["failed_stage"]) for row in rows} == {("failed", "input")}


def test_a_json_line_nested_100000_deep_does_not_cost_the_line_after_it(tmp_path):
    """The issue's first case, through the read path (tests/test_faults.py runs it end to end)."""
    path = tmp_path / "deep.jsonl"
    path.write_text("[" * 100_000 + "]" * 100_000 + '\n{"prompt": "A cat sleeps"}\n')
    (shard,) = shards.stream_prompt_shards(path, 10)
    assert [r.prompt for r in shard.records] == ["A cat sleeps"]
    assert [str(p) for p in shard.problems] == [(
        f"{path}:1: nested too deeply to read (lists or objects inside each other); "
        'write one flat JSON object per line, such as {"prompt": "..."}')]


def test_a_stray_csv_quote_costs_only_its_own_row(tmp_path):
    path = tmp_path / "quotes.csv"
    path.write_text('id,prompt\nopen,"A quote never closed\nnext,A cat sleeps\nlast,"A ""quoted"" dog"\n')
    (items,) = shards.stream_prompt_shards(path, 10)
    assert [(r.id, r.prompt) for r in items.records] == [("next", "A cat sleeps"), ("last", 'A "quoted" dog')]
    assert [p.source for p in items.problems] == [f"{path}:2"]


# --- plan files and TOML settings ----------------------------------------------------------------------


def hostile_plans(rng: random.Random) -> list[bytes]:
    plan = {"prompt_id": "p", "prompt": "a boat", "fps": 2, "seed": 1, "frames": ["a boat at dawn", "a boat at dusk"]}
    text = json.dumps(plan).encode()
    return [
        b"[" * 100_000 + b"]" * 100_000,
        text.replace(b'"a boat"', b'"' + b"[" * 5000 + b'"', 1).replace(b'"seed": 1', b'"seed": ' + b"9" * 5000),
        text.replace(b"a boat at dawn", b"a boat \\u001b at dawn"),
        text.replace(b"a boat at dawn", b"a boat \\ud800 at dawn"),
        text.replace(b"a boat at dawn", b"a boat \xff at dawn"),
        text.replace(b'"a boat"', b'"a \\u0000 boat"'),
        text + b"\x00",
        b"\xef\xbb\xbf" + text[:-1] + "\ufeff}".encode(),  # a BOM before the closing brace
        payload(rng),
    ]


def test_hostile_plan_files_are_failed_rows_and_the_valid_one_is_read(tmp_path):
    rng = random.Random("plans")
    paths = []
    for number, content in enumerate(hostile_plans(rng)):
        paths.append(tmp_path / f"bad-{number}.json")
        paths[-1].write_bytes(content)
    good = tmp_path / "good.json"
    good.write_text("\ufeff" + json.dumps({"prompt_id": "good", "prompt": "a boat", "fps": 2, "seed": 1,
                                           "frames": ["a boat at dawn", "a boat at dusk"]}))  # a Windows editor's BOM
    plans, rows = planning.read_plan_files([*paths, good], "run", None, set())
    assert [plan.prompt_id for plan, _ in plans] == ["good"]
    assert [row.source for row in rows] == [str(path) for path in paths]
    for row in rows:
        assert row.error.startswith(f"{row.source}: ") and "Traceback" not in row.error, row.error[:300]
        assert (row.status, row.failed_stage) == ("failed", "input")


@pytest.mark.parametrize("content", [
    b"a = " + b"[" * 100_000 + b"]" * 100_000,
    b"a = " + b"{b = " * 5000 + b"1" + b"}" * 5000,
    b"seed = " + b"9" * 100_000,
    b"[render]\nguidance_scale = \"\xff\"\n",
    b"[render]\nguidance_scale = \"\x1b[31m\"\n",
    b"[render]\nguidance_scale = \"\\ud800\"\n",
    b"[render]\x00\n",
    b"# " + b"x" * (2 << 20) + b"\n",
])
def test_a_hostile_settings_file_is_one_config_error(tmp_path, monkeypatch, content):
    from direct2v.core.config import ConfigError, load_settings

    path = tmp_path / "settings.toml"
    path.write_bytes(content)
    monkeypatch.setenv("DIRECT2V_CONFIG", str(path))  # (load_settings sets it; restored after the test)
    with pytest.raises(ConfigError) as error:
        load_settings(path)
    message = str(error.value)
    assert message.startswith(f"invalid configuration file {path}") and "sys.set_int" not in message, message
    assert len(message) < 400 and "\x1b" not in message
