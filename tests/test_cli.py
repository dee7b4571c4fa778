"""The CLI without the LLM: hand-written plans rendered, and user mistakes as one clear line."""

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest


def run_cli(args, env=None, cwd=None):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DIRECT2V_")}, **(env or {})}
    return subprocess.run([sys.executable, "-m", "direct2v", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_render_hand_written_plans(tmp_path, tiny_sd_dir):
    plans = tmp_path / "plans"
    plans.mkdir()
    plan = {"prompt_id": "hand", "prompt": "a boat", "fps": 3, "seed": 1,
            "frames": ["a boat at dawn", "a boat at noon", "a boat at dusk"]}
    (plans / "hand.json").write_text(json.dumps(plan))
    (plans / "broken.json").write_text(json.dumps({**plan, "prompt_id": "broken", "frames": ["only one"]}))
    env = {"DIRECT2V_RENDER__MODEL_DIR": str(tiny_sd_dir), "DIRECT2V_RENDER__NUM_INFERENCE_STEPS": "6",
           "DIRECT2V_RENDER__T0": "3", "DIRECT2V_RENDER__T1": "4"}
    done = run_cli(["render", "--plans", str(plans), "--out", str(tmp_path / "out")], env)
    assert done.returncode == 1  # one of two plans is invalid
    assert "broken.json: invalid plan" in done.stderr and "Traceback" not in done.stderr
    rows = pq.read_table(tmp_path / "out" / "manifest.parquet").to_pylist()
    assert [(r["prompt_id"], r["status"], r["frame_count"], r["fps"]) for r in rows] == [("hand", "ok", 3, 3)]


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["run", "missing.txt"], {}, "prompt file not found"),
        (["render", "--plans", "nowhere", "--out", "x"], {}, "no plan .json files"),
        (["run", "prompts_in/examples.txt", "--set", "render.steps"], {}, "KEY=VALUE"),
        (["run", "prompts_in/examples.txt", "--set", "render.colour=red"], {}, "render.colour"),
        (["run", "prompts_in/examples.txt"], {"DIRECT2V_RENDER__GUIDANCE_SCALE": "loud"}, "render.guidance_scale"),
        (["run", "prompts_in/examples.txt", "--config", "none.toml"], {}, "config file not found"),
    ],
)
def test_user_mistakes_are_one_clear_line(args, env, message):
    done = run_cli(args, env, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
