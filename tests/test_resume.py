"""Nothing lost on a crash: atomic writes, resume after SIGKILL, out-of-memory retries, and a
director that dies.

The unit tests use a fake renderer (random frames) but the real encoder, journal and manifest;
the kill tests SIGKILL a real ``direct2v`` process group (tiny SD model) mid-render and resume it.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from direct2v.core.config import RenderSettings, Settings
from direct2v.core.files import render_model_id
from direct2v.director.plan import FramePlan, write_plan
from direct2v.director.prompts import PromptRecord
from direct2v.job import planning, render_stage, rundir, videos
from direct2v.job.manifest import (
    JOURNAL_NAME,
    ManifestRow,
    append_rows,
    compact,
    journal_rows,
    read_manifest,
    read_rows,
)
from direct2v.job.shards import ShardWork
from direct2v.job.summary import RunSummary, summary_markdown
from direct2v.render.encode import EncodeError, encode_mp4, partial_name, read_video

REPO = Path(__file__).resolve().parents[1]


def make_plan(prompt_id: str, frames: int = 4, fps: int = 2, seed: int = 0, prompt: str | None = None) -> FramePlan:
    return FramePlan(prompt_id=prompt_id, prompt=prompt or f"a {prompt_id}", fps=fps, seed=seed,
                     frames=[f"{prompt_id} frame {i}" for i in range(frames)])


class FakeRenderer:
    """Random frames; raises ``errors`` (one per call, None = succeed) to inject faults."""

    def __init__(self, settings: RenderSettings, errors=()):
        self.settings = settings
        self.model_id = render_model_id(settings.model_dir)
        self.architecture = "sd"
        self.errors = list(errors)
        self.calls: list[int | None] = []

    def render(self, plan, batch_size=None):
        self.calls.append(batch_size)
        error = self.errors.pop(0) if self.errors else None
        if error is not None:
            raise error
        rng = np.random.default_rng(plan.seed)
        return rng.random((len(plan.frames), 16, 16, 3)).astype(np.float32)


@pytest.fixture
def render_settings(tmp_path):
    """Settings naming a model directory that holds only its model index (FakeRenderer loads nothing)."""
    (tmp_path / "no-model").mkdir()
    (tmp_path / "no-model" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    return RenderSettings(model_dir=tmp_path / "no-model", num_inference_steps=8, t0=4, t1=6, batch_size=8)


# --- atomic writes -------------------------------------------------------------------------------


def test_failed_read_back_leaves_neither_partial_nor_final_file(tmp_path, monkeypatch):
    import direct2v.render.encode as encode

    target = tmp_path / "videos" / "v.mp4"
    encode_mp4(np.zeros((2, 8, 8, 3)), target, fps=1)
    before = target.stat()

    def broken_probe(path):
        raise EncodeError(f"cannot read back {path}: injected")

    monkeypatch.setattr(encode, "probe_video", broken_probe)
    with pytest.raises(EncodeError, match="injected"):
        encode_mp4(np.ones((3, 8, 8, 3)), target, fps=1)
    after = target.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
    assert sorted(p.name for p in target.parent.iterdir()) == ["v.mp4"]  # the old video, untouched


def test_video_killed_while_encoding_never_appears_under_its_name(tmp_path):
    """A real process SIGKILLed mid-encode leaves at most a hidden partial file, which a resume removes."""
    target = tmp_path / "run" / "videos" / "big.mp4"
    script = (
        "import numpy as np, sys; from direct2v.render.encode import encode_mp4; "
        "encode_mp4(np.random.default_rng(0).integers(0, 256, (400, 256, 256, 3), dtype=np.uint8), sys.argv[1], fps=8)"
    )
    child = subprocess.Popen([sys.executable, "-c", script, str(target)], start_new_session=True)
    deadline = time.monotonic() + 120
    while not partial_name(target).exists() and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.05)
    assert child.poll() is None, "the encoder finished before it could be killed"
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    assert not target.exists()
    assert rundir.clean_partials(tmp_path / "run") == [partial_name(target)]
    assert list(target.parent.iterdir()) == []


def test_torn_journal_line_does_not_swallow_the_next_row(tmp_path):
    append_rows(tmp_path, [ManifestRow(run_id="r", prompt_id="a", status="ok")])
    with open(tmp_path / JOURNAL_NAME, "ab") as journal:
        journal.write('{"run_id": "r", "prompt_id": "b", "prompt": "caf\u00e9'.encode()[:-1])  # torn mid-character
    append_rows(tmp_path, [ManifestRow(run_id="r", prompt_id="c", status="ok")])
    assert [row.prompt_id for row in journal_rows(tmp_path / JOURNAL_NAME)] == ["a", "c"]


def test_compaction_failure_keeps_the_previous_manifest(tmp_path, monkeypatch):
    import direct2v.job.manifest as manifest

    append_rows(tmp_path, [ManifestRow(run_id="r", prompt_id="a", status="ok")])
    first = compact(tmp_path).path
    append_rows(tmp_path, [ManifestRow(run_id="r", prompt_id="b", status="ok")])

    class CrashingWriter(manifest.pq.ParquetWriter):
        def write_table(self, table, *args, **kwargs):
            super().write_table(table, *args, **kwargs)
            raise OSError("disk full (injected)")

    monkeypatch.setattr(manifest.pq, "ParquetWriter", CrashingWriter)
    with pytest.raises(OSError, match="injected"):
        compact(tmp_path)
    assert read_manifest(first).column("prompt_id").to_pylist() == ["a"]
    assert [row.prompt_id for row in journal_rows(tmp_path / JOURNAL_NAME)] == ["b"]  # nothing folded in, nothing lost
    assert rundir.clean_partials(tmp_path) == []  # the failed write removed its own temporary


def test_a_run_is_recorded_atomically_and_reopened_with_its_own_job_and_settings(tmp_path):
    run_dir = tmp_path / "run"
    job = rundir.Job(prompt_file=str(REPO / "prompts_in/examples.txt"), shard_size=7)
    run_dir.mkdir()
    rundir.record_run(run_dir, job, Settings(fps_doublings=1, seed=5))
    assert sorted(p.name for p in run_dir.iterdir()) == ["job.json", "settings.json"]  # no temporaries left

    _, reopened, settings, resumed = rundir.open_run(run_dir, None, None, {"seed": 6})
    assert resumed and (reopened.prompt_file, reopened.shard_size) == (job.prompt_file, 7)
    assert len(reopened.resumed_at) == 1 and reopened.started_at == job.started_at
    assert (settings.fps_doublings, settings.seed) == (1, 6)  # recorded, then the override
    # a job given on a resume replaces only the fields it sets
    _, given, _, _ = rundir.open_run(run_dir, rundir.Job(prompt_file="other.txt"), None, {})
    assert (given.prompt_file, given.shard_size) == ("other.txt", 7)


# --- out-of-memory retries -----------------------------------------------------------------------


def test_cuda_oom_retries_with_half_the_batch_until_it_fits(tmp_path, render_settings):
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
    renderer = FakeRenderer(render_settings, errors=[oom, oom, None])
    row = videos.render_plan(make_plan("big", frames=8), tmp_path, renderer)
    assert row.status == "ok" and row.frame_count == 8, row.error
    assert renderer.calls == [None, 4, 2]  # settings.batch_size 8, then the chunked path with 4, then 2


def test_generic_out_of_memory_runtime_error_is_retried(tmp_path, render_settings):
    renderer = FakeRenderer(render_settings, errors=[RuntimeError("CUDA error: out of memory"), None])
    row = videos.render_plan(make_plan("short", frames=4), tmp_path, renderer)
    assert row.status == "ok"
    assert renderer.calls == [None, 2]  # 4 frames never need more than 4 per call: the first retry halves 4


def test_an_oom_retry_records_the_batch_it_used_and_hashes_the_video_with_it(tmp_path, render_settings):
    """The chunked path makes a different video, so a row made after an OOM retry must not claim the
    requested video's hash: it records the batch used, its hash says so, and a resume at the
    requested batch renders it again (at that batch it would be finished)."""
    plan = make_plan("big", frames=8)
    write_plan(plan, tmp_path / "plans")
    renderer = FakeRenderer(render_settings, errors=[torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")])
    row = videos.render_plan(plan, tmp_path, renderer)
    assert (row.status, row.render_batch_size) == ("ok", 4)
    smaller = render_settings.model_copy(update={"batch_size": 4})
    assert row.video_hash == videos.video_hash(plan, smaller, renderer.model_id)
    assert row.video_hash != videos.video_hash(plan, render_settings, renderer.model_id)
    assert videos.read_comment(tmp_path / row.video_path) == videos.video_comment(row.video_hash)
    append_rows(tmp_path, [row])
    compact(tmp_path)
    assert to_render(tmp_path, [plan], render_settings) == ["big"]
    assert to_render(tmp_path, [plan], smaller) == []
    # without a retry the full batch is recorded and the hash is the requested one
    plain = videos.render_plan(make_plan("fits", frames=8), tmp_path, FakeRenderer(render_settings))
    assert plain.render_batch_size == 8
    assert plain.video_hash == videos.video_hash(make_plan("fits", frames=8), render_settings, renderer.model_id)


def test_oom_at_the_smallest_batch_fails_that_video_only(tmp_path, render_settings):
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
    renderer = FakeRenderer(render_settings, errors=[oom] * 3)
    failed = videos.render_plan(make_plan("huge", frames=8), tmp_path, renderer)
    assert renderer.calls == [None, 4, 2]
    assert failed.status == "failed" and failed.failed_stage == "render"
    assert "out of memory even with 2 frames per UNet call" in failed.error and "render.height" in failed.error
    assert not (tmp_path / "videos" / "huge.mp4").exists()
    assert videos.render_plan(make_plan("next"), tmp_path, renderer).status == "ok"  # the others go on


@pytest.mark.parametrize("error", [RuntimeError("shape mismatch"), TypeError("a bug"), ValueError("bad plan")])
def test_other_render_errors_fail_the_video_without_retry(tmp_path, render_settings, error):
    renderer = FakeRenderer(render_settings, errors=[error])
    row = videos.render_plan(make_plan("x"), tmp_path, renderer)
    assert renderer.calls == [None]
    assert row.status == "failed" and row.failed_stage == "render" and str(error) in row.error


def test_real_renderer_falls_back_to_the_chunked_path(tmp_path, tiny_sd_dir):
    """The injected OOM hits the real pipeline call; the retry reaches it with a smaller batch_size,
    and the video is exactly the one that batch size makes when asked for."""
    from direct2v.render.renderer import Renderer

    settings = RenderSettings(model_dir=tiny_sd_dir, num_inference_steps=6, t0=3, t1=4, batch_size=4)
    renderer = Renderer(settings)
    pipeline, batch_sizes = renderer.pipeline, []

    def flaky_pipeline(**kwargs):
        batch_sizes.append(kwargs["batch_size"])
        if kwargs["batch_size"] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return pipeline(**kwargs)

    renderer.pipeline = flaky_pipeline
    plan = make_plan("chunked", frames=4)
    row = videos.render_plan(plan, tmp_path, renderer)
    assert row.status == "ok", row.error
    assert batch_sizes == [4, 2] and row.frame_count == 4 and row.render_batch_size == 2
    renderer.pipeline = pipeline
    asked = Renderer(settings.model_copy(update={"batch_size": 2}))
    again = videos.render_plan(plan, tmp_path / "asked", asked)
    assert again.video_hash == row.video_hash
    assert np.array_equal(read_video(tmp_path / row.video_path), read_video(tmp_path / "asked" / again.video_path))


# --- what a resume redoes: the one rule (videos.unfinished_reason) through the render stage ----------


def to_render(run_dir: Path, plans: list[FramePlan], render_settings: RenderSettings, verify: bool = True,
              sources: dict | None = None) -> list[str]:
    """The prompt ids the render stage would still render (``render_stage.open_shard``), in plan order."""
    for plan in plans:
        write_plan(plan, run_dir / "plans")
    work = ShardWork(1, [(plan.prompt_id, (sources or {}).get(plan.prompt_id, "")) for plan in plans])
    shard = render_stage.open_shard(work, run_dir, render_settings, verify, None, render_stage.RenderProgress())
    compact(run_dir)  # what open_shard recorded (adopted videos) joins the manifest
    return [plan.prompt_id for plan, _ in shard.todo]


def render_all(run_dir: Path, plans: list[FramePlan], renderer) -> None:
    append_rows(run_dir, [videos.render_plan(plan, run_dir, renderer) for plan in plans])
    compact(run_dir)


def test_resume_keeps_finished_videos_and_redoes_what_changed(tmp_path, render_settings):
    plans = [make_plan(name, seed=i) for i, name in enumerate(["keep", "edited", "deleted", "corrupt", "failed"])]
    render_all(tmp_path, plans, FakeRenderer(render_settings))
    assert to_render(tmp_path, plans, render_settings) == []

    plans[1] = plans[1].model_copy(update={"frames": ["hand", "edited", "plan", "frames"]})
    (tmp_path / "videos" / "deleted.mp4").unlink()
    (tmp_path / "videos" / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom truncated")
    append_rows(tmp_path, [videos.plan_row(tmp_path.name, plans[4], status="failed", failed_stage="render", error="x")])
    (tmp_path / "videos" / "failed.mp4").unlink()  # (a video that still matched would be adopted, see below)
    compact(tmp_path)
    assert to_render(tmp_path, plans, render_settings) == ["edited", "deleted", "corrupt", "failed"]
    # without verify the corrupt file is only caught by its size... which it has: the cheap check keeps it
    assert to_render(tmp_path, plans, render_settings, verify=False) == ["edited", "deleted", "failed"]

    changed = render_settings.model_copy(update={"guidance_scale": 5.0})
    assert to_render(tmp_path, plans[:1], changed) == ["keep"]


def test_a_rejected_video_is_finished_for_every_command(tmp_path, render_settings):
    """QC's ``rejected`` is final until ``direct2v eval`` says otherwise: rendering it again would
    give the same video (the dataset path used to render it again, the run path did not)."""
    plans = [make_plan("turned-down"), make_plan("fine", seed=1)]
    render_all(tmp_path, plans, FakeRenderer(render_settings))
    rows = {row.prompt_id: row for row in read_rows(tmp_path)}
    append_rows(tmp_path, [rows["turned-down"].model_copy(update={"status": "rejected", "qc_reason": "flicker"})])
    compact(tmp_path)
    for verify in (True, False):
        assert to_render(tmp_path, plans, render_settings, verify) == []


def test_a_video_finished_just_before_a_crash_is_adopted_not_rendered_again(tmp_path, render_settings):
    """Killed after the MP4 was renamed into place but before its row was recorded: the MP4's
    comment tag carries its video hash, so the resume records it instead of rendering it again."""
    plans = [make_plan("rowless", seed=1), make_plan("stale", seed=2)]
    renderer = FakeRenderer(render_settings)
    for plan in plans:
        assert videos.render_plan(plan, tmp_path, renderer).status == "ok"  # rows never recorded
    plans[1] = plans[1].model_copy(update={"seed": 3})  # its video no longer matches
    before = (tmp_path / "videos" / "rowless.mp4").stat()
    progress = render_stage.RenderProgress()
    for plan in plans:
        write_plan(plan, tmp_path / "plans")
    shard = render_stage.open_shard(ShardWork(1, [("rowless", "p.txt:1"), ("stale", "p.txt:2")]), tmp_path, render_settings,
                              False, None, progress)
    assert [plan.prompt_id for plan, _ in shard.todo] == ["stale"] and progress.counts["adopted"] == 1
    (row,) = read_rows(tmp_path)
    assert (row.prompt_id, row.status, row.frame_count, row.source) == ("rowless", "ok", 4, "p.txt:1")
    assert row.video_hash == videos.video_hash(plans[0], render_settings, renderer.model_id)
    assert (tmp_path / "videos" / "rowless.mp4").stat().st_mtime_ns == before.st_mtime_ns


def test_video_hash_covers_what_decides_the_pixels(render_settings):
    plan = make_plan("a")
    base = videos.video_hash(plan, render_settings, "m@1")
    assert base == videos.video_hash(plan.model_copy(update={"prompt": "other text"}), render_settings, "m@1")
    assert base == videos.video_hash(plan, render_settings.model_copy(update={"model_dir": Path("/elsewhere")}), "m@1")
    variants = [
        videos.video_hash(plan.model_copy(update={"seed": 1}), render_settings, "m@1"),
        videos.video_hash(plan.model_copy(update={"fps": 3}), render_settings, "m@1"),
        videos.video_hash(plan.model_copy(update={"frames": plan.frames[::-1]}), render_settings, "m@1"),
        videos.video_hash(plan, render_settings.model_copy(update={"num_inference_steps": 9}), "m@1"),
        videos.video_hash(plan, render_settings.model_copy(update={"batch_size": 4}), "m@1"),
        videos.video_hash(plan, render_settings, "m@2"),
    ]
    assert len({base, *variants}) == 7


def test_plans_on_disk_are_reused_only_if_they_fit_their_record(tmp_path):
    settings = Settings(frames=4, fps=2, seed=0, render=RenderSettings(model_dir=tmp_path / "none"))
    records = [PromptRecord(id=name, prompt=f"a {name}") for name in ["fits", "other-frames", "broken", "missing"]]
    records.append(PromptRecord(id="own-values", prompt="a own-values", frames=2, fps=1, seed=5))
    write_plan(make_plan("fits"), tmp_path / "plans")
    write_plan(make_plan("other-frames", frames=6), tmp_path / "plans")
    (tmp_path / "plans" / "broken.json").write_text('{"prompt_id": "broken", "frames": ')
    write_plan(make_plan("own-values", frames=2, fps=1, seed=5), tmp_path / "plans")
    reused, to_plan = planning.reusable_plans(records, tmp_path, settings)
    assert [p.prompt_id for p in reused] == ["fits", "own-values"]
    assert [r.id for r in to_plan] == ["other-frames", "broken", "missing"]
    # with one FPS doubling the same plans no longer fit (twice the frames and fps are expected)
    assert planning.reusable_plans(records, tmp_path, settings.model_copy(update={"fps_doublings": 1}))[0] == []


def test_director_killed_by_a_signal_is_retried_once_then_its_prompts_fail(tmp_path, monkeypatch):
    settings = Settings(frames=4, fps=2, render=RenderSettings(model_dir=tmp_path / "none"))
    records = [PromptRecord(id="a", prompt="a a"), PromptRecord(id="b", prompt="a b")]
    calls = []

    def director(records_file, run_dir, timeout_s=None):  # plans "a", then dies; then dies at once
        calls.append([json.loads(line)["id"] for line in Path(records_file).read_text().splitlines()])
        if len(calls) == 1:
            write_plan(make_plan("a"), Path(run_dir) / "plans")
        return -9, ""

    monkeypatch.setattr(planning, "plan_in_subprocess", director)
    plans, rows = planning.plan_records(records, tmp_path, settings)
    assert calls == [["a", "b"], ["b"]]
    assert [p.prompt_id for p in plans] == ["a"]
    assert [(r.prompt_id, r.status, r.failed_stage) for r in rows] == [("b", "failed", "plan")]
    assert "exit code -9" in rows[0].error and "resume" in rows[0].error


def test_more_samples_on_a_resume_plan_only_the_new_ones_and_a_failed_sample_says_whose_it_is(tmp_path, monkeypatch):
    settings = Settings(frames=2, fps=2, samples=3, render=RenderSettings(model_dir=tmp_path / "none"))
    records = [PromptRecord(id="a", prompt="a a"), PromptRecord(id="b", prompt="a b", samples=1),
               PromptRecord(id="c" * 79, prompt="a c")]
    asked = []

    def director(records_file, run_dir, timeout_s=None):  # plans every record but "a-s2" the first time
        lines = [PromptRecord.model_validate_json(line) for line in Path(records_file).read_text().splitlines()]
        asked.append([record.id for record in lines])
        for record in lines:
            if record.id != "a-s2" or len(asked) > 1:
                write_plan(FramePlan(prompt_id=record.id, prompt=record.prompt, fps=2, seed=record.seed or 0,
                                     frames=["a red circle", "a blue circle"]), Path(run_dir) / "plans")
        return 0, ""

    monkeypatch.setattr(planning, "plan_in_subprocess", director)

    def plan_stage(settings):
        expanded, problems = planning.expand_samples(records, settings)
        reused, to_plan = planning.reusable_plans(expanded, tmp_path, settings)
        planned, failed = planning.plan_records(to_plan, tmp_path, settings)
        return problems, {p.prompt_id for p in reused}, {p.prompt_id for p in planned}, failed

    problems, reused, planned, failed = plan_stage(settings)
    assert [p.id for p in problems] == ["c" * 79] and "too long for 3 samples" in problems[0].message
    assert asked == [["a-s0", "a-s1", "a-s2", "b"]] and reused == set() and planned == {"a-s0", "a-s1", "b"}
    assert [(r.prompt_id, r.sample, r.sample_of, r.failed_stage) for r in failed] == [("a-s2", 2, "a", "plan")]
    problems, reused, planned, failed = plan_stage(settings.model_copy(update={"samples": 4}))
    assert asked[-1] == ["a-s2", "a-s3"] and reused == {"a-s0", "a-s1", "b"} and failed == []


HUNG_DIRECTOR = """
import subprocess, sys, time
engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print("engine-pid", engine.pid, flush=True)
time.sleep(120)
"""


def test_a_hung_director_is_stopped_with_its_engine_and_its_prompts_fail(tmp_path, monkeypatch):
    import psutil

    (tmp_path / "director.log").write_text("")
    monkeypatch.setattr(planning, "director_command", lambda *args: [sys.executable, "-c", HUNG_DIRECTOR])
    started = time.monotonic()
    code, message = planning.plan_in_subprocess(tmp_path / "records.jsonl", tmp_path, timeout_s=3)
    assert time.monotonic() - started < 60
    assert code == planning.DIRECTOR_TIMED_OUT and "did not finish within 3 s (director.timeout_s)" in message
    engine_lines = lambda: [line for line in (tmp_path / "director.log").read_text().splitlines()
                            if line.startswith("engine-pid ")]
    engine_pid = int(engine_lines()[0].split()[1])
    time.sleep(0.5)
    assert not psutil.pid_exists(engine_pid) or psutil.Process(engine_pid).status() == psutil.STATUS_ZOMBIE

    # in a run: not restarted (the same hang would come back), every prompt recorded as failed
    settings = Settings(frames=4, fps=2, render=RenderSettings(model_dir=tmp_path / "none"),
                        director={"timeout_s": 2})
    records = [PromptRecord(id="a", prompt="a a"), PromptRecord(id="b", prompt="a b")]
    plans, rows = planning.plan_records(records, tmp_path, settings)
    assert plans == [] and [(r.prompt_id, r.failed_stage) for r in rows] == [("a", "plan"), ("b", "plan")]
    assert "exit code 124" in rows[0].error and "did not finish within 2 s" in rows[0].error
    assert len(engine_lines()) == 2


def test_a_run_directory_has_one_worker_at_a_time(tmp_path):
    with rundir.run_dir_lock(tmp_path):
        with pytest.raises(rundir.RunDirError, match=f"in use by another direct2v process \\(pid {os.getpid()}\\)"):
            with rundir.run_dir_lock(tmp_path):
                pass
    with rundir.run_dir_lock(tmp_path):  # released
        pass


def test_unsafe_ids_of_hand_written_plans_become_hashed_file_names():
    assert videos.video_file("corgi-1.v2") == "videos/corgi-1.v2.mp4"
    for unsafe in ["../../etc/passwd", "/etc/y", "con", "a b", "x" * 200, "ok/../../x", ""]:
        name = videos.video_file(unsafe)
        assert name.startswith("videos/id-") and name.endswith(".mp4") and "/" not in name[len("videos/"):]


def test_markdown_summary_escapes_user_text():
    failures = [{"prompt_id": "x", "source": "p|q.txt:3", "failed_stage": "input",
                 "error": "<img src=x onerror=alert(1)> [click](http://evil.example) *bold* `code`\n| injected |"}]
    summary = RunSummary(run_id="r<i>", run_dir="out/<b>run</b>", resumed=False, task_runner="t", total=1,
                                ok=0, failed=1, rejected=0, failed_by_stage={"input": 1}, manifest="m")
    text = summary_markdown(summary, failures)
    assert "<img" not in text and "<b>" not in text and "<i>" not in text and "](http" not in text and "http://" not in text
    assert "\\*bold\\*" in text and "\\`code\\`" in text and "p\\|q.txt" in text
    assert all(line.count("|") - line.count("\\|") in (3, 5) for line in text.splitlines() if line.startswith("|"))


# --- SIGKILL mid-render, then resume (real processes, tiny SD) ------------------------------------


@pytest.fixture
def kill_env(cli_env, tiny_sd_dir):
    return {**cli_env, "DIRECT2V_RENDER__MODEL_DIR": str(tiny_sd_dir), "DIRECT2V_RENDER__NUM_INFERENCE_STEPS": "8",
            "DIRECT2V_RENDER__T0": "4", "DIRECT2V_RENDER__T1": "6"}


def start_and_kill_after_first_video(args, env, cwd, videos_dir: Path, log: Path) -> dict[str, tuple[int, int]]:
    """Run ``direct2v ARGS``, SIGKILL its whole process group once a video is finished; returns the
    finished videos' (inode, mtime), which a resume must leave alone."""
    with open(log, "wb") as output:
        child = subprocess.Popen([sys.executable, "-m", "direct2v", *args], env=env, cwd=cwd, start_new_session=True,
                                 stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and child.poll() is None:
            if videos_dir.is_dir() and any(p.suffix == ".mp4" and not p.name.startswith(".") for p in videos_dir.iterdir()):
                break
            time.sleep(0.05)
        assert child.poll() is None, log.read_text(errors="replace")[-3000:]
        os.killpg(child.pid, signal.SIGKILL)  # the whole group: the CLI, ffmpeg, Prefect's server
        child.wait()
    return {p.stem: (p.stat().st_ino, p.stat().st_mtime_ns) for p in videos_dir.glob("[!.]*.mp4")}


def assert_resumed(out: Path, ids: list[str], finished: dict[str, tuple[int, int]], failed=()) -> None:
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert sorted(r["prompt_id"] for r in rows) == sorted([*ids, *failed])  # no lost and no duplicated rows
    rows = [r for r in rows if r["prompt_id"] not in failed]
    assert all(r["status"] == "ok" and r["frame_count"] == 4 and r["video_hash"] for r in rows), rows
    for prompt_id, before in finished.items():  # a finished video is never rendered again
        again = (out / "videos" / f"{prompt_id}.mp4").stat()
        assert (again.st_ino, again.st_mtime_ns) == before, prompt_id
    assert sorted(p.name for p in (out / "videos").iterdir()) == sorted(f"{i}.mp4" for i in ids)  # no partials
    assert not (out / "manifest.parts").exists() and not (out / "manifest.jsonl").exists()  # all folded in


def test_render_killed_mid_render_resumes_without_redoing_finished_videos(tmp_path, kill_env):
    ids = ["a-boat", "b-cat", "c-dog", "d-fox"]
    plans = tmp_path / "plans"
    for seed, prompt_id in enumerate(ids):
        write_plan(make_plan(prompt_id, frames=4, fps=2, seed=seed), plans)
    out = tmp_path / "out"
    finished = start_and_kill_after_first_video(["render", "--plans", str(plans), "--out", str(out)], kill_env,
                                                tmp_path, out / "videos", tmp_path / "killed.log")
    assert 1 <= len(finished) < len(ids), finished
    journal_path = out / "manifest.parts" / "journal-00001" / JOURNAL_NAME  # (not there if killed before a row)
    journal_path.parent.mkdir(parents=True, exist_ok=True)
    with open(journal_path, "ab") as journal:  # as if the machine died mid-append, too
        journal.write(b'{"run_id": "out", "prompt_id": "d-fox", "status": "o')

    again = subprocess.run([sys.executable, "-m", "direct2v", "render", "--plans", str(plans), "--out", str(out)],
                           env=kill_env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "pass --resume to continue it" in again.stderr  # never silently redone
    done = subprocess.run([sys.executable, "-m", "direct2v", "render", "--plans", str(plans), "--out", str(out),
                           "--resume"], env=kill_env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["resumed"] and summary["skipped_finished"] + summary["adopted"] == len(finished)
    assert summary["rendered"] == len(ids) - len(finished)
    assert_resumed(out, ids, finished)


@pytest.mark.flow
def test_run_killed_mid_render_then_resume_command_finishes_it(tmp_path, kill_env, tiny_sd_dir):
    """``direct2v run --resume`` on a run whose plans exist (the director is never started: its
    model directory is a decoy that would fail), SIGKILLed after its first video, then finished by
    ``direct2v resume``."""
    decoy = tmp_path / "decoy-llm"
    decoy.mkdir()
    (decoy / "config.json").write_text('{"model_type": "not-a-model"}')
    (decoy / "model.safetensors").write_bytes(b"")
    ids = ["a-boat", "b-cat", "c-dog"]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": f"a {i}", "seed": n}) + "\n" for n, i in enumerate(ids))
                       + '{"id": "../escape", "prompt": "bad id"}\n')
    settings = Settings(frames=4, fps=2, output_root=tmp_path / "outputs",
                        director={"model_dir": decoy},
                        render={"model_dir": tiny_sd_dir, "num_inference_steps": 8, "t0": 4, "t1": 6})
    run_dir = tmp_path / "outputs" / "interrupted"
    run_dir.mkdir(parents=True)
    (run_dir / "settings.json").write_text(settings.model_dump_json())  # a run with no job.json yet
    for n, prompt_id in enumerate(ids):
        write_plan(make_plan(prompt_id, frames=4, fps=2, seed=n), run_dir / "plans")

    finished = start_and_kill_after_first_video(["run", str(prompts), "--resume", str(run_dir)], kill_env, tmp_path,
                                                run_dir / "videos", tmp_path / "killed.log")
    assert 1 <= len(finished) < len(ids), finished

    done = subprocess.run([sys.executable, "-m", "direct2v", "resume", str(run_dir)], env=kill_env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["plans_reused"] == 3 and summary["skipped_finished"] + summary["adopted"] == len(finished)
    assert (summary["total"], summary["ok"], summary["failed"]) == (4, 3, 1)
    assert not (run_dir / "director.log").exists()  # every plan was reused
    rows = {r["prompt_id"]: r for r in pq.read_table(run_dir / "manifest.parquet").to_pylist()}
    bad = rows["invalid-line-4"]
    assert bad["failed_stage"] == "input" and "id must be" in bad["error"]
    assert_resumed(run_dir, ids, finished, failed={"invalid-line-4"})
    assert "prompts.jsonl:4: id: id must be" in (run_dir / "run.log").read_text()


@pytest.mark.flow
def test_director_process_failure_marks_its_prompts_failed_and_the_run_finishes(tmp_path, kill_env):
    """A director that cannot start its engine (an unloadable model) exits non-zero: every prompt it
    was given gets a failed "plan" row saying why, and the run still writes its manifest."""
    decoy = tmp_path / "decoy-llm"
    decoy.mkdir()
    (decoy / "config.json").write_text('{"model_type": "not-a-model"}')
    (decoy / "model.safetensors").write_bytes(b"")
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"A corgi runs\n\nRain then a rainbow\n\xff\n")
    env = {**kill_env, "DIRECT2V_OUTPUT_ROOT": str(tmp_path / "out"), "DIRECT2V_DIRECTOR__MODEL_DIR": str(decoy)}
    done = subprocess.run([sys.executable, "-m", "direct2v", "run", str(prompts), "--frames", "4"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1 and done.stdout.strip(), done.stderr[-3000:]  # nothing succeeded; no crash
    summary = json.loads(done.stdout)
    run_dir = Path(summary["run_dir"])
    rows = {r["prompt_id"]: r for r in pq.read_table(run_dir / "manifest.parquet").to_pylist()}
    assert rows.pop("invalid-line-4")["failed_stage"] == "input"
    assert len(rows) == 2
    for row in rows.values():
        assert (row["status"], row["failed_stage"]) == ("failed", "plan")
        assert "the director process failed (exit code 1)" in row["error"] and "not-a-model" in row["error"]
    assert "not-a-model" in (run_dir / "director.log").read_text()
    assert "planning failed" in (run_dir / "run.log").read_text()
