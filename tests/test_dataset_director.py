"""The dataset flow with the real director: a prompt list in shards of 2, one vLLM process per shard
(each exits before rendering starts), the tiny SD renderer, one manifest row per line."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from test_dask_flow import dataset_env, run_cli, summary_of  # noqa: F401  (fixture)

pytestmark = [pytest.mark.llm, pytest.mark.flow]


def test_prompt_list_sharded_through_the_director(tmp_path, dataset_env, smollm2_dir):  # noqa: F811
    prompts = tmp_path / "list.jsonl"
    prompts.write_text("\n".join([
        json.dumps({"id": "corgi", "prompt": "A corgi is running and another corgi joins later"}),
        '{"prompt": ',  # a broken line: a failed row, never a stopped run
        json.dumps({"id": "rain", "prompt": "Rain falls from a cloudy sky and then a rainbow appears"}),
        json.dumps({"id": "kite", "prompt": "A red kite rises over a beach", "seed": 5}),
    ]) + "\n")
    env = {**dataset_env, "DIRECT2V_DIRECTOR__MODEL_DIR": str(smollm2_dir)}
    summary = summary_of(run_cli(["dataset", str(prompts), "--shard-size", "2", "--frames", "2", "--run-id", "d1",
                                  "--no-progress"], env, tmp_path))
    run_dir = tmp_path / "outputs" / "d1"
    assert (summary["shards"], summary["total"], summary["input_problems"]) == (2, 4, 1)
    assert summary["planned"] + summary["plan_failed"] == 3 and summary["planned"] >= 1
    assert summary["render_ok"] == summary["planned"] == summary["ok"]
    rows = {r["prompt_id"]: r for r in pq.read_table(run_dir / "manifest.parquet").to_pylist()}
    assert rows.pop("invalid-line-2")["failed_stage"] == "input"
    assert set(rows) == {"corgi", "rain", "kite"}
    for prompt_id, row in rows.items():
        if row["status"] == "ok":
            assert row["frame_count"] == 2 and (run_dir / row["video_path"]).is_file()
            assert row["director_model"] == "smollm2-135m-instruct"
        else:
            assert row["failed_stage"] == "plan" and row["error"]
    assert (run_dir / "director.log").read_text().count("--- exit code") == 2  # one director per shard
