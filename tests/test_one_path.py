"""One job path: ``render --plans``, ``dataset``, ``resume`` and ``compare`` follow the same rules,
because they run the same flow and stage modules. Each test here pins a rule on which the two
former job paths (``direct2v run`` vs ``direct2v dataset``) disagreed, through the real CLI (tiny SD,
no LLM: plan files stand in for the director)."""

import json

import pyarrow.parquet as pq
import pytest
from conftest import summary_of

from direct2v.director.plan import FramePlan, write_plan
from direct2v.job.manifest import SCHEMA

pytestmark = [pytest.mark.flow]

FRAMES = ["a paper boat on a pond", "the boat drifts to the left", "the boat reaches the reeds"]
#: What every job command prints, and the run's Prefect artifact holds: one set of names.
SUMMARY_FIELDS = {"run_id", "run_dir", "resumed", "task_runner", "total", "ok", "ok_with_plan_warnings", "failed",
                  "rejected", "failed_by_stage", "input_problems", "plans_reused", "planned", "plan_failed", "rendered", "render_ok", "render_failed",
                  "skipped_finished", "adopted", "reused_videos", "shards", "workers_used", "renderer_loads", "workers_lost",
                  "plan_s", "render_s",
                  "compact_s", "finish_s", "total_s", "render_s_per_video", "wall_s_per_video", "manifest",
                  "gallery", "export_index", "skipped", "disk_full"}


@pytest.fixture
def plans_dir(tmp_path):
    plans = tmp_path / "plans-in"
    for i, name in enumerate(["boat", "kept", "orphan"]):
        write_plan(FramePlan(prompt_id=name, prompt=f"a paper boat {i}", fps=2, seed=i, frames=FRAMES), plans)
    (plans / "broken.json").write_text('{"prompt_id": "broken", "frames": ["only one"]}')
    return plans


def rows_of(run_dir):
    return {row["prompt_id"]: row for row in pq.read_table(run_dir / "manifest.parquet").to_pylist()}


def rewrite_manifest(run_dir, change):
    """Edit manifest.parquet as another tool would (``change`` maps the row list to a new one)."""
    table = pq.read_table(run_dir / "manifest.parquet")
    pq.write_table(table.from_pylist(change(table.to_pylist()), schema=table.schema), run_dir / "manifest.parquet")


def test_a_rerun_keeps_rejected_videos_and_adopts_orphan_mp4s(tmp_path, run_cli, dataset_env, plans_dir):
    """Rejected (by QC) counts as finished, and a finished MP4 whose row is missing is adopted,
    whichever command continues the run (the dataset path used to render both again)."""
    args = ["dataset", "--plans", plans_dir, "--run-id", "r1", "--no-progress"]
    first = summary_of(run_cli(args, dataset_env, cwd=tmp_path))
    assert set(first) == SUMMARY_FIELDS
    assert (first["total"], first["ok"], first["failed"], first["rendered"]) == (4, 3, 1, 3)
    run_dir = tmp_path / "outputs" / "r1"
    videos = {name: run_dir / "videos" / f"{name}.mp4" for name in ("boat", "kept", "orphan")}
    stamps = {name: path.stat().st_mtime_ns for name, path in videos.items()}

    def reject_boat_drop_orphan(rows):
        for row in rows:
            if row["prompt_id"] == "boat":
                row.update(status="rejected", qc_reason="flicker 0.9 > max_flicker 0.5")
        return [row for row in rows if row["prompt_id"] != "orphan"]

    rewrite_manifest(run_dir, reject_boat_drop_orphan)
    reruns = []
    for command in (args, ["resume", run_dir]):
        reruns.append(again := summary_of(run_cli(command, dataset_env, cwd=tmp_path)))
        assert set(again) == SUMMARY_FIELDS and again["resumed"] is True
        assert again["rendered"] == 0, again
        assert {name: path.stat().st_mtime_ns for name, path in videos.items()} == stamps  # nothing rendered again
        rows = rows_of(run_dir)
        assert rows["boat"]["status"] == "rejected" and rows["orphan"]["status"] == "ok"
        assert rows["orphan"]["video_hash"] == first_hash(run_dir, "orphan") and (again["total"], again["rejected"]) == (4, 1)
    assert [(r["skipped_finished"], r["adopted"]) for r in reruns] == [(2, 1), (3, 0)]  # adopted once, then finished


def first_hash(run_dir, prompt_id):
    from direct2v.render.encode import read_comment

    return read_comment(run_dir / "videos" / f"{prompt_id}.mp4").removeprefix("direct2v video_hash=")


def test_every_command_records_a_bad_plan_file_and_prints_the_one_summary(tmp_path, run_cli, dataset_env, plans_dir,
                                                                         tiny_clip_dir):
    runs = {"render": tmp_path / "rendered", "dataset": tmp_path / "outputs" / "d1", "compare": tmp_path / "cmp" / "rvm"}
    summaries = {
        "render": run_cli(["render", "--plans", plans_dir, "--out", runs["render"]], dataset_env, cwd=tmp_path),
        "dataset": run_cli(["dataset", "--plans", plans_dir, "--run-id", "d1", "--no-progress"], dataset_env, cwd=tmp_path),
    }
    assert summaries["render"].returncode == 1  # render is strict: one plan file is invalid
    for command, done in summaries.items():  # the one summary, with the same names for the same counts
        summary = json.loads(done.stdout)
        assert set(summary) == SUMMARY_FIELDS, command
        assert (summary["total"], summary["ok"], summary["failed"], summary["input_problems"]) == (4, 3, 1, 1), command
    done = run_cli(["compare", "--plans", plans_dir, "--out", tmp_path / "cmp", "--variants", "rvm",
                    "--clip-model", tiny_clip_dir], dataset_env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    for command, run_dir in runs.items():
        table = pq.read_table(run_dir / "manifest.parquet")
        assert table.schema.equals(SCHEMA), command
        bad = {row["prompt_id"]: row for row in table.to_pylist()}["invalid-plan-broken"]
        assert (bad["status"], bad["failed_stage"]) == ("failed", "input"), command
        assert "broken.json: invalid plan" in bad["error"] and bad["source"].endswith("broken.json"), command


def test_render_tasks_are_tagged_gpu_only_where_they_use_a_gpu():
    """The ``gpu`` tag (for a tag concurrency limit) costs a server call per task; CPU renders skip it."""
    import torch

    from direct2v.core.config import RenderSettings
    from flows.runners import render_tags

    assert render_tags(RenderSettings(device="cpu"), None, "local") == []
    assert render_tags(RenderSettings(device="cuda"), None, "local") == ["gpu"]
    assert render_tags(RenderSettings(device="cpu"), None, "cuda") == ["gpu"]  # dask-cuda workers
    assert render_tags(RenderSettings(device="auto"), "tcp://10.0.0.5:8786", "local") == ["gpu"]
    assert render_tags(RenderSettings(device="auto"), None, "local") == (["gpu"] if torch.cuda.is_available() else [])
