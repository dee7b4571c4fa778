"""Bad input never crashes a run (issue #6): the corpus in tests/data/bad_inputs/.

Each bad record must give exactly its expected error line (file:line, what, how to fix) and a
failed manifest row, through the run's real read path (``shards.stream_prompt_shards`` ->
``planning.problem_row`` -> shard journal -> ``manifest.parquet``), while every valid record is still read.
Whole-file problems and bad configurations must stop the CLI with one clear line, before any
model loads.
"""

import shutil
from pathlib import Path

import pytest

from direct2v.job import planning, shards
from direct2v.job.manifest import SCHEMA, append_shard_rows, compact, read_manifest

CORPUS = Path(__file__).parent / "data" / "bad_inputs"
REPO = Path(__file__).resolve().parents[1]

VALID = {
    "prompts.txt": [("prompts.txt:1", "A corgi runs on the beach"),  # the BOM is dropped
                    ("prompts.txt:8", "Rain falls, then a rainbow appears"),  # the CR is dropped
                    ("prompts.txt:10", "A cat sleeps")],
    "records.jsonl": [("records.jsonl:1", "A corgi runs"), ("records.jsonl:33", "A cat sleeps, then wakes up"),
                      ("records.jsonl:38", "Ünïcödé prompt with emoji 🎬 is fine")],
    "records.csv": [("records.csv:2", "A corgi runs, then stops"),  # BOM, CRLF, a quoted comma
                    ("records.csv:3", 'A fox "jumps" over a log'),  # doubled quotes
                    ("records.csv:16", "A boat sails on two lines"),  # a line break inside quotes
                    ("records.csv:18", "A cat sleeps"),
                    ("records.csv:20", "A stray quote costs only its own row")],  # read again after line 19's quote
}


def expected_errors(name: str) -> list[str]:
    lines = (CORPUS / "expected_errors.txt").read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line.startswith(f"{name}:")]


def test_the_corpus_has_at_least_25_bad_records():
    assert len(expected_errors("prompts.txt")) + len(expected_errors("records.jsonl")) >= 25
    assert len(expected_errors("records.csv")) >= 10


@pytest.mark.parametrize("name", ["prompts.txt", "records.jsonl", "records.csv"])
def test_each_bad_record_gets_its_error_line_and_a_failed_row(tmp_path, monkeypatch, name):
    monkeypatch.chdir(CORPUS)  # sources are then "file:line", as in expected_errors.txt
    (shard,) = shards.stream_prompt_shards(Path(name), 1000)
    records, problems = shard.records, shard.problems

    assert [str(problem) for problem in problems] == expected_errors(name)
    assert [(r.source, r.prompt) for r in records] == VALID[name]

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    append_shard_rows(run_dir, shard.index, [planning.problem_row(run_dir.name, p, i) for i, p in enumerate(problems)])
    table = read_manifest(compact(run_dir).path)
    assert table.schema.equals(SCHEMA)
    rows = table.to_pylist()
    assert len(rows) == len(problems)  # one row per bad record: none lost, none merged
    for row, problem in zip(rows, problems):
        line = problem.source.rsplit(":", 1)[1]
        assert row["prompt_id"] == f"invalid-line-{line}"
        assert (row["status"], row["failed_stage"], row["source"]) == ("failed", "input", problem.source)
        assert f"{row['source']}: {row['error']}" in expected_errors(name)
        assert not row["video_path"]


def test_every_error_line_says_where_what_and_how_to_fix():
    for line in expected_errors("prompts.txt") + expected_errors("records.jsonl") + expected_errors("records.csv"):
        where, _, message = line.partition(": ")
        assert where.rsplit(":", 1)[1].isdigit(), line
        # how to fix: an instruction after ";", or an example of the expected form
        assert "; " in message or "such as" in message, line
        assert "\x00" not in line and "\ufffd" not in line  # no raw control bytes echoed into logs


@pytest.mark.parametrize(
    "name, message",
    [
        ("empty.txt", "empty.txt: no prompts (the file is empty, or every line is blank or a # comment)"),
        ("only-comments.jsonl", "only-comments.jsonl: no prompts"),
        ("prompts.tsv", "prompts.tsv: unsupported prompt file type '.tsv'; use .txt, .jsonl or .csv"),
        ("no-prompt-column.csv", "no-prompt-column.csv:1: no 'prompt' column in the header row ('id', 'frames'); "
                                 "the first row must name the columns: prompt (required), id, frames, fps, seed, samples"),
        ("a-directory.txt", "a-directory.txt is a directory; give a .txt, .jsonl or .csv prompt file"),
        ("missing.jsonl", "prompt file not found: missing.jsonl"),
    ],
)
def test_unusable_prompt_files_stop_the_cli_with_one_line(tmp_path, run_cli, name, message):
    """Checked before Prefect or any model starts: no run directory is created."""
    done = run_cli(["run", name], {"DIRECT2V_OUTPUT_ROOT": str(tmp_path / "outputs")}, cwd=CORPUS)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == f"error: {message}" or message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--frames", "0"], {}, "frames: must be at least 2 (got 0)"),
        (["--set", "render.t0=99"], {}, "render.t0=99 must be at least 0 and below render.t1=95"),
        (["--set", "render.num_inference_steps=2"], {}, "render.num_inference_steps=2 is too few"),
        (["--set", "render.t1=99"], {}, "render.t1=99 must be between 1 and num_inference_steps - 2 = 98"),
        (["--set", "director.temperature=hot"], {}, "director.temperature"),
        ([], {"DIRECT2V_RENDER__BATCH_SIZE": "1"}, "render.batch_size"),
        (["--config", "bad-key.toml"], {}, "render.colour"),
        (["--config", "bad-syntax.toml"], {}, "invalid configuration file"),
        ([], {"DIRECT2V_DIRECTOR__MODEL_DIR": "no/such/llm"}, "director.model_dir: director model directory not found"),
        ([], {"DIRECT2V_RENDER__MODEL_DIR": "half-model"}, "render.model_dir: half-model is not a complete diffusers "
                                                           "Stable Diffusion 1.x / 2.x directory"),
        ([], {"DIRECT2V_RENDER__MODEL_DIR": "flux-model"}, "render.model_dir: flux-model is a FluxPipeline, which this "
                                                           "renderer does not run; it runs StableDiffusionPipeline"),
    ],
)
def test_a_bad_config_names_the_key_before_any_model_loads(tmp_path, run_cli, smollm2_dir, args, env, message):
    (tmp_path / "bad-key.toml").write_text("[render]\ncolour = 'red'\n")
    (tmp_path / "bad-syntax.toml").write_text("[render\nsteps = \n")
    (tmp_path / "half-model" / "unet").mkdir(parents=True)
    (tmp_path / "half-model" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    (tmp_path / "flux-model").mkdir()
    (tmp_path / "flux-model" / "model_index.json").write_text('{"_class_name": "FluxPipeline"}')
    shutil.copy(CORPUS / "records.jsonl", tmp_path / "records.jsonl")
    base = {"DIRECT2V_DIRECTOR__MODEL_DIR": str(smollm2_dir), "DIRECT2V_OUTPUT_ROOT": str(tmp_path / "outputs")}
    done = run_cli(["run", "records.jsonl", *args], {**base, **env}, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "outputs").exists()  # stopped before a run directory, Prefect or a model


def test_a_csv_header_with_an_unknown_column_is_a_whole_file_error(monkeypatch):
    """The CLI path of a whole-file CSV problem is the one above (no-prompt-column.csv); this is its other kind."""
    from direct2v.director.prompt_files import check_prompt_file
    from direct2v.director.prompts import PromptFileError

    monkeypatch.chdir(CORPUS)
    with pytest.raises(PromptFileError) as error:
        check_prompt_file(Path("unknown-column.csv"))
    assert str(error.value) == ("unknown-column.csv:1: unknown column 'colour' in the header row ('prompt', 'colour'); "
                                "the first row must name the columns: prompt (required), id, frames, fps, seed, samples")


@pytest.mark.parametrize(("args", "message"), [
    (["plan", "records.jsonl"], "Missing option '--out'"),
    (["run", "records.jsonl", "--no-such-option"], "No such option: --no-such-option"),
    (["render"], "Missing option '--plans'"),
])
def test_a_command_line_mistake_is_a_usage_line_not_a_bug(tmp_path, run_cli, args, message):
    """A missing or unknown option is the user's mistake: click's usage lines and exit 2, never
    "stopped on an unexpected ... (a bug)" with a traceback file."""
    shutil.copy(CORPUS / "records.jsonl", tmp_path / "records.jsonl")
    done = run_cli(args, {"DIRECT2V_OUTPUT_ROOT": str(tmp_path / "outputs")}, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Usage: " in done.stderr, done.stderr
    assert "a bug" not in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "outputs").exists()
