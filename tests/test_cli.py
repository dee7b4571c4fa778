"""The CLI without the LLM: hand-written plans rendered, and user mistakes as one clear line."""

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest


def test_render_hand_written_plans(tmp_path, run_cli, tiny_render_env):
    plans = tmp_path / "plans"
    plans.mkdir()
    plan = {"prompt_id": "hand", "prompt": "a boat", "fps": 3, "seed": 1,
            "frames": ["a boat at dawn", "a boat at noon", "a boat at dusk"]}
    (plans / "hand.json").write_text(json.dumps(plan))
    (plans / "broken.json").write_text(json.dumps({**plan, "prompt_id": "broken", "frames": ["only one"]}))
    done = run_cli(["render", "--plans", plans, "--out", tmp_path / "out"], tiny_render_env)
    assert done.returncode == 1, done.stderr[-3000:]  # one of two plans is invalid
    assert "broken.json: invalid plan" in done.stderr and "Traceback" not in done.stderr
    summary = json.loads(done.stdout)
    assert (summary["total"], summary["ok"], summary["input_problems"]) == (2, 1, 1)
    rows = pq.read_table(tmp_path / "out" / "manifest.parquet").to_pylist()
    assert [(r["prompt_id"], r["status"], r["frame_count"], r["fps"], r["failed_stage"]) for r in rows] == [
        ("invalid-plan-broken", "failed", None, None, "input"), ("hand", "ok", 3, 3, "")]
    assert "broken.json: invalid plan" in rows[0]["error"] and rows[0]["source"].endswith("broken.json")
    # every run ends with its gallery (no model needed), and says where it is
    gallery = tmp_path / "out" / "index.html"
    assert summary["gallery"] == str(gallery) and f"gallery: {gallery}" in done.stderr
    page = gallery.read_text()
    assert 'id="video-hand"' in page and "broken.json: invalid plan" in page
    assert (tmp_path / "out" / "review" / "hand.png").is_file()  # its contact sheet


def test_no_gallery_skips_the_page_and_export_ends_the_run_with_a_dataset(tmp_path, run_cli, tiny_render_env):
    plans = tmp_path / "plans"
    plans.mkdir()
    plan = {"prompt_id": "hand", "prompt": "a boat", "fps": 3, "seed": 1, "frames": ["a boat at dawn", "a boat at dusk"]}
    (plans / "hand.json").write_text(json.dumps(plan))
    done = run_cli(["dataset", "--plans", plans, "--no-gallery", "--export", "webdataset", "--no-progress",
                    "--set", f"output_root={tmp_path / 'outputs'}"], tiny_render_env)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    run_dir = Path(summary["run_dir"])
    assert summary["gallery"] == "" and not (run_dir / "index.html").exists()
    assert summary["export_index"] == str(run_dir / "export" / "webdataset" / "index.json")
    assert json.loads(Path(summary["export_index"]).read_text())["samples"] == 1
    done = run_cli(["dataset", "--plans", plans, "--export", "zip"], tiny_render_env)
    assert done.returncode == 2 and "--export zip: unknown format; choose one of webdataset, hf" in done.stderr


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["run", "missing.txt"], {}, "prompt file not found"),
        (["render", "--plans", "nowhere", "--out", "x"], {}, "no plan .json files"),
        (["run", "prompts_in/examples.txt", "--set", "render.steps"], {}, "KEY=VALUE"),
        (["run", "prompts_in/examples.txt", "--set", "render.colour=red"], {}, "render.colour"),
        (["run", "prompts_in/examples.txt"], {"DIRECT2V_RENDER__GUIDANCE_SCALE": "loud"}, "render.guidance_scale"),
        (["run", "prompts_in/examples.txt", "--config", "none.toml"], {}, "config file not found"),
        (["resume", "prompts_in"], {}, "not a run directory"),
        (["dataset", "--run-id", "../up", "prompts_in/examples.txt"], {}, "run_id must be"),
        (["dataset"], {}, "give either a prompt file or --plans DIR"),
        (["render", "--plans", "tests/data", "--out", "README.md"], {}, "README.md is a file, not a run directory"),
    ],
)
def test_user_mistakes_are_one_clear_line(run_cli, args, env, message):
    done = run_cli(args, env, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
