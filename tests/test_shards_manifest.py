"""Large prompt lists: sharding, bounded-memory streaming of 20,000 lines, manifest parts and their
compaction (last row per prompt id wins), reuse of finished videos by hash."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from direct2v.director.prompt_files import read_prompt_file
from direct2v.director.prompts import PromptRecord
from direct2v.job import manifest, shards, videos
from direct2v.job.manifest import SCHEMA, ManifestRow, append_rows, read_manifest, read_rows, rows_to_table

REPO = Path(__file__).resolve().parents[1]
LINES = 20_000


def write_prompt_list(path: Path, count: int, bad_every: int = 0) -> Path:
    """``count`` distinct prompts of realistic length; every ``bad_every``-th line is broken JSON."""
    with open(path, "w", encoding="utf-8") as stream:
        for i in range(count):
            if bad_every and i % bad_every == bad_every - 1:
                stream.write('{"prompt": \n')
            else:
                stream.write(json.dumps({"prompt": f"A red fox number {i} runs across a snowy field at dawn, "
                                                   f"then stops and looks up at a hawk circling overhead {i}"}) + "\n")
    return path


def split_prompt_file(path: Path) -> tuple[list, list]:
    """The whole file at once (what streaming avoids): (records, problems)."""
    items = list(read_prompt_file(path))
    return [i for i in items if isinstance(i, PromptRecord)], [i for i in items if not isinstance(i, PromptRecord)]


def row(prompt_id: str, status: str = "ok", run_id: str = "r", **extra) -> ManifestRow:
    return ManifestRow(run_id=run_id, prompt_id=prompt_id, status=status, **extra)


# --- sharding ------------------------------------------------------------------------------------


def test_shard_records_sizes():
    assert [len(s) for s in shards.shard_records(range(10), 4)] == [4, 4, 2]
    assert list(shards.shard_records([], 4)) == []
    assert list(shards.shard_records(iter(range(3)), 3)) == [[0, 1, 2]]
    with pytest.raises(ValueError):
        next(shards.shard_records(range(3), 0))


def test_stream_prompt_shards_keeps_order_and_problems(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('# comment\n{"prompt": "a"}\n\n{"prompt": ""}\n{"prompt": "b", "id": "b"}\n{"prompt": "c"}\n')
    found = list(shards.stream_prompt_shards(path, 2))
    assert [s.index for s in found] == [1, 2]
    assert [r.prompt for r in found[0].records] == ["a"] and len(found[0].problems) == 1
    assert found[0].problems[0].source.endswith(":4")
    assert [r.id for r in found[1].records][0] == "b" and [r.prompt for r in found[1].records] == ["b", "c"]
    assert shards.count_prompt_lines(path) == 4


def test_shard_file_round_trip(tmp_path):
    work = shards.ShardWork(7, [("a", "f:1"), ("b", "f:2")], [row("x", "failed", failed_stage="input", error="e")])
    path = shards.write_shard_file(tmp_path, work)
    assert path.name == "shard-00007.jsonl"
    back = shards.read_shard_file(path)
    assert (back.index, back.to_render, [r.prompt_id for r in back.rows]) == (7, work.to_render, ["x"])
    shards.clear_shard_files(tmp_path)
    assert shards.shard_files(tmp_path) == []


# --- bounded memory ------------------------------------------------------------------------------


def traced_peak(function) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_20000_line_prompt_file_streams_in_bounded_memory(tmp_path):
    """Streaming 20,000 lines in shards of 256 holds one shard: its peak Python memory is a small
    fraction of what reading the whole list at once needs (and does not grow with the list)."""
    path = write_prompt_list(tmp_path / "big.jsonl", LINES, bad_every=1000)
    seen = {"records": 0, "problems": 0, "shards": 0}

    def stream():
        for shard in shards.stream_prompt_shards(path, 256):
            seen["records"] += len(shard.records)
            seen["problems"] += len(shard.problems)
            seen["shards"] += 1

    holder = {}
    streamed = traced_peak(stream)
    loaded = traced_peak(lambda: holder.setdefault("all", split_prompt_file(path)))
    assert seen == {"records": LINES - LINES // 1000, "problems": LINES // 1000, "shards": -(-LINES // 256)}
    assert len(holder["all"][0]) == seen["records"]
    print(f"\n20,000 lines: streamed peak {streamed / 2**20:.1f} MiB, whole-file peak {loaded / 2**20:.1f} MiB")
    assert streamed < loaded / 4
    assert streamed < 8 * 2**20


def test_the_job_plan_stage_streams_a_20000_line_list_whichever_command_runs_it(tmp_path):
    """``run`` and ``dataset`` share the plan stage (``PlanStage``): a 20,000-line list goes through
    it one shard at a time (the director replaced by a stand-in that plans nothing), each shard
    becoming a shard file, in a small fraction of the memory that reading the list at once takes."""
    from collections import Counter

    from direct2v.core.config import Settings
    from direct2v.job.plan_stage import PlanStage
    from direct2v.job.request import Run
    from direct2v.job.rundir import Job

    path = write_prompt_list(tmp_path / "big.jsonl", LINES, bad_every=1000)
    run = Run(tmp_path / "run", Job(prompt_file=str(path), shard_size=256), Settings(), resumed=False)
    sizes = []

    class StandInDirector(PlanStage):
        def _plan_prompts(self, shard):
            sizes.append(len(shard.records) + len(shard.problems))
            return shards.ShardWork(shard.index, [(r.id, r.source) for r in shard.records]), Counter(prompts=sizes[-1])

    def plan_every_shard():
        stage = StandInDirector(run)
        for unit in stage.units():
            stage.plan(unit)
        counts.update(stage.close())

    counts = {}
    peak = traced_peak(plan_every_shard)
    whole = traced_peak(lambda: split_prompt_file(path))
    assert (counts["prompts"], counts["shards"], counts["to_render"]) == (LINES, -(-LINES // 256), LINES - LINES // 1000)
    assert max(sizes) == 256 and len(shards.shard_files(run.dir)) == counts["shards"]
    print(f"\n20,000 lines through the plan stage: peak {peak / 2**20:.1f} MiB, whole file {whole / 2**20:.1f} MiB")
    assert peak < whole / 4


RSS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import psutil
    import pyarrow as pa
    import pyarrow.parquet as pq
    from direct2v.job import manifest
    from direct2v.job import shards
    from direct2v.job.manifest import ManifestRow
    from direct2v.director.prompts import PromptRecord
    from direct2v.director.prompt_files import read_prompt_file

    mode, path, run_dir = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    process = psutil.Process()
    mib = lambda: process.memory_info().rss / 2**20

    def rows_of(records):
        return [ManifestRow(run_id="r", prompt_id=r.id, prompt=r.prompt, source=r.source, status="ok",
                            frame_prompts=[f"{r.prompt}, frame {i}" for i in range(8)],
                            video_path=f"videos/{r.id}.mp4") for r in records]

    start, after_shards = mib(), []
    if mode == "stream":  # the dataset flow's data path, without the models: shards -> parts -> manifest
        for shard in shards.stream_prompt_shards(path, 256):
            work = shards.ShardWork(shard.index, [(r.id, r.source) for r in shard.records])
            shards.write_shard_file(run_dir, work)
            manifest.write_part(run_dir, shard.index, rows_of(shard.records))
            after_shards.append(mib())
        result = manifest.compact(run_dir)
        report = {"rows": result.rows, "after_shards_mib": after_shards, "after_compaction_mib": mib(),
                  "arrow_peak_mib": pa.default_memory_pool().max_memory() / 2**20,
                  "table_mib": pq.read_table(result.path).nbytes / 2**20}
    else:  # the same rows, all at once
        records = [item for item in read_prompt_file(path) if isinstance(item, PromptRecord)]
        rows = rows_of(records)
        report = {"rows": len(rows), "after_shards_mib": [mib()]}
    report["start_mib"] = start
    print(json.dumps(report))
    """
)


def run_rss_script(mode: str, path: Path, run_dir: Path) -> dict:
    run_dir.mkdir()
    done = subprocess.run([sys.executable, "-c", RSS_SCRIPT, mode, str(path), str(run_dir)], capture_output=True,
                          text=True, timeout=300, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_20000_line_list_through_parts_and_compaction_in_bounded_rss(tmp_path):
    """RSS of a process streaming 20,000 prompts into manifest parts (one per 256 lines) is flat
    from the 3rd shard to the 79th; the compaction's Arrow memory stays below the manifest's size.
    (For contrast, the same rows held at once: printed.)"""
    path = write_prompt_list(tmp_path / "big.jsonl", LINES)
    stream = run_rss_script("stream", path, tmp_path / "stream")
    whole = run_rss_script("whole", path, tmp_path / "whole")
    shards = stream["after_shards_mib"]
    early, late = max(shards[2:12]), max(shards[-10:])
    print(f"\n20,000 lines, RSS over the imports: streaming {early - stream['start_mib']:.1f} MiB after shard 12, "
          f"{late - stream['start_mib']:.1f} MiB after shard {len(shards)}, "
          f"{stream['after_compaction_mib'] - stream['start_mib']:.1f} MiB after compaction "
          f"(Arrow peak {stream['arrow_peak_mib']:.1f} MiB for a {stream['table_mib']:.1f} MiB manifest); "
          f"whole list held at once {whole['after_shards_mib'][0] - whole['start_mib']:.1f} MiB")
    assert stream["rows"] == whole["rows"] == LINES and len(shards) == -(-LINES // 256)
    assert late - early < 4  # MiB: nothing accumulates per shard
    assert stream["arrow_peak_mib"] < stream["table_mib"] / 2
    table = read_manifest(tmp_path / "stream" / "manifest.parquet")
    assert table.num_rows == LINES and table.schema.equals(SCHEMA)
    assert pq.ParquetFile(tmp_path / "stream" / "manifest.parquet").metadata.num_row_groups > 1


# --- parts and compaction ------------------------------------------------------------------------


def test_compaction_last_row_per_prompt_wins_across_sources(tmp_path):
    # An earlier compaction, the run's own journal (direct2v eval), two parts and a shard cut short.
    base = rows_to_table([row("a", "failed", failed_stage="render", error="old"), row("b"), row("c")])
    pq.write_table(base, tmp_path / "manifest.parquet")
    append_rows(tmp_path, [row("c", "failed", failed_stage="render", error="journal")])
    manifest.write_part(tmp_path, 1, [row("a", video_hash="h-a"), row("d", "failed", failed_stage="input", error="x")])
    manifest.write_part(tmp_path, 2, [row("e"), row("g", "rejected", qc_reason="flicker")])
    manifest.append_shard_rows(tmp_path, 3, [row("b", "failed", failed_stage="encode", error="crash"), row("f")])
    before = {r.prompt_id: r.status for r in read_rows(tmp_path)}  # the same rule, read without compacting

    result = manifest.compact(tmp_path, batch_rows=2)
    table = read_manifest(result.path)
    assert table.schema.equals(SCHEMA)
    rows = {r["prompt_id"]: r for r in table.to_pylist()}
    assert sorted(rows) == ["a", "b", "c", "d", "e", "f", "g"]
    assert rows["a"]["status"] == "ok" and rows["a"]["video_hash"] == "h-a"
    assert rows["b"]["error"] == "crash" and rows["c"]["error"] == "journal"
    assert {k: v["status"] for k, v in rows.items()} == before
    assert (result.rows, result.statuses["ok"], result.statuses["rejected"]) == (7, 3, 1)
    assert dict(result.failed_stages) == {"encode": 1, "input": 1, "render": 1}
    assert {f["prompt_id"] for f in result.failures} == {"b", "c", "d"}
    # every journal and part was folded in and removed; compacting again changes nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.parquet"]
    again = manifest.compact(tmp_path)
    by_id = lambda t: sorted(t.to_pylist(), key=lambda r: r["prompt_id"])  # noqa: E731
    assert by_id(read_manifest(again.path)) == by_id(table)


def test_compaction_of_nothing_writes_an_empty_manifest(tmp_path):
    result = manifest.compact(tmp_path)
    assert result.rows == 0 and read_manifest(result.path).num_rows == 0


def test_lookup_rows_reads_only_the_asked_ids(tmp_path):
    manifest.write_part(tmp_path, 1, [row(f"p{i}", frame_prompts=["x", "y"]) for i in range(50)])
    path = manifest.compact(tmp_path).path
    found = manifest.lookup_rows(path, ["p3", "p49", "missing"])
    assert sorted(found) == ["p3", "p49"] and found["p3"].frame_prompts == ["x", "y"]
    assert manifest.lookup_rows(tmp_path / "none.parquet", ["p3"]) == {}


def test_reuse_index_finds_finished_videos_by_hash(tmp_path):
    for name, rows in {"run-1": [row("a", video_hash="h1", video_path="videos/a.mp4"),
                                 row("b", "failed", video_hash="h2", failed_stage="render")],
                       "run-2": [row("a2", video_hash="h1", video_path="videos/a2.mp4")]}.items():
        manifest.write_part(tmp_path / name, 1, rows)
        manifest.compact(tmp_path / name)
    index = videos.ReuseIndex([str(tmp_path / "run-*")], exclude=tmp_path / "run-2")
    assert len(index) == 1 and index.find(["h1", "h2"]) == {
        "h1": (tmp_path / "run-1", {**index.find(["h1"])["h1"][1], "video_path": "videos/a.mp4"})}
    both = videos.ReuseIndex([str(tmp_path / "run-*")])
    assert both.find(["h1"])["h1"][0] == tmp_path / "run-2"  # the later run wins
    assert both.find(["h2"]) == {}  # a failed video is never reused

    source = tmp_path / "src.mp4"
    source.write_bytes(b"video")
    target = videos.link_video(source, tmp_path / "out" / "videos" / "a.mp4")
    assert target.read_bytes() == b"video" and os.path.samefile(source, target)
