"""The main job end to end through the real CLI: real vLLM director (bundled SmolLM2) in its own
process, the tiny SD renderer, MP4s read back, the Parquet manifest -- under Prefect."""

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from direct2v.manifest import SCHEMA
from direct2v.plan import read_plan

pytestmark = [pytest.mark.llm, pytest.mark.flow]

PROMPTS = [
    {"id": "corgis", "prompt": "A corgi is running and another corgi joins later", "seed": 3},
    {"id": "rain", "prompt": "Rain falls from a cloudy sky and then a rainbow appears", "frames": 3, "fps": 1},
]


def run_cli(args, env, cwd):
    return subprocess.run(
        [sys.executable, "-m", "direct2v", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=900
    )


@pytest.fixture
def job_env(tmp_path, smollm2_dir, tiny_sd_dir):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIRECT2V_", "PREFECT_"))}
    env.update(
        DIRECT2V_OUTPUT_ROOT=str(tmp_path / "outputs"),
        DIRECT2V_DIRECTOR__MODEL_DIR=str(smollm2_dir),
        DIRECT2V_RENDER__MODEL_DIR=str(tiny_sd_dir),
        DIRECT2V_RENDER__NUM_INFERENCE_STEPS="8",
        DIRECT2V_RENDER__T0="4",
        DIRECT2V_RENDER__T1="6",
        PREFECT_HOME=str(tmp_path / "prefect"),
    )
    return env


def test_run_end_to_end(tmp_path, job_env):
    prompt_file = tmp_path / "prompts.jsonl"
    lines = [json.dumps(p) for p in PROMPTS] + ['{"prompt": "broken", "frames": 0}']
    prompt_file.write_text("\n".join(lines) + "\n")

    done = run_cli(["run", str(prompt_file), "--frames", "4", "--fps", "2"], job_env, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    run_dir = tmp_path / summary["run_dir"]
    assert summary["total"] == 3

    table = pq.read_table(run_dir / "manifest.parquet")
    assert table.schema.equals(SCHEMA)
    rows = {row["prompt_id"]: row for row in table.to_pylist()}
    bad = rows.pop("invalid-line-3")
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
        assert row["render_s"] > 0 and row["encode_s"] > 0
    assert sum(row["status"] == "ok" for row in rows.values()) >= 1

    # A second run never clobbers the first.
    again = run_cli(["render", "--plans", str(run_dir / "plans"), "--out", str(tmp_path / "rerender")], job_env, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (run_dir / "manifest.parquet").exists()
    assert {p.name for p in (tmp_path / "rerender" / "videos").iterdir()} == {
        f"{pid}.mp4" for pid, row in rows.items() if row["status"] == "ok"
    }
