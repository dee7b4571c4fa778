"""Faults end in one clear line and a resumable run, never a traceback (issue #35).

The issue's first case as a user meets it, through the real CLI (tiny SD, few steps): a JSONL line
nested 100,000 deep. Then the CLI's last-resort handler: a bug prints one line (what failed, the
run, where the traceback went) and exits 1; ``--debug`` or ``DIRECT2V_DEBUG=1`` prints it instead.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from direct2v.core.config import Settings
from direct2v.director.plan import FramePlan, write_plan
from direct2v.render.encode import probe_video


def make_plan(prompt_id: str, frames: int = 2, seed: int = 0) -> FramePlan:
    return FramePlan(prompt_id=prompt_id, prompt=f"a {prompt_id}", fps=2, seed=seed,
                     frames=[f"a red circle {prompt_id} frame {i}" for i in range(frames)])


# --- 1. a JSON line nested 100,000 deep -----------------------------------------------------------


@pytest.mark.flow
def test_a_line_nested_100000_deep_is_one_failed_row_and_the_next_line_is_rendered(tmp_path, cli_env, tiny_sd_dir):
    """``direct2v run prompts.jsonl --resume RUN`` where the valid line's plan is on disk (so the
    director, a decoy here, is never started): the hostile line is one failed ``input`` row, the
    valid line after it becomes a video, and nothing prints a traceback."""
    decoy = tmp_path / "decoy-llm"
    decoy.mkdir()
    (decoy / "config.json").write_text('{"model_type": "not-a-model"}')
    (decoy / "model.safetensors").write_bytes(b"")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("[" * 100_000 + "]" * 100_000 + '\n{"id": "cat", "prompt": "a cat", "seed": 3}\n')
    settings = Settings(frames=2, fps=2, output_root=tmp_path / "outputs", director={"model_dir": decoy},
                        render={"model_dir": tiny_sd_dir, "num_inference_steps": 4, "t0": 1, "t1": 2})
    run_dir = tmp_path / "outputs" / "deep"
    run_dir.mkdir(parents=True)
    (run_dir / "settings.json").write_text(settings.model_dump_json())
    write_plan(FramePlan(prompt_id="cat", prompt="a cat", fps=2, seed=3, frames=["a cat sits", "a cat jumps"]),
               run_dir / "plans")

    done = subprocess.run([sys.executable, "-m", "direct2v", "run", str(prompts), "--resume", str(run_dir)],
                          env={**cli_env, "OMP_NUM_THREADS": "1"}, cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "RecursionError" not in done.stderr
    summary = json.loads(done.stdout)
    assert (summary["total"], summary["ok"], summary["failed"], summary["input_problems"]) == (2, 1, 1, 1)
    rows = {row["prompt_id"]: row for row in pq.read_table(run_dir / "manifest.parquet").to_pylist()}
    bad = rows["invalid-line-1"]
    assert (bad["status"], bad["failed_stage"], bad["source"]) == ("failed", "input", f"{prompts}:1")
    assert bad["error"].startswith("nested too deeply to read")
    assert rows["cat"]["status"] == "ok" and probe_video(run_dir / rows["cat"]["video_path"]).frame_count == 2
    assert f"{prompts}:1: nested too deeply to read" in done.stderr  # the run's log line, in our words
    assert not (run_dir / "director.log").exists()


# --- the last resort --------------------------------------------------------------------------------


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    from direct2v import cli

    monkeypatch.setattr(sys, "argv", ["direct2v", *args])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    return exit_.value.code, capsys.readouterr().err


@pytest.fixture
def crashing_job(tmp_path, monkeypatch, tiny_sd_dir):
    """``render --plans`` arguments whose flow (replaced) makes the run directory, then hits a bug."""
    from direct2v.cli import common

    def flow(request):
        Path(request.run_dir).mkdir(parents=True)
        return {}["a bug"]

    environment = dict(os.environ)  # (the CLI sets Prefect's variables in this process)
    monkeypatch.setattr(common, "load_generate_flow", lambda: flow)
    for name in ("PREFECT_API_URL", "DIRECT2V_DEBUG"):
        os.environ.pop(name, None)
    os.environ.update(PREFECT_HOME=str(tmp_path / "prefect"), DIRECT2V_RENDER__MODEL_DIR=str(tiny_sd_dir))
    write_plan(make_plan("boat"), tmp_path / "plans")
    yield ["render", "--plans", str(tmp_path / "plans"), "--out", str(tmp_path / "run")]
    os.environ.clear()
    os.environ.update(environment)


def test_a_bug_in_a_job_is_one_line_naming_the_run_and_its_traceback_goes_to_run_log(tmp_path, monkeypatch, capsys,
                                                                                      crashing_job):
    code, err = run_main(monkeypatch, capsys, *crashing_job)
    run = tmp_path / "run"
    assert code == 1
    assert err.strip() == (f"error: direct2v render stopped on an unexpected KeyError: 'a bug' (a bug; run directory: "
                           f"{run}; the traceback is in {run / 'run.log'})")
    logged = (run / "run.log").read_text()
    assert "Traceback (most recent call last)" in logged and "KeyError: 'a bug'" in logged


@pytest.mark.parametrize("debug", [["--debug"], ["DIRECT2V_DEBUG"]])
def test_debug_prints_the_traceback_as_python_does(monkeypatch, capsys, crashing_job, debug):
    if debug == ["DIRECT2V_DEBUG"]:
        monkeypatch.setenv("DIRECT2V_DEBUG", "1")
        debug = []
    from direct2v import cli

    monkeypatch.setattr(sys, "argv", ["direct2v", *debug, *crashing_job])
    with pytest.raises(KeyError, match="a bug"):
        cli.main()


def test_outside_a_job_a_bug_keeps_its_traceback_in_a_file_and_a_full_disk_says_what_to_do(tmp_path, monkeypatch,
                                                                                             capsys):
    from direct2v.publish import gallery

    monkeypatch.delenv("DIRECT2V_DEBUG", raising=False)
    monkeypatch.setattr(gallery, "write_review", lambda run_dir: 1 / 0)
    code, err = run_main(monkeypatch, capsys, "review", str(tmp_path))
    found = re.fullmatch(r"error: direct2v review stopped on an unexpected ZeroDivisionError: division by zero "
                         r"\(a bug; the traceback is in (\S+)\)", err.strip())
    assert code == 1 and found, err
    assert "ZeroDivisionError" in Path(found.group(1)).read_text()
    Path(found.group(1)).unlink()
