"""Several videos of one prompt (issue #36): how different are the samples, and do they still tell the story?

The storylines of ``direct2v/shape_world/storylines.jsonl`` (default: the 32 held-out ones) are
planned by the real command line with ``--samples N`` (default 4) on the run defaults, so with the
embedded default director (the shape-world profile). Per kind and in all:

* ``distinct``: distinct plans per prompt (mean; N when no two samples of a prompt share their frames);
* ``distance``: the mean pairwise frame-text distance between the samples of a prompt -- per pair of
  samples, the mean over frames of 1 - (word-set Jaccard similarity) of frame i and frame i; 0 for
  identical plans, 1 for plans without a word in common;
* ``sample 0 tells`` / ``samples 1+ tell``: the share of plans that tell their story (every plan-level
  check of ``direct2v/evaluation/storylines.py``), sample 0 (the director's greedy plan, what one
  video per prompt gives) against the sampled ones;
* ``redrawn`` / ``still repeating``: samples drawn again because they repeated an earlier sample
  (``director.sample_redraws``), and those that still did.

    python benchmarks/samples.py                           # held-out stories, 4 samples, plans only
    python benchmarks/samples.py --render                  # ... and render them: video-level shares too
    python benchmarks/samples.py --samples 3 --split all --set director.sample_temperature=1.0
    python benchmarks/samples.py --reuse outputs/samples/plans-20260101-120000   # score only

Run it with the environment of ``scripts/env.sh``; the runs go under ``--out``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import storylines as bench  # noqa: E402  (benchmarks/storylines.py: the same stories, command line and checks)

from direct2v.evaluation import storylines as sl  # noqa: E402
from direct2v.job import manifest  # noqa: E402
from direct2v.job.rundir import PLANS_DIR, is_run_dir  # noqa: E402
from direct2v.render.encode import read_video  # noqa: E402
from direct2v.shape_world import stories as st  # noqa: E402


def frame_distance(a: Sequence[str], b: Sequence[str]) -> float:
    """1 - the mean word-set Jaccard similarity of two plans' frames, frame by frame."""
    def words(text: str) -> set[str]:
        return set(re.findall(r"[a-z]+", text.lower()))

    similarities = []
    for first, second in zip(a, b, strict=True):
        union = words(first) | words(second)
        similarities.append(len(words(first) & words(second)) / len(union) if union else 1.0)
    return 1.0 - float(np.mean(similarities))


def run_samples(stories: Sequence[st.Story], out: Path, samples: int, frames: int, sets: Sequence[str],
                render: bool) -> Path:
    overrides = [item for key_value in sets for item in ("--set", key_value)]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    prompts = bench.write_prompts(stories, out / f"prompts-{stamp}.jsonl")
    if not render:
        run_dir = out / f"plans-{stamp}"
        code = bench.cli("plan", prompts, "--out", run_dir, "--samples", samples, "--frames", frames, *overrides)
        if code != 0:
            raise SystemExit(f"direct2v plan exited with {code}; see its output above")
        return run_dir
    before = {path for path in out.iterdir() if is_run_dir(path)}
    code = bench.cli("run", prompts, "--samples", samples, "--frames", frames, "--set", f"output_root={out}", *overrides)
    made = sorted(path for path in out.iterdir() if is_run_dir(path) and path not in before)
    if code not in (0, 1) or not made:
        raise SystemExit(f"direct2v run exited with {code}; see its output above")
    return made[-1]


def score(run_dir: Path, stories: Sequence[st.Story]) -> list[dict]:
    """Per story: its samples' plans (None where it failed), which tell the story (plan, video), and how drawn."""
    rows = {row.prompt_id: row for row in manifest.read_rows(run_dir)} if (run_dir / manifest.MANIFEST_NAME).is_file() else {}
    results = []
    for story in stories:
        plans = sorted(Path(run_dir, PLANS_DIR).glob(f"{story.id}-s*.json"), key=lambda p: int(p.stem.rsplit("-s", 1)[1]))
        if not plans:
            continue
        samples = []
        for path in plans:
            plan = json.loads(path.read_text(encoding="utf-8"))
            row = rows.get(plan["prompt_id"])
            video = None
            if row is not None and row.status == "ok" and row.video_path:
                video = sl.tells_story(sl.check_video(story, read_video(run_dir / row.video_path)))
            samples.append({"sample": plan["director_sampling"].get("sample", 0), "frames": plan["frames"],
                            "plan_tells": sl.tells_story(sl.check_plan(story, plan["frames"])), "video_tells": video,
                            "redraws": plan["director_sampling"].get("redraws", 0),
                            "repeats": plan["director_sampling"].get("repeats")})
        results.append({"id": story.id, "kind": story.kind, "prompt": story.prompt, "samples": samples})
    return results


def _share(values: list) -> str:
    known = [value for value in values if value is not None]
    return f"{sum(known)}/{len(known)}" if known else "–"


def table(results: Sequence[dict], kinds: Sequence[str]) -> str:
    header = ["kind", "prompts", "samples", "distinct", "distance", "sample 0 tells", "samples 1+ tell",
              "video: sample 0", "video: samples 1+", "redrawn", "still repeating"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    groups = [(kind, [r for r in results if r["kind"] == kind]) for kind in kinds] + [("all", list(results))]
    for name, group in groups:
        if not group:
            continue
        distinct = [len({tuple(s["frames"]) for s in r["samples"]}) for r in group]
        distances = [frame_distance(a["frames"], b["frames"]) for r in group
                     for a, b in itertools.combinations(r["samples"], 2) if len(a["frames"]) == len(b["frames"])]
        first = [s for r in group for s in r["samples"] if s["sample"] == 0]
        later = [s for r in group for s in r["samples"] if s["sample"] > 0]
        lines.append("| " + " | ".join([
            name, str(len(group)), str(sum(len(r["samples"]) for r in group)), f"{np.mean(distinct):.2f}",
            f"{np.mean(distances):.3f}" if distances else "–",
            _share([s["plan_tells"] for s in first]), _share([s["plan_tells"] for s in later]),
            _share([s["video_tells"] for s in first]), _share([s["video_tells"] for s in later]),
            str(sum(s["redraws"] > 0 for s in later)), str(sum(s["repeats"] is not None for s in later)),
        ]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stories", type=Path, default=bench.STORIES, help="JSONL storylines")
    parser.add_argument("--split", choices=[*bench.SPLITS, "all"], default="held_out")
    parser.add_argument("--samples", type=int, default=4, help="videos per prompt (at least 2)")
    parser.add_argument("--frames", type=int, default=8, help="frames per video (the run default: 8)")
    parser.add_argument("--render", action="store_true", help="direct2v run (plans and videos) instead of direct2v plan")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "samples", help="where the runs go")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for the run, as direct2v's --set (repeatable)")
    parser.add_argument("--reuse", type=Path, metavar="DIR", help="score this plan or run directory instead of running")
    parser.add_argument("--json", type=Path, help="also write every sample's plan and checks here")
    args = parser.parse_args()
    if args.samples < 2:
        parser.error("--samples: at least 2 (one video per prompt has nothing to compare)")
    stories = bench.select(st.load_stories(args.stories), args.split, st.KINDS)
    run_dir = args.reuse or run_samples(stories, args.out.resolve(), args.samples, args.frames, args.sets, args.render)
    results = score(run_dir, stories)
    seconds = bench.director_seconds(run_dir)
    print(f"{run_dir}; {len(results)} prompts" + (f"; director {seconds:.2f} s per planned sample" if seconds else ""))
    print(table(results, st.KINDS))
    if args.json:
        args.json.write_text(json.dumps({"run_dir": str(run_dir), "stories": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
