"""Plan quality of the director, per template and sampling variant, side by side, in one run.

Every variant plans the same prompt set (``benchmarks/data/plan_prompts.jsonl``: everyday
prompts, each with the words that name its subject) on ONE loaded engine, as a run would (the
quality policy's repair turns included), and every final plan is measured with
``direct2v.director.quality`` (a failed prompt counts as an invalid plan):

    valid      parses, exactly F non-empty descriptions (after the repair turns)
    distinct   distinct frames / F                 adj=     neighbouring frames identical
    restate    plans with a frame restating the prompt     loop    plans with a phrase loop
    topic      frames naming the subject               all-topic  plans with every frame on it
    progress   neighbouring pairs similar but not identical    words  words per frame
    trunc      answers cut off at their token cap (finish_reason "length") / all answers
    clean      valid, all frames distinct, none restating, no loop, every frame on topic
    warned     plans accepted with quality warnings (what a run reports apart from clean ones)
    seconds    the variant's engine time (repairs included), and its ratio to the first variant

    python benchmarks/plan_quality.py                         # every variant, the bundled SmolLM2
    python benchmarks/plan_quality.py --variants v1 v2        # a subset
    python benchmarks/plan_quality.py --model-dir /models/Qwen2.5-7B-Instruct --json out.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HERE = Path(__file__).parent
PROMPTS = HERE / "data" / "plan_prompts.jsonl"

# name -> director settings over the defaults; the first one is the baseline of the ratios
VARIANTS = {
    "v1": {"template_version": "v1"},
    "v1+presence1.0": {"template_version": "v1", "presence_penalty": 1.0},
    "v2-first-answers": {"template_version": "v2", "max_attempts": 1},
    "v2-no-penalty": {"template_version": "v2", "presence_penalty": 0.0},
    "v2": {"template_version": "v2"},
    "v2-200-chars": {"template_version": "v2", "frame_chars": 200},
    "v2-repair-t0.7": {"template_version": "v2", "repair_temperature": 0.7},
}


def read_prompt_set(path: Path) -> list[dict]:
    """The JSONL prompt set; ValueError naming the file and line for anything else."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ValueError(f"{path}: cannot read the prompt set ({error.strerror})") from None
    items = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            valid = isinstance(item["prompt"], str) and all(isinstance(word, str) for word in item["subject"])
        except (ValueError, KeyError, TypeError):
            valid = False
        if not valid:
            raise ValueError(f'{path}:{number}: expected {{"prompt": "...", "subject": ["word", ...]}}')
        items.append(item)
    return items


def run_variant(director, base_settings, overrides: dict, prompt_set: list[dict], frames: int, fps: int) -> dict:
    from direct2v.director.plan import FramePlan
    from direct2v.director.prompts import PromptRecord
    from direct2v.director.quality import measure_plan, summarise_plans

    director.reconfigure(base_settings.model_copy(update=overrides))
    records = [PromptRecord(id=f"q{i:03d}", prompt=item["prompt"]) for i, item in enumerate(prompt_set)]
    started = time.perf_counter()
    results = director.plan(records, frames=frames, fps=fps, seed=0)
    wall = time.perf_counter() - started
    report = director.report.as_dict()
    qualities = [
        measure_plan(result.frames if isinstance(result, FramePlan) else None, item["prompt"], frames,
                     subject=set(item["subject"]))
        for item, result in zip(prompt_set, results, strict=True)
    ]
    summary = summarise_plans(qualities)
    summary.update(
        truncated=report["truncated"] / max(report["answers"], 1),
        warned=report["accepted_with_warnings"] / len(records),
        failed=report["failed"] / len(records),
        seconds=sum(call["seconds"] for call in report["engine_calls"]),
        wall_s=wall,
        engine_calls=len(report["engine_calls"]),
    )
    samples = [{"prompt": item["prompt"], "frames": getattr(result, "frames", None),
                "warnings": getattr(result, "warnings", None), "reason": getattr(result, "reason", None),
                "quality": quality.as_dict()}
               for item, result, quality in zip(prompt_set, results, qualities)]
    return {"summary": summary, "plans": samples, "report": report}


COLUMNS = [("valid", "valid", "{:.0%}"), ("distinct", "distinct", "{:.0%}"), ("adj=", "adjacent_identical", "{:.0%}"),
           ("restate", "restating_plans", "{:.0%}"), ("loop", "looping_plans", "{:.0%}"),
           ("topic", "on_topic", "{:.0%}"), ("all-topic", "all_on_topic_plans", "{:.0%}"),
           ("progress", "progression", "{:.0%}"), ("words", "words_per_frame", "{:.1f}"),
           ("trunc", "truncated", "{:.0%}"), ("warned", "warned", "{:.0%}"), ("clean", "clean", "{:.0%}"),
           ("seconds", "seconds", "{:.1f}")]


def table(rows: dict[str, dict]) -> str:
    names = list(rows)
    baseline = rows[names[0]]["seconds"]
    width = max(len(name) for name in names) + 2
    lines = [f"{'variant':{width}s}" + "".join(f"{title:>10s}" for title, _, _ in COLUMNS) + f"{'x time':>9s}"]
    for name, summary in rows.items():
        cells = "".join(f"{form.format(summary[key]):>10s}" for _, key, form in COLUMNS)
        lines.append(f"{name:{width}s}{cells}{summary['seconds'] / max(baseline, 1e-9):8.2f}x")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--prompts", type=Path, default=PROMPTS, help="JSONL: prompt, subject (list of words)")
    parser.add_argument("--limit", type=int, help="only the first N prompts")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--fps", type=int, default=2)
    parser.add_argument("--model-dir", type=Path, default=Path(".state/models/smollm2-135m-instruct"))
    parser.add_argument("--render-model-dir", type=Path, default=Path(".state/models/tiny-sd"),
                        help="SD directory whose CLIP tokenizer limits descriptions, as in a run ('' for none)")
    parser.add_argument("--json", type=Path, help="also write every plan and its measures here")
    args = parser.parse_args()

    from direct2v.core.config import DirectorSettings
    from direct2v.director.director import Director
    from direct2v.director.engine import check_director_inputs

    render_model_dir = args.render_model_dir if str(args.render_model_dir) not in ("", ".") else None
    try:
        prompt_set = read_prompt_set(args.prompts)[: args.limit]
        budget = check_director_inputs(args.model_dir, render_model_dir)
    except (FileNotFoundError, ValueError) as error:  # the default model directories: `direct2v models build`
        parser.error(str(error))
    base = DirectorSettings(model_dir=args.model_dir, cache=False)
    results = {}
    started = time.perf_counter()
    with Director(base, state_dir=Path(".state"), budget=budget) as director:
        load_s = time.perf_counter() - started
        for name in args.variants:
            results[name] = run_variant(director, base, VARIANTS[name], prompt_set, args.frames, args.fps)
            print(f"{name}: clean {results[name]['summary']['clean']:.0%} in {results[name]['summary']['seconds']:.1f} s",
                  flush=True)
    print(f"\n{len(prompt_set)} prompts x {args.frames} frames, model {args.model_dir.name} (loaded in {load_s:.1f} s), "
          f"greedy, quality_policy retry, max_attempts {base.max_attempts}; x time = engine seconds / "
          f"{args.variants[0]}'s")
    print(table({name: result["summary"] for name, result in results.items()}))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=list))


if __name__ == "__main__":
    main()
