"""Faults end in one clear line and a resumable run, never a traceback (issue #35).

The issue's three cases as a user meets them, through the real CLI (tiny SD, few steps): a JSONL
line nested 100,000 deep, a disk that fills up mid-run (a real 600 KB tmpfs, where the machine lets
a test mount one), and a Prefect server that is down. Then the CLI's last-resort handler, and a
full disk at the write helpers: on a real full tmpfs, and with an injected ENOSPC (everywhere).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from direct2v.core.config import RenderSettings, Settings
from direct2v.core.files import DiskFullError, atomic_path, write_atomically
from direct2v.director.plan import FramePlan, write_plan
from direct2v.job import manifest, planning, render_stage, videos
from direct2v.job.rundir import run_log
from direct2v.render.encode import encode_mp4, partial_name, probe_video

PAGE = 4096


def make_plan(prompt_id: str, frames: int = 2, seed: int = 0) -> FramePlan:
    return FramePlan(prompt_id=prompt_id, prompt=f"a {prompt_id}", fps=2, seed=seed,
                     frames=[f"a red circle {prompt_id} frame {i}" for i in range(frames)])


def leftovers(directory: Path) -> list[Path]:
    """Half-written files a full disk may have left visible (there must be none)."""
    return [*directory.rglob(".*.tmp"), *directory.rglob(".*.partial.mp4"), *directory.rglob("*.partial")]


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


# --- 2. a disk that fills up mid-run --------------------------------------------------------------


@contextlib.contextmanager
def small_disk(path: Path, size: str = "600k"):
    """A real tmpfs of ``size`` at ``path`` (skips where the machine refuses to mount one)."""
    path.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip() or mounted.returncode}); "
                    "the injected-ENOSPC tests below cover the write paths")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def leave_free(disk: Path, free: int) -> None:
    """(Re)write ``disk/filler`` so that about ``free`` bytes stay free on the disk."""
    filler = disk / "filler"
    filler.unlink(missing_ok=True)
    size = shutil.disk_usage(disk).free - free
    if size > 0:
        filler.write_bytes(b"\0" * (size // PAGE * PAGE))


def test_a_full_disk_stops_the_run_in_one_line_and_resume_finishes_it(tmp_path, run_cli, dataset_env):
    """``render --plans`` of 12 plans onto a 600 KB tmpfs: the disk fills up while videos are
    written (exit 3, one line naming the file and the resume command, finished videos and manifest
    rows intact, nothing half-written); a resume with room for the videos but not the gallery
    finishes every video and stops at the gallery without failing the flow (the issue's case);
    a resume after freeing space finishes the gallery, never rendering a finished video again."""
    plans = tmp_path / "plans"
    for number in range(12):
        write_plan(make_plan(f"v{number:02d}", seed=number), plans)
    env = {key: value for key, value in dataset_env.items() if key != "DIRECT2V_OUTPUT_ROOT"}
    with small_disk(tmp_path / "disk") as disk:
        run = disk / "run"
        stop_line = re.compile(rf"error: disk full writing {re.escape(str(run))}/(\S+): free space, "
                               rf"then: direct2v resume {re.escape(str(run))}")

        leave_free(disk, 140 * 1024)  # the plans, settings and a few videos fit
        done = run_cli(["render", "--plans", plans, "--out", run], env)
        assert done.returncode == 3, done.stderr[-3000:]
        assert stop_line.fullmatch(done.stderr.strip().splitlines()[-1]), done.stderr[-1500:]
        assert "Traceback" not in done.stderr and "[Errno" not in done.stderr
        finished = {p.stem: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (run / "videos").glob("v*.mp4")}
        assert 1 <= len(finished) < 12, finished
        assert not leftovers(run)
        ok_rows = {row.prompt_id for row in manifest.read_rows(run) if row.status == "ok"}
        assert ok_rows <= set(finished) and len(set(finished) - ok_rows) <= 1  # (one may await adoption)
        for name in finished:
            assert probe_video(run / "videos" / f"{name}.mp4").frame_count == 2

        leave_free(disk, (12 - len(finished)) * 16 * 1024 + 128 * 1024)  # the videos fit, the gallery does not
        done = run_cli(["resume", run], env)
        assert done.returncode == 3, done.stderr[-3000:]
        written = stop_line.fullmatch(done.stderr.strip().splitlines()[-1])
        assert written and (written.group(1).startswith("review/") or written.group(1) == "index.html"), done.stderr[-1500:]
        assert "Traceback" not in done.stderr
        summary = json.loads(done.stdout)  # the flow finished: its summary says what was skipped
        assert (summary["ok"], summary["failed"]) == (12, 0)
        assert summary["skipped"] == {"gallery": f"disk full writing {run / written.group(1)}"}
        assert summary["disk_full"] == str(run / written.group(1)) and summary["gallery"] == ""
        assert [row["status"] for row in pq.read_table(run / "manifest.parquet").to_pylist()] == ["ok"] * 12
        assert not leftovers(run)

        (disk / "filler").unlink()
        done = run_cli(["resume", run], env)
        assert done.returncode == 0, done.stderr[-3000:]
        summary = json.loads(done.stdout)
        assert (summary["ok"], summary["rendered"], summary["skipped"]) == (12, 0, {})
        assert (run / "index.html").is_file() and len(list((run / "review").glob("*.png"))) == 12
        for name, before in finished.items():  # a finished video is never rendered again
            again = (run / "videos" / f"{name}.mp4").stat()
            assert (again.st_ino, again.st_mtime_ns) == before, name


def test_writes_onto_a_really_full_disk_are_undone_and_name_their_file(tmp_path):
    """The write helpers on a full tmpfs: each raises DiskFullError naming its file, the file it
    replaces stays as it was, and no temporary is left."""
    with small_disk(tmp_path / "disk", "256k") as disk:
        old = disk / "settings.json"
        write_atomically(old, "old\n")
        journal_dir = disk / "journal"
        manifest.append_rows(journal_dir, [manifest.failed_row("run", "a", "input", "bad line")])
        leave_free(disk, 0)
        with pytest.raises(DiskFullError) as error:
            write_atomically(old, "x" * (1 << 20))
        assert error.value.path == old and old.read_text() == "old\n"
        frames = np.random.default_rng(0).random((8, 64, 64, 3)).astype(np.float32)
        with pytest.raises(DiskFullError) as error:
            encode_mp4(frames, disk / "videos" / "v.mp4", fps=2)
        assert error.value.path == disk / "videos" / "v.mp4" and not (disk / "videos" / "v.mp4").exists()
        with pytest.raises(DiskFullError) as error:  # a manifest part: pyarrow's error keeps no errno
            manifest.write_part(disk, 1, [manifest.failed_row("run", f"p{i}", "input", "x" * 4000) for i in range(200)])
        assert error.value.path == manifest.part_path(disk, 1)
        with pytest.raises(DiskFullError):
            manifest.append_rows(journal_dir, [manifest.failed_row("run", "b", "input", "x" * (1 << 19))])
        assert [row.prompt_id for row in manifest.journal_rows(journal_dir / manifest.JOURNAL_NAME)] == ["a"]
        assert not leftovers(disk)


# --- 3. a Prefect server that is down -------------------------------------------------------------


def test_an_unreachable_prefect_server_is_one_line_before_anything_starts(tmp_path, run_cli, tiny_render_env):
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/api"
    plans = tmp_path / "plans"
    write_plan(make_plan("boat"), plans)
    done = run_cli(["render", "--plans", plans, "--out", tmp_path / "run"], {**tiny_render_env, "PREFECT_API_URL": url})
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip() == (
        f"error: the Prefect server at {url} (PREFECT_API_URL) does not answer ([Errno 111] Connection refused); "
        "start it (prefect server start), or unset PREFECT_API_URL to run on a temporary local server")
    assert not (tmp_path / "run").exists()


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

    def full(run_dir):
        raise DiskFullError(Path(run_dir) / "index.html")

    monkeypatch.setattr(gallery, "write_review", full)
    code, err = run_main(monkeypatch, capsys, "review", str(tmp_path))
    assert code == 3
    assert err.strip() == f"error: disk full writing {tmp_path / 'index.html'}: free space, then run the command again"


# --- a full disk at each write, injected -----------------------------------------------------------


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_write_atomically_on_a_full_disk_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "job.json"
    write_atomically(path, "old\n")

    def half_then_full(self, text, **kwargs):
        with open(self, "w", encoding="utf-8") as stream:
            stream.write(text[: len(text) // 2])
        no_space()

    monkeypatch.setattr(Path, "write_text", half_then_full)
    with pytest.raises(DiskFullError) as error:
        write_atomically(path, "new content\n")
    assert (str(error.value), error.value.path) == (f"disk full writing {path}", path)
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["job.json"]


@pytest.mark.parametrize("quota", [errno.ENOSPC, errno.EDQUOT])
def test_only_a_full_disk_or_quota_becomes_a_disk_full_error(tmp_path, quota):
    with pytest.raises(DiskFullError), atomic_path(tmp_path / "a"):
        raise OSError(quota, os.strerror(quota))
    with pytest.raises(DiskFullError), atomic_path(tmp_path / "b"):  # pyarrow keeps the errno only in its text
        raise OSError(f"Error writing bytes to file. Detail: [errno {quota}] {os.strerror(quota)}")
    with pytest.raises(PermissionError), atomic_path(tmp_path / "c"):
        raise PermissionError(errno.EACCES, "Permission denied")
    assert os.listdir(tmp_path) == []


def test_an_encode_that_runs_out_of_space_is_a_disk_full_error_not_a_failed_video(tmp_path, monkeypatch):
    from direct2v.render import encode

    fake = tmp_path / "ffmpeg"  # writes part of the video, then fails as ffmpeg does on a full disk
    fake.write_text('#!/bin/sh\nfor arg; do case "$arg" in *.mp4) out="$arg";; esac; done\n'
                    'head -c 100 /dev/zero > "$out"\necho "av_interleaved_write_frame(): No space left on device" >&2\n'
                    'exit 1\n')
    fake.chmod(0o755)
    monkeypatch.setattr(encode, "ffmpeg_exe", lambda: str(fake))
    target = tmp_path / "videos" / "a.mp4"
    with pytest.raises(DiskFullError) as error:
        encode_mp4(np.zeros((2, 16, 16, 3), np.uint8), target, fps=2)
    assert error.value.path == target and not target.exists() and not partial_name(target).exists()

    class Renderer:  # the video stage passes it on: never a failed row for a full disk
        settings = RenderSettings(model_dir=tmp_path / "no-model", num_inference_steps=8, t0=4, t1=6)
        model_id, architecture = "fake@0", "sd"

        def render(self, plan, batch_size=None):
            return np.zeros((len(plan.frames), 16, 16, 3), np.float32)

    with pytest.raises(DiskFullError):
        videos.render_plan(make_plan("a"), tmp_path, Renderer())


def test_a_journal_append_on_a_full_disk_leaves_no_torn_line(tmp_path, monkeypatch):
    journal = tmp_path / "journal"
    manifest.append_rows(journal, [manifest.failed_row("run", "a", "input", "bad")])
    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(DiskFullError) as error:
        manifest.append_rows(journal, [manifest.failed_row("run", "b", "input", "bad")])
    monkeypatch.undo()
    assert error.value.path == journal / manifest.JOURNAL_NAME
    assert (journal / manifest.JOURNAL_NAME).read_bytes().count(b"\n") == 1
    assert [row.prompt_id for row in manifest.journal_rows(journal / manifest.JOURNAL_NAME)] == ["a"]


def test_a_render_task_stopped_by_a_full_disk_stops_the_render_stage(tmp_path):
    shard = render_stage.OpenShard(1)
    with pytest.raises(DiskFullError):
        render_stage.close_video(shard, tmp_path, make_plan("a"), "", DiskFullError(tmp_path / "videos" / "a.mp4"),
                                 render_stage.RenderProgress())
    assert shard.rows == [] and not (tmp_path / "manifest.parts").exists()  # no failed row for it


def test_a_director_that_cannot_write_its_plans_stops_the_job(tmp_path, monkeypatch):
    from direct2v.director.prompts import PromptRecord

    written = tmp_path / "plans" / "a.json"
    monkeypatch.setattr(planning, "plan_in_subprocess",
                        lambda *args: (planning.DIRECTOR_DISK_FULL, f"error: disk full writing {written}"))
    monkeypatch.setattr(planning, "token_budget", lambda settings: None)
    with pytest.raises(DiskFullError) as error:
        planning.plan_records([PromptRecord(id="a", prompt="a cat")], tmp_path, Settings())
    assert error.value.path == written


def test_a_run_log_on_a_full_disk_warns_once_instead_of_a_traceback_per_line(tmp_path, capsys):
    import logging

    (tmp_path / "run.log").symlink_to("/dev/full")  # every write: ENOSPC
    log = logging.getLogger("direct2v.test_faults")
    with run_log(tmp_path):
        for _ in range(5):
            log.error("a line")
    err = capsys.readouterr().err
    assert "Logging error" not in err and "Traceback" not in err


def test_free_space_below_what_the_remaining_videos_need_is_a_warning(tmp_path, monkeypatch, caplog):
    (tmp_path / "videos").mkdir()
    for name in ("a", "b"):
        (tmp_path / "videos" / f"{name}.mp4").write_bytes(b"\0" * 50_000)
    monkeypatch.setattr(render_stage.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 10**5, 10**5))
    assert not render_stage.check_free_space(tmp_path / "nothing-yet", 12)  # no size to go by yet
    with caplog.at_level("WARNING"):
        assert render_stage.check_free_space(tmp_path, 12)
    assert ("only 100.0 KB free on the disk of" in caplog.text and "the 10 videos still to make need about 500.0 KB at "
            "the 50.0 KB per video seen so far" in caplog.text), caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert render_stage.check_free_space(tmp_path, 3)
    assert caplog.text == ""
