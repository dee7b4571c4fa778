"""The dataset flow through the CLI on a Dask LocalCluster of 2 worker processes, with the tiny SD
model: every video rendered, then a rerun of the same run after deleting one output renders exactly
that one again, and a new run reuses the finished videos by hash.

Planning is skipped here (``--plans``: re-render existing plan files, a product feature) so that
the test does not start vLLM; the director path of the dataset flow is tested in
``test_dataset_director.py`` (marked ``llm``).
"""

from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest
from conftest import summary_of

from direct2v.director.plan import FramePlan, write_plan
from direct2v.job.manifest import SCHEMA

pytestmark = [pytest.mark.flow]

FRAMES = ["a paper boat on a pond", "the boat drifts to the left", "the boat reaches the reeds"]


@pytest.fixture
def plans_dir(tmp_path):
    plans = tmp_path / "plans-in"
    for i in range(4):
        write_plan(FramePlan(prompt_id=f"boat-{i}", prompt=f"a paper boat {i}", fps=2, seed=i, frames=FRAMES), plans)
    (plans / "broken.json").write_text('{"prompt_id": "broken", "frames": ["only one"]}')
    return plans


def test_dask_two_workers_then_rerun_renders_only_the_deleted_video(tmp_path, run_cli, dataset_env, plans_dir):
    args = ["dataset", "--plans", str(plans_dir), "--run-id", "nightly-1", "--shard-size", "3", "--dask-workers", "2"]
    first = summary_of(run_cli(args, dataset_env, cwd=tmp_path))
    run_dir = tmp_path / "outputs" / "nightly-1"
    assert first["task_runner"] == "dask LocalCluster (2 workers)"
    assert (first["total"], first["ok"], first["failed"], first["shards"]) == (5, 4, 1, 2)
    assert (first["rendered"], first["render_ok"], first["skipped_finished"]) == (4, 4, 0)
    assert first["workers_used"] == 2  # both Dask workers rendered (each loaded the pipeline once)
    table = pq.read_table(run_dir / "manifest.parquet")
    assert table.schema.equals(SCHEMA)
    rows = {r["prompt_id"]: r for r in table.to_pylist()}
    assert rows.pop("invalid-plan-broken")["failed_stage"] == "input"
    assert sorted(rows) == [f"boat-{i}" for i in range(4)]
    assert all(r["status"] == "ok" and r["frame_count"] == 3 and r["video_hash"] for r in rows.values())
    videos = {pid: run_dir / r["video_path"] for pid, r in rows.items()}
    assert all(path.stat().st_size > 0 for path in videos.values())
    assert not list((run_dir / "manifest.parts").glob("*.parquet"))  # every part was compacted in
    assert (run_dir / "plans" / "boat-0.json").is_file() and (run_dir / "run.log").is_file()

    before = {pid: path.stat().st_mtime_ns for pid, path in videos.items()}
    videos["boat-2"].unlink()
    second = summary_of(run_cli(args, dataset_env, cwd=tmp_path))
    assert second["resumed"] is True
    assert (second["rendered"], second["render_ok"], second["skipped_finished"]) == (1, 1, 3)
    assert (second["total"], second["ok"]) == (5, 4)
    after = {pid: path.stat().st_mtime_ns for pid, path in videos.items()}
    assert videos["boat-2"].is_file() and after["boat-2"] != before["boat-2"]
    assert {pid: t for pid, t in after.items() if pid != "boat-2"} == {
        pid: t for pid, t in before.items() if pid != "boat-2"}
    again = {r["prompt_id"]: r for r in pq.read_table(run_dir / "manifest.parquet").to_pylist()}
    assert again["boat-2"]["video_hash"] == rows["boat-2"]["video_hash"] and again["boat-2"]["status"] == "ok"
    assert again["boat-0"]["finished_at"] == rows["boat-0"]["finished_at"]  # kept, not redone

    # A new run over the same plans reuses the finished videos by hash (hard links, nothing rendered).
    third = summary_of(run_cli(["dataset", "--plans", str(plans_dir), "--run-id", "nightly-2",
                                "--reuse-from", str(tmp_path / "outputs" / "*"), "--no-progress"],
                               dataset_env, cwd=tmp_path))
    assert (third["reused_videos"], third["rendered"], third["ok"]) == (4, 0, 4)
    assert third["task_runner"] == "thread pool (1 worker)"
    for pid, path in videos.items():
        assert os.path.samefile(path, tmp_path / "outputs" / "nightly-2" / "videos" / f"{pid}.mp4")
