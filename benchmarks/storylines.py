"""Storylines, prompt to pixels: does a run tell the stories its prompts ask for (issue #40)?

The storylines of ``direct2v/shape_world/storylines.jsonl`` (8 kinds x 2 dev + 4 held-out stories: an
object crossing, rising or falling, moving diagonally, appearing, disappearing, one object still
and one moving, two moving, a background changing) are run by the real command line, and every
story is checked twice with ``direct2v/evaluation/storylines.py``:

* plan level: the plan's frame descriptions (``plans/<id>.json``) read as the renderer is asked;
* video level: the MP4 read back with the shape world's exact detectors.

One Markdown table per split (held_out, then dev), one row per kind: stories; how many tell their
story at plan level and at video level; "renderer fails" (the plan tells it, the video does not);
per check, plan/video pass counts over the stories it applies to; mean render seconds per video.
The director's seconds per prompt (engine seconds / prompts, from ``director_report.json``: the
prompts are planned in one batch, so there is no per-kind figure) head the report.

    python benchmarks/storylines.py                          # direct2v run with the run defaults
    python benchmarks/storylines.py --split held_out --kinds across,appears
    python benchmarks/storylines.py --ideal                  # the renderer alone, on the ideal plans
    python benchmarks/storylines.py --set render.num_inference_steps=20 --json results.json
    python benchmarks/storylines.py --reuse outputs/storylines/20260101-120000-abcdef   # score only
    python benchmarks/storylines.py --reuse outputs/<run of scripts/run-examples.sh> --split example

A run holds a story under its id or, as a user's run does, under any id with its prompt.

Run it with the environment of ``scripts/env.sh``; the runs go under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from direct2v.evaluation import storylines as sl
from direct2v.job import manifest
from direct2v.job.rundir import DIRECTOR_REPORT, PLANS_DIR, is_run_dir
from direct2v.render.encode import EncodeError, read_video
from direct2v.shape_world import stories as st

STORIES = st.KNOWN_STORIES
SPLITS = ("held_out", "dev", "example")
IDEAL_FPS, IDEAL_SEED = 2, 0  # the run defaults' fps and seed


def select(stories: Sequence[st.Story], split: str, kinds: Sequence[str]) -> list[st.Story]:
    return [s for s in stories if split in ("all", s.split) and s.kind in kinds]


def write_prompts(stories: Sequence[st.Story], path: Path) -> Path:
    """The stories as a prompt file ``direct2v run`` reads (JSONL records ``{"id", "prompt"}``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": s.id, "prompt": s.prompt}) + "\n" for s in stories), encoding="utf-8")
    return path


def write_ideal_plans(stories: Sequence[st.Story], frames: int, directory: Path) -> Path:
    """What a perfect director would write, as plan files ``direct2v render --plans`` reads."""
    directory.mkdir(parents=True, exist_ok=True)
    for story in stories:
        plan = {
            "prompt_id": story.id,
            "prompt": story.prompt,
            "fps": IDEAL_FPS,
            "seed": IDEAL_SEED,
            "frames": st.ideal_frames(story, frames),
        }
        (directory / f"{story.id}.json").write_text(json.dumps(plan, indent=2) + "\n", encoding="utf-8")
    return directory


def cli(*arguments: object) -> int:
    """``python -m direct2v ARGUMENTS`` from the repository root; its output goes to stderr, so that
    stdout holds only the tables. Returns the exit code (1: some videos failed, still scored)."""
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "direct2v", *map(str, arguments)]
    print("$", " ".join(command), file=sys.stderr, flush=True)
    return subprocess.run(command, cwd=ROOT, env=env, stdout=sys.stderr, check=False).returncode


def run_stories(stories: Sequence[st.Story], out: Path, frames: int, sets: Sequence[str], ideal: bool) -> Path:
    """Run the stories with the real command line; returns the run directory."""
    overrides = [item for key_value in sets for item in ("--set", key_value)]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if ideal:
        plans = write_ideal_plans(stories, frames, out / f"ideal-plans-{stamp}")
        run_dir = out / f"ideal-{stamp}"
        code = cli("render", "--plans", plans, "--out", run_dir, *overrides)
    else:
        prompts = write_prompts(stories, out / f"prompts-{stamp}.jsonl")
        before = {path for path in out.iterdir() if is_run_dir(path)}
        code = cli("run", prompts, "--frames", frames, "--set", f"output_root={out}", *overrides)
        made = sorted(path for path in out.iterdir() if is_run_dir(path) and path not in before)
        if not made:
            raise SystemExit(f"direct2v run exited with {code} and made no run under {out}")
        run_dir = made[-1]
    if code not in (0, 1) or not is_run_dir(run_dir):  # 1: some videos failed, which the tables count
        raise SystemExit(f"direct2v exited with {code}; see its output above")
    return run_dir


def score_run(
    run_dir: Path, stories: Sequence[st.Story], read: Callable[[Path], np.ndarray] = read_video
) -> list[dict]:
    """Each story of ``stories`` that the run holds, checked at plan and video level. A story
    without a plan fails every check at both levels; one without a video, every video check.

    A run holds a story under the story's id (this benchmark's runs) or under any id with the
    story's prompt, case and punctuation aside (a user's run, ``scripts/run-examples.sh``'s)."""
    rows = manifest.read_rows(run_dir)
    by_id = {row.prompt_id: row for row in rows}
    by_prompt = {st.normalised(row.prompt): row for row in rows if row.prompt}
    results = []
    for story in stories:
        row = by_id.get(story.id) or by_prompt.get(st.normalised(story.prompt))
        if row is None:
            continue
        failed = dict.fromkeys(sl.checks_for(story), False)
        plan_path = run_dir / PLANS_DIR / f"{row.prompt_id}.json"
        frames = json.loads(plan_path.read_text(encoding="utf-8"))["frames"] if plan_path.is_file() else None
        plan = sl.check_plan(story, frames) if frames else failed
        video_path = run_dir / row.video_path if row.status == "ok" and row.video_path else None
        try:
            video = sl.check_video(story, read(video_path)) if video_path else failed
        except EncodeError as error:  # listed as finished, but unreadable: the video fails
            video, row = failed, row.model_copy(update={"status": "failed", "error": str(error)})
        results.append(
            {
                "id": story.id,
                "kind": story.kind,
                "split": story.split,
                "prompt": story.prompt,
                "frames": frames,
                "status": row.status,
                "error": row.error,
                "render_s": row.render_s,
                "plan": plan,
                "video": video,
                "plan_tells": sl.tells_story(plan) and bool(frames),
                "video_tells": sl.tells_story(video) and row.status == "ok",
            }
        )
    return results


def director_seconds(run_dir: Path) -> float | None:
    """Engine seconds per planned prompt, from the run's director report (None: no director ran)."""
    path = run_dir / DIRECTOR_REPORT
    if not path.is_file():
        return None
    report = json.loads(path.read_text(encoding="utf-8"))
    return sum(call["seconds"] for call in report["engine_calls"]) / max(report["prompts"], 1)


def table(results: Sequence[dict], kinds: Sequence[str]) -> str:
    """One row per kind (and the total): counts of stories, per level and per check (plan/video)."""
    header = ["kind", "stories", "plan tells", "video tells", "renderer fails", *sl.CHECKS, "render s/video"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    groups = [(kind, [r for r in results if r["kind"] == kind]) for kind in kinds] + [("all", list(results))]
    for name, group in groups:
        if not group:
            continue
        cells = [
            name,
            str(len(group)),
            str(sum(r["plan_tells"] for r in group)),
            str(sum(r["video_tells"] for r in group)),
            str(sum(r["plan_tells"] and not r["video_tells"] for r in group)),
        ]
        for check in sl.CHECKS:
            having = [r for r in group if check in r["plan"]]
            plan, video = (sum(r[level][check] for r in having) for level in ("plan", "video"))
            cells.append(f"{plan}/{video} of {len(having)}" if having else "–")
        seconds = [r["render_s"] for r in group if r["render_s"] is not None]
        cells.append(f"{np.mean(seconds):.2f}" if seconds else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(results: Sequence[dict], kinds: Sequence[str], run_dir: Path) -> str:
    seconds = director_seconds(run_dir)
    director = f"director {seconds:.2f} s per prompt" if seconds is not None else "no director (plans given)"
    parts = [f"run {run_dir}; {director}; checks: plan/video passes of the stories a check applies to"]
    for split in SPLITS:
        chosen = [r for r in results if r["split"] == split]
        if chosen:
            parts.append(f"\n### {split} ({len(chosen)} stories)\n\n{table(chosen, kinds)}")
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stories", type=Path, default=STORIES, help="JSONL storylines")
    parser.add_argument("--split", choices=[*SPLITS, "all"], default="all")
    parser.add_argument("--kinds", default=",".join(st.KINDS), help="comma-separated, of: " + ", ".join(st.KINDS))
    parser.add_argument("--frames", type=int, default=8, help="frames per video (the run default: 8)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "storylines", help="where the runs go")
    parser.add_argument("--ideal", action="store_true", help="render the ideal plans (no director): the renderer alone")
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for the run, as direct2v's --set (repeatable)",
    )
    parser.add_argument("--reuse", type=Path, metavar="RUN_DIR", help="score this run instead of running")
    parser.add_argument("--json", type=Path, help="also write every story's checks here")
    args = parser.parse_args()
    kinds = [kind for kind in args.kinds.split(",") if kind]
    if unknown := sorted(set(kinds) - set(st.KINDS)):
        parser.error(f"unknown kinds {unknown}; choose from {', '.join(st.KINDS)}")
    try:
        stories = select(st.load_stories(args.stories), args.split, kinds)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    if args.reuse is not None:
        if not is_run_dir(args.reuse):
            parser.error(f"--reuse {args.reuse}: not a run directory (no settings.json)")
        run_dir = args.reuse
    else:
        run_dir = run_stories(stories, args.out.resolve(), args.frames, args.sets, args.ideal)
    results = score_run(run_dir, stories)
    if missing := len(stories) - len(results):
        print(f"{missing} of the {len(stories)} stories asked for are not in {run_dir}: left out", file=sys.stderr)
    print(report(results, kinds, run_dir))
    if args.json:
        args.json.write_text(json.dumps({"run_dir": str(run_dir), "stories": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
