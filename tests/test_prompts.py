"""Prompt files: .txt and .jsonl parsing, streamed, with one clear problem per bad line."""

import json

import pytest

from direct2v.director.prompt_files import read_prompt_file
from direct2v.director.prompts import PromptFileError, PromptProblem, PromptRecord


def parse(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    items = list(read_prompt_file(path))
    return [i for i in items if isinstance(i, PromptRecord)], [i for i in items if isinstance(i, PromptProblem)]


def test_txt_skips_blank_lines_and_comments(tmp_path):
    records, problems = parse(tmp_path, "p.txt", "# header\n\nA corgi runs\n   \n  Rain then a rainbow  \n# end\n")
    assert [r.prompt for r in records] == ["A corgi runs", "Rain then a rainbow"]
    assert problems == []
    assert records[0].source.endswith("p.txt:3") and records[1].source.endswith("p.txt:5")


def test_txt_ids_are_stable_and_distinct(tmp_path):
    first, _ = parse(tmp_path, "a.txt", "A corgi runs\nA cat sleeps\n")
    again, _ = parse(tmp_path, "b.txt", "A corgi runs\nA cat sleeps\n")
    assert [r.id for r in first] == [r.id for r in again]
    assert len({r.id for r in first}) == 2


def test_jsonl_fields_and_defaults(tmp_path):
    lines = [
        {"id": "corgi", "prompt": "A corgi runs", "frames": 4, "fps": 3, "seed": 9},
        {"prompt": "A cat sleeps"},
    ]
    records, problems = parse(tmp_path, "p.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n")
    assert problems == []
    assert (records[0].id, records[0].frames, records[0].fps, records[0].seed) == ("corgi", 4, 3, 9)
    assert records[1].frames is None and records[1].id.startswith("p00002-")


@pytest.mark.parametrize(
    "line, expected",
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"id": "x"}', 'missing "prompt"'),
        ('{"prompt": 5}', 'missing "prompt"'),
        ('{"prompt": "ok", "frames": 1}', "frames"),
        ('{"prompt": "ok", "fps": 0}', "fps"),
        ('{"prompt": "ok", "seed": -1}', "seed"),
        ('{"prompt": "ok", "frames": "many"}', "frames"),
        ('{"prompt": "ok", "colour": "red"}', "colour"),
        ('{"prompt": "   "}', "empty"),
        ('{"prompt": "ok", "id": "../etc/passwd"}', "id must be"),
        ('{"prompt": "ok", "id": "/etc/y"}', "id must be"),
        ('{"prompt": "ok", "id": "con"}', "reserved"),
        ('{"prompt": "' + "x" * 2001 + '"}', "prompt"),
    ],
)
def test_bad_jsonl_lines_become_problems_and_the_rest_is_read(tmp_path, line, expected):
    content = '{"prompt": "first"}\n' + line + '\n{"prompt": "last"}\n'
    records, problems = parse(tmp_path, "p.jsonl", content)
    assert [r.prompt for r in records] == ["first", "last"]
    assert len(problems) == 1
    assert problems[0].source.endswith("p.jsonl:2")
    assert expected in problems[0].message


def test_non_utf8_and_nul_bytes_are_problems(tmp_path):
    records, problems = parse(tmp_path, "p.txt", b"good one\n\xff\xfe bad\nnul \x00 here\nlast\n")
    assert [r.prompt for r in records] == ["good one", "last"]
    assert ["UTF-8" in problems[0].message, "NUL" in problems[1].message] == [True, True]


def test_duplicate_ids_keep_the_first(tmp_path):
    content = '{"id": "a", "prompt": "one"}\n{"id": "a", "prompt": "two"}\n'
    records, problems = parse(tmp_path, "p.jsonl", content)
    assert [r.prompt for r in records] == ["one"]
    assert "duplicate id 'a'" in problems[0].message


def test_whole_file_errors(tmp_path):
    with pytest.raises(PromptFileError, match="not found"):
        list(read_prompt_file(tmp_path / "missing.txt"))
    with pytest.raises(PromptFileError, match="is a directory"):
        list(read_prompt_file(tmp_path))
    (tmp_path / "p.tsv").write_text("a\tb\n")
    with pytest.raises(PromptFileError, match="unsupported prompt file type '.tsv'; use .txt, .jsonl or .csv"):
        list(read_prompt_file(tmp_path / "p.tsv"))
    (tmp_path / "p.csv").write_text("a,b\n")
    with pytest.raises(PromptFileError, match="p.csv:1: unknown column 'a' in the header row"):
        list(read_prompt_file(tmp_path / "p.csv"))


def test_empty_file_gives_nothing(tmp_path):
    assert parse(tmp_path, "p.txt", "") == ([], [])


def test_example_files_parse_cleanly():
    for name in ("prompts_in/examples.txt", "prompts_in/examples.jsonl", "prompts_in/examples.csv"):
        items = list(read_prompt_file(name))
        assert items and all(isinstance(i, PromptRecord) for i in items), name


# --- samples: several videos of one prompt --------------------------------------------------------


def test_samples_come_from_a_jsonl_field_or_a_csv_column_and_nothing_else_of_a_sample_does(tmp_path):
    records, problems = parse(tmp_path, "p.jsonl", '{"id": "a", "prompt": "a corgi", "samples": 3}\n'
                              '{"id": "b", "prompt": "a cat", "samples": 0}\n'
                              '{"id": "c", "prompt": "a cat", "samples": true}\n'
                              '{"id": "d", "prompt": "a cat", "sample": 2}\n')
    assert [(r.id, r.samples, r.sample, r.sample_of) for r in records] == [("a", 3, 0, None)]
    assert [p.message for p in problems] == [
        "samples: must be at least 1 (got 0); use a whole number from 1 to 64, or leave it out for the run's default",
        "samples: expected a whole number, got a boolean; use a whole number from 1 to 64, or leave it out for the "
        "run's default",
        "unknown field 'sample'; remove it (allowed fields: prompt, id, frames, fps, seed, samples; for several "
        "videos of a prompt: samples)"]
    records, problems = parse(tmp_path, "p.csv", "prompt,samples\na corgi,2\na cat,\n")
    assert [r.samples for r in records] == [2, None] and problems == []


def test_each_sample_of_a_prompt_is_a_record_of_its_own_and_one_sample_is_the_prompt_itself():
    from direct2v.director.prompts import sample_records, sample_seed

    record = PromptRecord(id="corgi", prompt="a corgi runs", frames=4)
    assert sample_records(record, 1, seed=5) == [record]  # ids, seeds and plans as without samples
    samples = sample_records(record, 3, seed=5)
    assert [(s.id, s.sample, s.sample_of, s.frames) for s in samples] == [
        ("corgi-s0", 0, "corgi", 4), ("corgi-s1", 1, "corgi", 4), ("corgi-s2", 2, "corgi", 4)]
    assert samples[0].seed == 5 and [s.seed for s in samples[1:]] == [sample_seed(5, 1), sample_seed(5, 2)]
    assert len({s.seed for s in samples}) == 3 and all(0 <= s.seed < 2**32 for s in samples)
    assert sample_seed(5, 1) not in (6, 5 + 1) and sample_seed(5, 1) == sample_seed(5, 1)
    seeded = sample_records(record.model_copy(update={"seed": 9}), 2, seed=5)
    assert [s.seed for s in seeded] == [9, sample_seed(9, 1)]  # the record's own seed wins over the run's
    with pytest.raises(ValueError, match="too long for 10 samples"):
        sample_records(PromptRecord(id="x" * 78, prompt="a corgi"), 10, seed=0)
    assert len(sample_records(PromptRecord(id="x" * 77, prompt="a corgi"), 10, seed=0)) == 10
