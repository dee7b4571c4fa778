"""Orchestration overhead: the same videos rendered by calling the stages directly, through the
Prefect flow (``flows/generate.py``, one thread), and through the flow on a Dask LocalCluster of 1 and 2 workers.

    python benchmarks/orchestration.py                          # 16 videos, tiny SD, 4 steps, CPU
    python benchmarks/orchestration.py --videos 32 --model-dir /models/sd15 --steps 20 --workers 1,2,4

Every configuration renders the same hand-written plans (no director: planning is the same in
all of them) with the same settings, into its own run directory. Printed per configuration:

* ``wall``: the whole call (for the flows: Prefect's temporary server, the flow and subflow
  runs, Dask cluster start, each worker importing torch and loading the pipeline once, compaction);
* ``render``: the render stage only (direct: the loop; flows: the render subflow);
* ``s/video``: render / videos;  ``steady s/video``: the time between the first and the last
  video finishing, / (videos - 1) -- throughput once every worker is warm;
* ``vs direct``: s/video and steady s/video as ratios to the direct loop's.

On CPU each renderer uses ``--threads`` torch threads (default 1; Dask workers always get one):
with 2 Dask workers on a 2-core machine that is 2 cores against 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_plans(directory: Path, count: int, frames: int) -> Path:
    from direct2v.director.plan import FramePlan, write_plan

    subjects = ["a paper boat", "a red fox", "a hot air balloon", "a cyclist"]
    for i in range(count):
        subject = subjects[i % len(subjects)]
        write_plan(FramePlan(prompt_id=f"b{i:04d}", prompt=f"{subject} {i}", fps=2, seed=i,
                             frames=[f"{subject} {i}, moment {j}" for j in range(frames)]), directory)
    return directory


def steady_s_per_video(manifest: Path) -> float:
    import pyarrow.parquet as pq

    times = sorted(t.timestamp() for t, s in zip(*pq.read_table(manifest, columns=["finished_at", "status"])
                                                 .to_pydict().values()) if s == "ok")
    return (times[-1] - times[0]) / max(len(times) - 1, 1)


def run_direct(plans_dir: Path, run_dir: Path, settings) -> dict:
    from direct2v.director.plan import read_plan
    from direct2v.job.manifest import append_rows, compact
    from direct2v.job.videos import render_plan
    from direct2v.render.renderer import Renderer

    started = time.perf_counter()
    renderer = Renderer(settings.render)
    loaded = time.perf_counter()
    run_dir.mkdir(parents=True)
    plans = [read_plan(path) for path in sorted(plans_dir.glob("*.json"))]
    for plan in plans:
        append_rows(run_dir, [render_plan(plan, run_dir, renderer)])
    rendered = time.perf_counter()
    manifest = compact(run_dir).path
    return {"wall": time.perf_counter() - started, "render": rendered - loaded, "load": loaded - started,
            "videos": len(plans), "steady": steady_s_per_video(manifest)}


def run_flow(plans_dir: Path, output_root: Path, settings, run_id: str, dask_workers: int | None) -> dict:
    from direct2v.job.request import JobRequest
    from flows.generate import generate

    started = time.perf_counter()
    summary = generate(JobRequest(plans_dir=str(plans_dir), run_id=run_id, dask_workers=dask_workers,
                                  settings={**settings.model_dump(mode="json"), "output_root": str(output_root)}))
    wall = time.perf_counter() - started
    assert summary["render_ok"] == summary["rendered"], summary
    return {"wall": wall, "render": summary["render_s"], "videos": summary["rendered"],
            "steady": steady_s_per_video(Path(summary["manifest"])), "workers_used": summary["workers_used"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="PNDM steps (t0 = steps/4, t1 = steps/2)")
    parser.add_argument("--model-dir", type=Path, default=None, help="diffusers SD dir (default: a tiny one)")
    parser.add_argument("--workers", default="1,2", help="Dask worker counts to compare")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the direct and thread-pool runs")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch is imported
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    sys.path.insert(0, str(REPO))
    from direct2v.core.config import Settings

    work = Path(tempfile.mkdtemp(prefix="direct2v-orchestration-"))
    model_dir = args.model_dir
    if model_dir is None:
        from direct2v.bundled.tiny_models import build_tiny_sd

        model_dir = build_tiny_sd(work / "tiny-sd", seed=0)
    steps = max(args.steps, 2)
    settings = Settings(render={"model_dir": model_dir, "num_inference_steps": steps,
                                "t0": steps // 4, "t1": max(steps // 2, 1)})
    plans_dir = make_plans(work / "plans", args.videos, args.frames)

    results = {"direct (render_plan loop)": run_direct(plans_dir, work / "direct", settings)}
    results["prefect flow, thread pool"] = run_flow(plans_dir, work / "flows", settings, "threads", None)
    for count in (int(n) for n in args.workers.split(",")):
        results[f"prefect flow, dask {count} worker{'s' * (count > 1)}"] = run_flow(
            plans_dir, work / "flows", settings, f"dask-{count}", count)

    direct = results["direct (render_plan loop)"]
    base, base_steady = direct["render"] / direct["videos"], direct["steady"]
    header = f"{'configuration':<32} {'wall s':>8} {'render s':>9} {'s/video':>8} {'steady':>8} {'vs direct':>17}"
    lines = [f"{args.videos} videos x {args.frames} frames, {args.steps} steps, model {Path(model_dir).name}, "
             f"torch threads {args.threads}, {os.cpu_count()} CPUs", header, "-" * len(header)]
    for name, r in results.items():
        per_video = r["render"] / r["videos"]
        r.update(s_per_video=per_video, ratio=per_video / base, steady_ratio=r["steady"] / base_steady)
        lines.append(f"{name:<32} {r['wall']:>8.1f} {r['render']:>9.1f} {per_video:>8.3f} {r['steady']:>8.3f} "
                     f"{r['ratio']:>7.2f}x /{r['steady_ratio']:>6.2f}x")
    thread = results["prefect flow, thread pool"]
    lines.append(f"Prefect overhead per video (thread pool render stage vs direct loop + load): "
                 f"{(thread['render'] - direct['render'] - direct['load']) / args.videos:.3f} s")
    dask = {k: v for k, v in results.items() if "dask" in k}
    if len(dask) >= 2:
        (one_name, one), *rest = dask.items()
        for name, other in rest:
            lines.append(f"{name} vs {one_name}: throughput x{one['steady'] / other['steady']:.2f} steady, "
                         f"x{one['render'] / other['render']:.2f} render stage incl. start-up")
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":  # Dask starts worker processes by spawning: keep this guard
    main()
