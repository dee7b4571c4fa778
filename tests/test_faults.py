"""Faults end in one clear line and a resumable run, never a traceback (issue #35).

The CLI's last-resort handler: a bug prints one line (what failed, the run, where the traceback
went) and exits 1; ``--debug`` or ``DIRECT2V_DEBUG=1`` prints the traceback as Python does.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from direct2v.director.plan import FramePlan, write_plan


def make_plan(prompt_id: str, frames: int = 2, seed: int = 0) -> FramePlan:
    return FramePlan(prompt_id=prompt_id, prompt=f"a {prompt_id}", fps=2, seed=seed,
                     frames=[f"a red circle {prompt_id} frame {i}" for i in range(frames)])


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
