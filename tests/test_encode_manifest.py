"""MP4 encoding read back from the file, and the Parquet manifest's schema and journal."""

import json

import numpy as np
import pyarrow as pa
import pytest
from pydantic import BaseModel, Field

from direct2v.core.config import Settings
from direct2v.core.columns import Int32, arrow_schema
from direct2v.job.manifest import (
    SCHEMA,
    ManifestRow,
    VideoMetrics,
    append_rows,
    compact,
    read_manifest,
)
from direct2v.render.encode import encode_mp4, probe_video


@pytest.mark.parametrize("count, fps", [(8, 2), (5, 1), (16, 8)])
def test_mp4_frame_count_fps_and_duration_read_back(tmp_path, count, fps):
    frames = np.random.default_rng(0).random((count, 64, 48, 3))
    video = encode_mp4(frames, tmp_path / "v.mp4", fps=fps)
    probed = probe_video(tmp_path / "v.mp4")
    assert (probed.frame_count, probed.fps, probed.width, probed.height) == (count, fps, 48, 64)
    assert probed.duration_s == pytest.approx(count / fps, abs=0.05)
    assert video.path == tmp_path / "v.mp4"
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]  # no temporary left behind


def test_encode_refuses_bad_shapes(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        encode_mp4(np.zeros((2, 8, 8)), tmp_path / "v.mp4", fps=1)
    with pytest.raises(ValueError, match="even"):
        encode_mp4(np.zeros((2, 9, 8, 3)), tmp_path / "v.mp4", fps=1)
    assert not (tmp_path / "v.mp4").exists()


def test_manifest_schema_and_last_row_wins(tmp_path):
    append_rows(tmp_path, [ManifestRow(run_id="r", prompt_id="a", status="failed", failed_stage="render", error="x")])
    append_rows(tmp_path, [
        ManifestRow(run_id="r", prompt_id="b", prompt="B", frame_prompts=["1", "2"], fps=2, frame_count=2,
                    seed=3, video_path="videos/b.mp4", status="ok", render_s=1.5),
        ManifestRow(run_id="r", prompt_id="a", prompt="A", status="ok"),
    ])
    with open(tmp_path / "manifest.jsonl", "a") as journal:
        journal.write('{"run_id": "r", "prompt_id": "torn')  # a crash mid-write
    table = read_manifest(compact(tmp_path).path)
    assert table.schema.equals(SCHEMA)
    assert table.schema.field("frame_prompts").type == pa.list_(pa.string())
    rows = {r["prompt_id"]: r for r in table.to_pylist()}
    assert set(rows) == {"a", "b"} and rows["a"]["status"] == "ok"
    assert rows["b"]["frame_prompts"] == ["1", "2"] and rows["b"]["seed"] == 3
    assert not (tmp_path / "manifest.jsonl").exists()  # folded in: the Parquet file alone is the manifest


#: The manifest's columns -- name, Parquet type, nullable -- in order: the contract a dataset team reads.
#: ``SCHEMA`` is made from ``ManifestRow``; changing a field changes this, and must be meant.
MANIFEST_COLUMNS = [
    ("run_id", pa.string(), False),
    ("prompt_id", pa.string(), False),
    ("sample", pa.int32(), True),
    ("sample_of", pa.string(), True),
    ("prompt", pa.string(), True),
    ("source", pa.string(), True),
    ("frame_prompts", pa.list_(pa.string()), True),
    ("fps", pa.int32(), True),
    ("frame_count", pa.int32(), True),
    ("seed", pa.int64(), True),
    ("director_model", pa.string(), True),
    ("template_version", pa.string(), True),
    ("director_sampling", pa.string(), True),
    ("plan_warnings", pa.list_(pa.string()), True),
    ("render_model", pa.string(), True),
    ("render_architecture", pa.string(), True),
    ("video_path", pa.string(), True),
    ("plan_path", pa.string(), True),
    ("video_hash", pa.string(), True),
    ("render_batch_size", pa.int32(), True),
    ("status", pa.string(), False),
    ("failed_stage", pa.string(), True),
    ("error", pa.string(), True),
    ("render_s", pa.float64(), True),
    ("encode_s", pa.float64(), True),
    ("worker", pa.string(), True),
    ("finished_at", pa.timestamp("us", tz="UTC"), True),
    # direct2v eval: VideoMetrics, then who measured and why QC rejected
    ("clip_frame_scores", pa.list_(pa.float64()), True),
    ("clip_prompt_scores", pa.list_(pa.float64()), True),
    ("clip_frame", pa.float64(), True),
    ("clip_prompt", pa.float64(), True),
    ("avg_dist", pa.float64(), True),
    ("consistency", pa.float64(), True),
    ("flicker", pa.float64(), True),
    ("eval_model", pa.string(), True),
    ("qc_reason", pa.string(), True),
]


def test_manifest_schema_is_the_row_model_and_keeps_its_columns():
    assert SCHEMA.equals(pa.schema([pa.field(*column) for column in MANIFEST_COLUMNS]), check_metadata=True)
    assert SCHEMA.names == list(ManifestRow.model_fields)
    # the evaluation's metrics (evaluate.video_metrics) are the row's own columns, not a copy of them
    assert issubclass(ManifestRow, VideoMetrics)
    metric_names = list(VideoMetrics.model_fields)
    start = SCHEMA.names.index(metric_names[0])
    assert SCHEMA.names[start:start + len(metric_names)] == metric_names


def test_a_field_added_to_the_row_model_adds_its_column():
    class Extended(ManifestRow):
        shot_count: Int32 = 0  # a bare Annotated field (fps etc. are Int32 | None)
        tags: list[str] = Field(default_factory=list)
        checked: bool = False
        reviewer: str

    schema = arrow_schema(Extended)
    assert schema.names == [*SCHEMA.names, "shot_count", "tags", "checked", "reviewer"]
    assert pa.schema(list(schema)[: len(SCHEMA)]).equals(SCHEMA)
    assert list(schema)[len(SCHEMA):] == [
        pa.field("shot_count", pa.int32()), pa.field("tags", pa.list_(pa.string())),
        pa.field("checked", pa.bool_()), pa.field("reviewer", pa.string(), nullable=False),
    ]


@pytest.mark.parametrize("annotation", [dict[str, int], int | str, object])
def test_a_field_without_a_clear_column_type_is_refused(annotation):
    Model = type("Model", (BaseModel,), {"__annotations__": {"x": annotation}})
    with pytest.raises(TypeError, match="no Parquet column type"):
        arrow_schema(Model)


def test_run_summary_counts_qc_rejected_apart_from_failed(tmp_path):
    from collections import Counter

    from direct2v.job.render_stage import RenderProgress
    from direct2v.job.request import Run
    from direct2v.job.rundir import Job
    from direct2v.job.summary import summarise

    append_rows(tmp_path, [
        ManifestRow(run_id="r", prompt_id="ok1", status="ok"),
        ManifestRow(run_id="r", prompt_id="bad", status="failed", failed_stage="plan", error="x"),
        ManifestRow(run_id="r", prompt_id="qc", status="rejected"),
    ])
    run = Run(tmp_path, Job(prompt_file="p.txt"), Settings(), resumed=False)
    summary = summarise(run, "thread", Counter(), RenderProgress(), compact(tmp_path), {})
    assert (summary.total, summary.ok, summary.failed, summary.rejected) == (3, 1, 1, 1)
    assert summary.failed_by_stage == {"plan": 1}


def test_plans_accepted_with_warnings_are_counted_apart_from_clean_ones(tmp_path):
    """Honest acceptance: a plan that broke a soft rule reaches the manifest (plan_warnings), the
    summary and the run's last line as such, never as a plain success."""
    from collections import Counter

    from direct2v.director.plan import FramePlan
    from direct2v.job.manifest import plan_row
    from direct2v.job.render_stage import RenderProgress
    from direct2v.job.request import Run
    from direct2v.job.rundir import Job
    from direct2v.job.summary import outcome_line, summarise

    def plan(prompt_id, warnings):
        return FramePlan(prompt_id=prompt_id, prompt="A corgi runs", fps=2, seed=0,
                         frames=["a corgi sits in a park", "a corgi runs in a park"], template_version="v2",
                         director_sampling={"template_version": "v2", "presence_penalty": 1.0}, warnings=warnings)

    append_rows(tmp_path, [
        plan_row("r", plan("clean", []), status="ok"),
        plan_row("r", plan("warned", ["phrase_loop: frames [2] repeat a phrase over and over"]), status="ok"),
        plan_row("r", plan("warned-failed", ["off_topic: frames [1]"]), status="failed", failed_stage="render"),
    ])
    result = compact(tmp_path)
    rows = {r["prompt_id"]: r for r in read_manifest(result.path).to_pylist()}
    assert rows["clean"]["plan_warnings"] == [] and rows["warned"]["plan_warnings"][0].startswith("phrase_loop")
    assert json.loads(rows["warned"]["director_sampling"]) == {"presence_penalty": 1.0, "template_version": "v2"}
    assert result.ok_with_plan_warnings == 1  # a failed row is not counted as ok either way
    run = Run(tmp_path, Job(prompt_file="p.txt"), Settings(), resumed=False)
    summary = summarise(run, "thread", Counter(), RenderProgress(), result, {})
    assert (summary.ok, summary.ok_with_plan_warnings, summary.failed) == (2, 1, 1)
    line = outcome_line(summary.model_dump())
    assert line.startswith("2/3 ok (1 from clean plans, 1 from plans accepted with warnings")


def test_a_manifest_written_before_plan_warnings_existed_still_reads(tmp_path):
    import pyarrow.parquet as pq

    old_schema = pa.schema([field for field in SCHEMA if field.name not in ("plan_warnings", "director_sampling")])
    row = ManifestRow(run_id="r", prompt_id="old", status="ok").model_dump(mode="python")
    pq.write_table(pa.Table.from_pylist([{k: row[k] for k in old_schema.names}], schema=old_schema),
                   tmp_path / "manifest.parquet")
    result = compact(tmp_path)
    rows = read_manifest(result.path).to_pylist()
    assert rows[0]["prompt_id"] == "old" and rows[0]["plan_warnings"] is None and result.ok_with_plan_warnings == 0


def test_a_row_of_one_video_is_its_own_prompts_sample_also_when_read_from_an_older_manifest():
    from direct2v.job.manifest import row_from_record

    old = row_from_record({"run_id": "r", "prompt_id": "boat", "status": "ok"})  # written before the columns
    assert (old.sample, old.sample_of) == (0, "boat")
    assert ManifestRow(run_id="r", prompt_id="boat-s1", sample=1, sample_of="boat", status="ok").sample_of == "boat"
