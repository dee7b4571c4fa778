"""The main job end to end through the real CLI: real vLLM director (bundled SmolLM2) in its own
process, the tiny SD renderer, MP4s read back, the Parquet manifest -- under Prefect.

It runs once (``main_job``), air-gapped where the kernel allows network namespaces (test_airgap.py
says how that is proven), and two tests read that one run: what the flow made, and that nothing in
it reached outside the machine. Where namespaces are forbidden the job runs plainly and only the
air-gap test is skipped.

``run`` and ``dataset`` are one flow (``flows/generate.py``); this drives it with the director.
Sharding (one director process per shard) is tested without vLLM in test_shards_manifest.py and
test_resume.py; the render-only paths (``render --plans``, ``dataset --plans`` on Dask,
``resume``) in test_one_path.py and test_dask_flow.py.
"""

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import summary_of
from test_airgap import air_gapped, check_air_gapped, namespace_unavailable

from direct2v.director.plan import read_plan
from direct2v.job.manifest import SCHEMA
from direct2v.render.encode import read_video

pytestmark = [pytest.mark.llm, pytest.mark.flow]

PROMPTS = [
    {"id": "corgis", "prompt": "A corgi is running and another corgi joins later", "seed": 3},
    {"id": "rain", "prompt": "Rain falls from a cloudy sky and then a rainbow appears", "frames": 3, "fps": 1},
]


@pytest.fixture(scope="module")
def main_job(tmp_path_factory, cli_env, tiny_render_env, smollm2_dir):
    """``direct2v run`` of PROMPTS and one bad line, with the bundled director and the tiny renderer,
    in a fresh network namespace under the recorders (or plainly, where namespaces are forbidden).
    The flow starts its own temporary Prefect server, as a first run on an air-gapped machine does."""
    workdir = tmp_path_factory.mktemp("main-job")
    prompt_file = workdir / "prompts.jsonl"
    lines = [json.dumps(PROMPTS[0]), '{"prompt": "broken", "frames": 0}', json.dumps(PROMPTS[1])]
    prompt_file.write_text("\n".join(lines) + "\n")
    env = {key: value for key, value in cli_env.items() if key != "PREFECT_API_URL"}  # its own server
    env = {**env, **tiny_render_env, "PREFECT_HOME": str(workdir / "prefect"),
           "DIRECT2V_OUTPUT_ROOT": str(workdir / "outputs"), "DIRECT2V_DIRECTOR__MODEL_DIR": str(smollm2_dir)}
    command = [sys.executable, "-m", "direct2v", "run", str(prompt_file), "--frames", "4", "--fps", "2"]
    no_namespace = namespace_unavailable()
    if not no_namespace:
        command, env = air_gapped(command, env, workdir)
    done = subprocess.run(command, env=env, cwd=workdir, capture_output=True, text=True, timeout=1200)
    return {"summary": summary_of(done), "workdir": workdir, "prompt_file": prompt_file, "no_namespace": no_namespace}


@pytest.mark.airgap
def test_main_job_runs_air_gapped_without_any_network_attempt(main_job):
    if main_job["no_namespace"]:
        print(f"SKIPPED air-gap test: {main_job['no_namespace']}")
        pytest.skip(main_job["no_namespace"])
    print("air-gapped:", check_air_gapped(main_job["workdir"]))
    summary = main_job["summary"]
    assert summary["ok"] >= 1 and summary["render_failed"] == 0  # it did its work without a network


def test_run_end_to_end_then_rerender_its_plans(main_job, tmp_path, run_cli, tiny_render_env):
    summary, prompt_file = main_job["summary"], main_job["prompt_file"]
    run_dir = main_job["workdir"] / summary["run_dir"]
    assert (summary["total"], summary["shards"], summary["input_problems"]) == (3, 1, 1)
    assert summary["planned"] + summary["plan_failed"] == 2 and summary["render_ok"] == summary["planned"] == summary["ok"]
    assert (run_dir / "director.log").read_text().count("--- exit code") == 1  # one director, all prompts batched

    table = pq.read_table(run_dir / "manifest.parquet")
    assert table.schema.equals(SCHEMA)
    rows = {row["prompt_id"]: row for row in table.to_pylist()}
    bad = rows.pop("invalid-line-2")
    assert bad["status"] == "failed" and bad["failed_stage"] == "input" and "frames" in bad["error"]
    assert set(rows) == {"corgis", "rain"}
    for prompt_id, row in rows.items():
        if row["status"] != "ok":  # the director may fail a prompt: then it says why, and no video exists
            assert row["failed_stage"] == "plan" and row["error"]
            assert not (run_dir / "videos" / f"{prompt_id}.mp4").exists()
            continue
        plan = read_plan(run_dir / row["plan_path"])
        expected_frames = 3 if prompt_id == "rain" else 4
        assert row["frame_count"] == expected_frames == len(plan.frames) == len(row["frame_prompts"])
        assert row["fps"] == (1 if prompt_id == "rain" else 2)
        assert row["seed"] == (3 if prompt_id == "corgis" else 0)
        assert (run_dir / row["video_path"]).stat().st_size > 0
        assert row["director_model"] == "smollm2-135m-instruct" and row["render_model"].startswith("tiny-sd@")
        assert row["render_s"] > 0 and row["encode_s"] > 0 and row["render_batch_size"] == expected_frames
    assert sum(row["status"] == "ok" for row in rows.values()) >= 1
    job = json.loads((run_dir / "job.json").read_text())
    assert job["prompt_file"] == str(prompt_file) and job["shard_size"] == 256

    # Its plans rendered into a second run: the same videos, and the first run is left as it was.
    first = {pid: read_video(run_dir / r["video_path"]) for pid, r in rows.items() if r["status"] == "ok"}
    before = (run_dir / "manifest.parquet").stat().st_mtime_ns
    again = summary_of(run_cli(["render", "--plans", run_dir / "plans", "--out", tmp_path / "rerender"],
                               tiny_render_env, cwd=tmp_path))
    assert again["ok"] == len(first) and (run_dir / "manifest.parquet").stat().st_mtime_ns == before
    second = {r["prompt_id"]: r for r in pq.read_table(tmp_path / "rerender" / "manifest.parquet").to_pylist()}
    for prompt_id, data in first.items():
        assert second[prompt_id]["video_hash"] == rows[prompt_id]["video_hash"]
        assert np.array_equal(read_video(tmp_path / "rerender" / second[prompt_id]["video_path"]), data)  # same video
