"""Exports of a run as training data, read back with the libraries training code uses (webdataset, datasets)."""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
from pathlib import Path

import pytest
from conftest import REPO

from direct2v.job.manifest import append_rows, read_rows
from direct2v.publish.export import ExportError, export_run, sample_key
from direct2v.render.encode import read_video


@pytest.fixture
def run_dir(rendered_run, tmp_path) -> Path:
    """A copy of the rendered run (boat: 3 frames, fox: 2) plus a QC-rejected and a failed row."""
    run = tmp_path / "outputs" / "run-1"
    shutil.copytree(rendered_run, run)
    boat = next(row for row in read_rows(run) if row.prompt_id == "boat")
    append_rows(run, [
        boat.model_copy(update={"prompt_id": "boat.v2", "qc_reason": "flicker 0.9 > 0.5", "status": "rejected"}),
        boat.model_copy(update={"prompt_id": "broken", "status": "failed", "failed_stage": "render",
                                "error": "out of memory", "video_path": ""}),
    ])
    return run


def manifest_rows(run: Path) -> dict:
    return {row.prompt_id: row for row in read_rows(run)}


def read_shards(shards: list[Path]) -> list[dict]:
    import webdataset as wds

    return list(wds.WebDataset([str(path) for path in shards], shardshuffle=False).decode())


def test_webdataset_shards_read_back_with_every_field_of_the_manifest(run_dir):
    result = export_run(run_dir, run_dir / "export" / "webdataset")
    samples = read_shards([result.out_dir / name for name in result.files])
    rows = manifest_rows(run_dir)
    assert [s["__key__"] for s in samples] == ["boat", "fox"]  # ok rows only, in prompt-id order
    assert result.skipped == {"failed": 1, "rejected": 1, "missing_video": 0}
    for sample in samples:
        row = rows[sample["__key__"]]
        assert sample["txt"] == row.prompt  # the caption: the user prompt
        metadata = sample["json"]
        assert metadata == {
            "prompt_id": row.prompt_id, "sample": 0, "sample_of": row.prompt_id, "prompt": row.prompt,
            "frame_prompts": row.frame_prompts, "fps": row.fps,
            "frame_count": row.frame_count, "seed": row.seed, "director_model": row.director_model,
            "render_model": row.render_model, "template_version": row.template_version,
            "plan_warnings": row.plan_warnings, "video_hash": row.video_hash, "status": "ok",
        }
        assert sample["mp4"] == (run_dir / row.video_path).read_bytes()
    clip = result.out_dir / "check.mp4"
    clip.write_bytes(samples[0]["mp4"])
    assert read_video(clip).shape[0] == 3  # the boat's MP4 decodes to its 3 frames
    index = json.loads(result.index.read_text())
    assert index["samples"] == 2 and [f["keys"] for f in index["files"]] == [["boat", "fox"]]


def test_the_same_run_exported_twice_gives_byte_identical_shards(run_dir, tmp_path):
    first = export_run(run_dir, tmp_path / "a", max_samples=1)
    second = export_run(run_dir, tmp_path / "b", max_samples=1)
    assert first.files == second.files == ["shard-00000.tar", "shard-00001.tar"]  # one sample per shard
    for name in first.files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    with tarfile.open(tmp_path / "a" / first.files[0]) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["boat.json", "boat.mp4", "boat.txt"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(0, 0, 0, "", "", 0o644)}
    assert (tmp_path / "a" / "index.json").read_bytes() == (tmp_path / "b" / "index.json").read_bytes()


def test_rejected_videos_only_when_asked_and_dotted_ids_get_safe_keys(run_dir, tmp_path):
    result = export_run(run_dir, tmp_path / "all", include_rejected=True)
    samples = read_shards([result.out_dir / name for name in result.files])
    key = sample_key("boat.v2")
    assert "." not in key and key.startswith("boat_v2-")
    assert sorted(s["__key__"] for s in samples) == sorted(["boat", key, "fox"])
    rejected = next(s for s in samples if s["__key__"] == key)
    assert rejected["json"]["prompt_id"] == "boat.v2" and rejected["json"]["status"] == "rejected"
    assert result.skipped == {"failed": 1, "rejected": 0, "missing_video": 0}


def test_shards_respect_the_byte_limit(run_dir, tmp_path):
    one_video = (run_dir / manifest_rows(run_dir)["boat"].video_path).stat().st_size
    result = export_run(run_dir, tmp_path / "small", max_bytes=one_video)  # every sample is larger: one per shard
    assert len(result.files) == 2


def test_an_interrupted_export_leaves_no_half_shard_and_resumes(run_dir, tmp_path, monkeypatch):
    out = tmp_path / "resumed"
    addfile = tarfile.TarFile.addfile

    def failing(tar, info, fileobj=None):
        if info.name == "fox.mp4":  # the second shard, half written
            raise OSError("disk full")
        return addfile(tar, info, fileobj)

    monkeypatch.setattr(tarfile.TarFile, "addfile", failing)
    with pytest.raises(OSError, match="disk full"):
        export_run(run_dir, out, max_samples=1)
    assert sorted(p.name for p in out.iterdir()) == ["export-progress.jsonl", "shard-00000.tar"]  # no half shard
    monkeypatch.setattr(tarfile.TarFile, "addfile", addfile)
    result = export_run(run_dir, out, max_samples=1)
    assert result.kept == 1 and result.files == ["shard-00000.tar", "shard-00001.tar"]
    reference = export_run(run_dir, tmp_path / "fresh", max_samples=1)
    for name in result.files:
        assert (out / name).read_bytes() == (reference.out_dir / name).read_bytes()
    (out / "shard-00000.tar").write_bytes(b"damaged")  # a kept shard must still be what it claims
    assert export_run(run_dir, out, max_samples=1).kept == 1  # shard 1 kept, shard 0 rewritten
    assert (out / "shard-00000.tar").read_bytes() == (reference.out_dir / "shard-00000.tar").read_bytes()


def test_hf_layout_loads_with_datasets_offline(run_dir, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(run_dir.parent / "hf-cache"))
    result = export_run(run_dir, run_dir / "export" / "hf", format="hf")
    dataset = datasets.load_dataset(str(result.out_dir), split="train")
    rows = manifest_rows(run_dir)
    assert dataset.num_rows == 2 and dataset["key"] == ["boat", "fox"]
    for item in dataset:
        row = rows[item["prompt_id"]]
        assert item["caption"] == row.prompt and item["frame_prompts"] == row.frame_prompts
        assert (item["fps"], item["frame_count"], item["seed"], item["video_hash"]) == (
            row.fps, row.frame_count, row.seed, row.video_hash)
        video = result.out_dir / item["video"]
        assert video.read_bytes() == (run_dir / row.video_path).read_bytes()
        assert (item["sample"], item["sample_of"]) == (0, row.prompt_id)  # one video per prompt


def test_the_samples_of_a_prompt_carry_their_number_and_prompt_in_both_formats(run_dir, tmp_path, monkeypatch):
    import datasets

    rows = read_rows(run_dir)
    samples = [row.model_copy(update={"prompt_id": f"idea-s{k}", "sample": k, "sample_of": "idea"})
               for k, row in enumerate(r for r in rows if r.status == "ok")]
    run = tmp_path / "samples"
    run.mkdir()
    append_rows(run, samples)
    for video in {row.video_path for row in samples}:
        (run / video).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(run_dir / video, run / video)
    shards = export_run(run, tmp_path / "wds")
    read = read_shards([shards.out_dir / name for name in shards.files])
    assert [(s["__key__"], s["json"]["sample"], s["json"]["sample_of"]) for s in read] == [
        ("idea-s0", 0, "idea"), ("idea-s1", 1, "idea")]
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    dataset = datasets.load_dataset(str(export_run(run, tmp_path / "hf", format="hf").out_dir), split="train")
    assert list(zip(dataset["sample"], dataset["sample_of"], strict=True)) == [(0, "idea"), (1, "idea")]


def test_nothing_to_export_and_bad_options_are_one_clear_error(run_dir, tmp_path, run_cli):
    with pytest.raises(ExportError, match="unknown export format 'zip'"):
        export_run(run_dir, tmp_path / "x", format="zip")
    with pytest.raises(ExportError, match="not the run directory"):
        export_run(run_dir, run_dir)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ExportError, match="a-file is a file; give --out a directory"):
        export_run(run_dir, tmp_path / "a-file")
    done = run_cli(["export", run_dir, "--format", "zip"])
    assert done.returncode == 2 and done.stderr.strip().endswith(
        "error: unknown export format 'zip'; choose one of webdataset, hf"), done.stderr
    done = run_cli(["export", run_dir])
    assert done.returncode == 0, done.stderr
    assert "exported 2 videos as webdataset" in done.stdout and "1 failed, 1 rejected" in done.stdout
    assert (run_dir / "export" / "webdataset" / "shard-00000.tar").is_file()


def readme_snippet(name: str) -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"<!-- {name} -->\s*```python\n(.*?)```", text, re.S)
    assert match, f"README.md has no {name} snippet"
    return match.group(1)


@pytest.mark.parametrize("fmt, name", [("webdataset", "export-webdataset-snippet"), ("hf", "export-hf-snippet")])
def test_readme_snippets_run_as_written(run_dir, monkeypatch, capsys, fmt, name):
    monkeypatch.chdir(run_dir.parent.parent)  # where outputs/ is, as in a checkout
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(run_dir.parent / "hf-cache"))
    export_run(run_dir, run_dir / "export" / fmt, format=fmt)
    exec(compile(readme_snippet(name), f"README.md:{name}", "exec"), {})
    printed = capsys.readouterr().out
    assert "a boat sails into a storm" in printed and "fox" in printed
    assert io.StringIO(printed).readline().strip()


def test_the_gallery_shows_the_directors_warnings_beside_the_status(run_dir):
    from direct2v.publish.gallery import write_review

    plan_file = run_dir / manifest_rows(run_dir)["boat"].plan_path
    plan = json.loads(plan_file.read_text())
    plan_file.write_text(json.dumps({**plan, "warnings": ["static_video: frames 1-3 say the same"]}))
    page = write_review(run_dir).read_text()
    boat = page[page.index('id="video-boat"'):page.index("</section>", page.index('id="video-boat"'))]
    assert 'class="reason warnings">director: static_video: frames 1-3 say the same</div>' in boat
    fox = page[page.index('id="video-fox"'):]
    assert "director:" not in fox[:fox.index("</section>")]  # a clean plan shows none


def test_the_gallery_shows_the_samples_of_a_prompt_side_by_side(run_dir):
    from direct2v.publish.gallery import write_index

    ok = [row for row in read_rows(run_dir) if row.status == "ok"]
    samples = [row.model_copy(update={"prompt_id": f"idea-s{k}", "sample": k, "sample_of": "idea"})
               for k, row in enumerate(ok)]
    page = write_index(run_dir, [samples[1], ok[0], samples[0]]).read_text()
    assert page.count('class="samples"') == 1  # the prompt of one video is an entry of its own
    group = page[page.index('<section class="samples" id="samples-idea">'):]
    assert group.startswith('<section class="samples" id="samples-idea"><h2>idea: 2 samples</h2><div class="sample-row">')
    assert group.index('id="video-idea-s0"') < group.index('id="video-idea-s1"')  # by sample number
    assert f'id="video-{ok[0].prompt_id}"' not in group[:group.index("</div></section>")]
