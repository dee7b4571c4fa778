"""The dataset flow through the CLI on a Dask LocalCluster of 2 worker processes, with the tiny SD
model: every video rendered, and a new run reuses the finished videos by hash. (A run resumed on
Dask, rendering only what is missing, and a running cluster of separate processes:
test_dask_cluster.py.)

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


def test_dask_two_workers_render_every_video_and_a_new_run_reuses_them(tmp_path, run_cli, dataset_env, plans_dir):
    args = ["dataset", "--plans", str(plans_dir), "--run-id", "nightly-1", "--shard-size", "3", "--dask-workers", "2"]
    first = summary_of(run_cli(args, dataset_env, cwd=tmp_path))
    run_dir = tmp_path / "outputs" / "nightly-1"
    assert first["task_runner"] == "dask LocalCluster (2 workers)"
    assert (first["total"], first["ok"], first["failed"], first["shards"]) == (5, 4, 1, 2)
    assert (first["rendered"], first["render_ok"], first["skipped_finished"]) == (4, 4, 0)
    assert first["workers_used"] == first["renderer_loads"] == 2  # both workers rendered, each loaded the pipeline once
    assert first["workers_lost"] == []
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

    # A new run over the same plans reuses the finished videos by hash (hard links, nothing rendered).
    second = summary_of(run_cli(["dataset", "--plans", str(plans_dir), "--run-id", "nightly-2",
                                "--reuse-from", str(tmp_path / "outputs" / "*"), "--no-progress"],
                               dataset_env, cwd=tmp_path))
    assert (second["reused_videos"], second["rendered"], second["ok"]) == (4, 0, 4)
    assert second["task_runner"] == "thread pool (1 worker)"
    for pid, path in videos.items():
        assert os.path.samefile(path, tmp_path / "outputs" / "nightly-2" / "videos" / f"{pid}.mp4")
