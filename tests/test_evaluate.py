"""``direct2v eval`` on a tiny rendered run, with a tiny random CLIP through the real loading path."""

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from direct2v.core.config import EvalSettings, RenderSettings, Settings
from direct2v.evaluation import metrics
from direct2v.job.manifest import SCHEMA


@pytest.fixture(scope="module")
def clip(tiny_clip_dir):
    from direct2v.evaluation.evaluate import ClipModel

    return ClipModel(tiny_clip_dir, device="cpu")


@pytest.fixture
def run_copy(tmp_path, rendered_run):
    target = tmp_path / "run"
    shutil.copytree(rendered_run, target)
    return target


def test_clip_loads_from_a_local_dir_and_embeds(clip, tiny_clip_dir):
    texts = clip.embed_texts(["a red fox", "a red fox", "a boat at sea " * 40])  # the last is over 77 tokens
    assert texts.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(texts[0], texts[1], atol=1e-6)
    frames = np.random.default_rng(0).integers(0, 256, size=(3, 64, 64, 3), dtype=np.uint8)
    images = clip.embed_images(frames)
    assert images.shape == (3, 16) and clip.model_id.startswith("tiny-clip@")


def test_clip_score_matches_clipmodel_forward(clip, tiny_clip_dir):
    """Our cosine equals CLIPModel's own logits_per_image / logit_scale for the same inputs."""
    import torch
    from PIL import Image

    frame = np.random.default_rng(3).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    ours = metrics.clip_scores(clip.embed_images(frame[None]), clip.embed_texts(["a dog on a beach"]))[0]
    inputs = clip.tokenizer(["a dog on a beach"], return_tensors="pt")
    pixels = clip.processor(images=[Image.fromarray(frame)], return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        out = clip.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], pixel_values=pixels)
        cosine = float(out.logits_per_image[0, 0] / clip.model.logit_scale.exp())
    assert ours == pytest.approx(cosine, abs=1e-5)


def test_video_metrics_known_answers_with_the_tiny_clip(clip):
    from direct2v.evaluation.evaluate import video_metrics

    rng = np.random.default_rng(5)
    still = np.stack([rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)] * 4)
    same = video_metrics(still, ["a cat"] * 4, "a cat", clip)
    assert same.flicker == 0.0 and same.avg_dist == pytest.approx(0.0, abs=1e-6)
    assert same.consistency == pytest.approx(1.0, abs=1e-6)
    assert same.clip_frame_scores == pytest.approx([same.clip_prompt_scores[0]] * 4, abs=1e-6)

    frames = rng.integers(0, 256, size=(4, 64, 64, 3), dtype=np.uint8)
    prompts = ["a cat", "a cat jumps", "a cat lands", "a cat sleeps"]
    forward = video_metrics(frames, prompts, "a cat", clip)
    backward = video_metrics(frames[::-1], prompts[::-1], "a cat", clip)
    assert backward.clip_frame_scores == pytest.approx(forward.clip_frame_scores[::-1], abs=1e-6)
    assert backward.flicker == pytest.approx(forward.flicker)
    assert backward.consistency == pytest.approx(forward.consistency, abs=1e-6)
    assert forward.avg_dist == pytest.approx(metrics.avg_dist(forward.clip_frame_scores))
    with pytest.raises(ValueError):
        video_metrics(frames, prompts[:3], "a cat", clip)


def test_clip_dir_without_safetensors_is_refused(tmp_path, tiny_clip_dir):
    from direct2v.evaluation.evaluate import ClipModel, EvalError

    broken = tmp_path / "clip"
    shutil.copytree(tiny_clip_dir, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(EvalError, match="safetensors"):
        ClipModel(broken)


def test_evaluate_run_writes_manifest_columns_and_summary(run_copy, clip):
    from direct2v.evaluation.evaluate import evaluate_run, read_video

    result = evaluate_run(run_copy, EvalSettings(), clip=clip)
    table = pq.read_table(run_copy / "manifest.parquet")
    assert table.schema.equals(SCHEMA)
    rows = {row["prompt_id"]: row for row in table.to_pylist()}
    assert set(rows) == {"boat", "fox"}
    for row in rows.values():
        assert row["status"] == "ok" and row["qc_reason"] == "" and row["eval_model"] == clip.model_id
        frames = read_video(run_copy / row["video_path"])
        assert len(row["clip_frame_scores"]) == len(row["clip_prompt_scores"]) == row["frame_count"] == len(frames)
        assert row["clip_frame"] == pytest.approx(np.mean(row["clip_frame_scores"]))
        assert row["avg_dist"] == pytest.approx(metrics.avg_dist(row["clip_frame_scores"]))
        assert row["flicker"] == pytest.approx(metrics.flicker(frames))
        assert -1 <= row["consistency"] <= 1
        expected = metrics.clip_scores(clip.embed_images(frames), clip.embed_texts(row["frame_prompts"]))
        assert row["clip_frame_scores"] == pytest.approx(list(expected), abs=1e-6)
    labels = [label for label, _, _ in result.table]
    assert labels == ["1", "2", "3", "Avg.", "Avg. Dist.", "Avg. Dist. (/F)"]  # boat has 3 frames, fox 2
    assert result.table[2] == ("3", pytest.approx(rows["boat"]["clip_frame_scores"][2]), 1)
    summary = json.loads((run_copy / "evaluation.json").read_text())
    assert summary["summary"]["evaluated"] == 2 and summary["summary"]["clip_model"] == clip.model_id
    assert "| Frame # | frame prompt | user prompt |" in (run_copy / "evaluation.md").read_text()
    assert "videos per row: 2, 2, 1" in (run_copy / "evaluation.md").read_text()


def test_qc_rejects_then_re_decides_without_recomputing(run_copy, clip, monkeypatch):
    from direct2v.evaluation import evaluate

    evaluate.evaluate_run(run_copy, EvalSettings(max_flicker=0.0, min_consistency=-1.0), clip=clip)
    rows = {r["prompt_id"]: r for r in pq.read_table(run_copy / "manifest.parquet").to_pylist()}
    assert {r["status"] for r in rows.values()} == {"rejected"}
    assert rows["boat"]["qc_reason"].startswith("flicker ") and "> max_flicker 0" in rows["boat"]["qc_reason"]
    assert (run_copy / rows["boat"]["video_path"]).is_file()  # kept on disk

    def no_decoding(path):
        raise AssertionError("metrics of the same CLIP model must be reused")

    monkeypatch.setattr(evaluate, "read_video", no_decoding)
    evaluate.evaluate_run(run_copy, EvalSettings(max_flicker=1.0), clip=clip)
    again = {r["prompt_id"]: r for r in pq.read_table(run_copy / "manifest.parquet").to_pylist()}
    assert {r["status"] for r in again.values()} == {"ok"}
    assert again["boat"]["flicker"] == rows["boat"]["flicker"] and again["boat"]["qc_reason"] == ""


def test_a_missing_video_is_rejected_with_the_reason(run_copy, clip):
    from direct2v.evaluation.evaluate import evaluate_run

    (run_copy / "videos" / "fox.mp4").unlink()
    evaluate_run(run_copy, EvalSettings(), clip=clip)
    rows = {r["prompt_id"]: r for r in pq.read_table(run_copy / "manifest.parquet").to_pylist()}
    assert rows["fox"]["status"] == "rejected" and rows["fox"]["qc_reason"].startswith("cannot evaluate")
    assert rows["boat"]["status"] == "ok"


def test_eval_cli_end_to_end(run_copy, run_cli, tiny_clip_dir):
    done = run_cli(["eval", str(run_copy), "--clip-model", str(tiny_clip_dir), "--set", "eval.max_flicker=0.0"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| Frame # | frame prompt | user prompt |" in done.stdout and "gallery:" in done.stdout
    statuses = pq.read_table(run_copy / "manifest.parquet").column("status").to_pylist()
    assert statuses == ["rejected", "rejected"]
    assert {p.name for p in (run_copy / "review").iterdir()} == {"boat.png", "fox.png"}
    page = (run_copy / "index.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert" not in page
    assert "a &lt;b&gt;fox&lt;/b&gt; &amp; a hare" in page


def test_eval_cli_needs_a_clip_model_for_clip_thresholds(run_copy, run_cli):
    done = run_cli(["eval", str(run_copy), "--set", "eval.min_frame_clip=0.2"])
    assert done.returncode == 2 and "eval.clip_model_dir" in done.stderr and "Traceback" not in done.stderr


def test_compare_renders_the_variants_and_tabulates_them(tmp_path, tiny_sd_dir, clip):
    from conftest import EVAL_PLANS

    from direct2v.director.plan import FramePlan
    from direct2v.evaluation.compare import compare
    from direct2v.evaluation.evaluate import read_video

    plan = FramePlan(**EVAL_PLANS[1])
    # as few steps as the schedule allows; period 1 so that RVM's reference moves within 2 joint steps
    render = RenderSettings(model_dir=tiny_sd_dir, num_inference_steps=3, t0=0, t1=1, rvm_period=1)
    settings = Settings(render=render)
    table, results = compare([plan], tmp_path / "cmp", settings, clip=clip, echo=lambda line: None)
    assert list(results) == ["t2v-z", "t2v-z-frames", "rvm", "rvm-dsf"]
    assert table.splitlines()[2] == "| Frame # | t2v-z | t2v-z-frames | rvm | rvm-dsf |"
    assert (tmp_path / "cmp" / "comparison.md").read_text().strip() == table.strip()
    videos = {}
    for name, result in results.items():
        (row,) = result.rows
        assert row.status == "ok" and len(row.clip_frame_scores) == 2
        videos[name] = read_video(tmp_path / "cmp" / name / row.video_path)
        expected = metrics.clip_scores(clip.embed_images(videos[name]), clip.embed_texts(plan.frames))
        assert row.clip_frame_scores == pytest.approx(list(expected), abs=1e-6)  # scored against the plan
    assert results["t2v-z"].rows[0].frame_prompts == [plan.prompt] * 2  # rendered from the user prompt
    assert json.loads((tmp_path / "cmp" / "t2v-z" / "plans" / "fox.json").read_text())["frames"] == [plan.prompt] * 2
    assert json.loads((tmp_path / "cmp" / "rvm-dsf" / "settings.json").read_text())["render"]["dsf"] is True
    assert not np.array_equal(videos["t2v-z"], videos["t2v-z-frames"])
    assert not np.array_equal(videos["t2v-z-frames"], videos["rvm"])


def test_a_run_with_only_manifest_parquet_keeps_every_row(run_copy, clip):
    """A compacted dataset run has no journal: evaluation must not drop the rows it does not touch."""
    from direct2v.evaluation.evaluate import evaluate_run
    from direct2v.job.manifest import ManifestRow, append_rows, compact

    append_rows(run_copy, [ManifestRow(run_id="run", prompt_id="late", status="failed", failed_stage="plan", error="x")])
    compact(run_copy)
    assert not (run_copy / "manifest.jsonl").exists()  # folded into manifest.parquet
    evaluate_run(run_copy, EvalSettings(), clip=clip)
    rows = {r["prompt_id"]: r for r in pq.read_table(run_copy / "manifest.parquet").to_pylist()}
    assert set(rows) == {"boat", "fox", "late"}
    assert rows["late"]["status"] == "failed" and rows["late"]["clip_frame"] is None
    assert rows["boat"]["status"] == "ok" and rows["boat"]["clip_frame"] is not None
