"""Director throughput: vLLM batched (our director) vs sequential transformers ``generate``.

Both use the same local model, the same paper instruction (template v1: one request per prompt;
``benchmarks/plan_quality.py`` compares the templates' plans), greedy decoding and the same cap on
answer tokens. vLLM also constrains answers to the JSON schema and sends repair turns for invalid
ones (up to ``--max-attempts`` calls); transformers does neither, so its valid count is a
baseline, not a like-for-like quality number. Three ratios are printed:

* planning time: the whole director (first call + repair turns) vs all sequential answers;
* first answers: vLLM's first batched call (one answer per prompt, the same work as the
  baseline) vs all sequential answers;
* generated tokens per second.

    python benchmarks/director.py                       # 64 prompts, the bundled SmolLM2
    python benchmarks/director.py --prompts 16 --model-dir /models/my-llm
    python benchmarks/director.py --skip-baseline       # only the director (tuning engine settings)

Engine/model load times are excluded from the ratios and shown separately.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

SUBJECTS = ["A corgi", "A red fox", "An old fisherman", "A paper boat", "A hot air balloon", "A robot", "Two kittens",
            "A cyclist"]
ACTIONS = ["runs across a park and another one joins later", "crosses a frozen lake at dawn",
           "climbs a hill while the weather turns stormy", "drifts down a river past a village",
           "rises above the clouds at sunset", "walks through a busy market", "plays with a ball of yarn",
           "races down a mountain road"]


def benchmark_prompts(count: int) -> list[str]:
    combos = itertools.cycle(itertools.product(SUBJECTS, ACTIONS))
    return [f"{subject} {action}" for subject, action in itertools.islice(combos, count)]


def run_vllm(model_dir: Path, prompts: list[str], frames: int, fps: int, budget, max_attempts: int) -> dict:
    from direct2v.core.config import DirectorSettings
    from direct2v.director.director import Director
    from direct2v.director.plan import PlanFailure
    from direct2v.director.prompts import PromptRecord

    records = [PromptRecord(id=f"b{i:04d}", prompt=p) for i, p in enumerate(prompts)]
    started = time.perf_counter()
    # template v1 on both sides: one request per prompt for the whole list, the same work as the baseline's
    settings = DirectorSettings(model_dir=model_dir, cache=False, max_attempts=max_attempts, template_version="v1")
    with Director(settings, state_dir=Path(".state"), budget=budget) as director:
        loaded = time.perf_counter()
        results = director.plan(records, frames=frames, fps=fps, seed=0)
        done = time.perf_counter()
        report = director.report.as_dict()
    first = report["engine_calls"][0]
    return {
        "load_s": loaded - started,
        "plan_s": done - loaded,
        "first_call_s": first["seconds"],
        "first_call_tokens": first["tokens"],
        "tokens": sum(call["tokens"] for call in report["engine_calls"]),
        "engine_s": sum(call["seconds"] for call in report["engine_calls"]),
        "report": report,
        "failures": [{"prompt": r.prompt, "reason": r.reason} for r in results if isinstance(r, PlanFailure)],
        "warnings": [r.warnings for r in results if not isinstance(r, PlanFailure)][:8],
    }


def run_transformers(model_dir: Path, prompts: list[str], frames: int, fps: int, max_new_tokens: int, budget) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from direct2v.director.instructions import instruction_text, judge_answer

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=torch.bfloat16).eval()
    loaded = time.perf_counter()
    usable = valid = tokens = 0
    samples = []
    for index, prompt in enumerate(prompts):
        messages = [{"role": "user", "content": instruction_text(prompt, frames, fps)}]
        inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new_tokens = output[0, inputs["input_ids"].shape[1]:]
        tokens += len(new_tokens)
        answer = tokenizer.decode(new_tokens, skip_special_tokens=True)
        parsed, broken = judge_answer(answer, frames, prompt, budget)
        usable += parsed is not None
        valid += not broken
        if index < 3:
            samples.append({"prompt": prompt, "answer": answer[:600], "broken": broken})
        print(f"  transformers {index + 1}/{len(prompts)}: {len(new_tokens)} tokens", flush=True)
    return {"load_s": loaded - started, "plan_s": time.perf_counter() - loaded, "tokens": tokens,
            "usable": usable, "valid": valid, "samples": samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--fps", type=int, default=2)
    parser.add_argument("--max-attempts", type=int, default=3, help="director.max_attempts (first try + repairs)")
    parser.add_argument("--model-dir", type=Path, default=Path(".state/models/smollm2-135m-instruct"))
    parser.add_argument("--render-model-dir", type=Path, default=Path(".state/models/tiny-sd"),
                        help="SD directory whose CLIP tokenizer limits descriptions, as in a run ('' for none)")
    parser.add_argument("--skip-baseline", action="store_true", help="time only the vLLM director")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    from direct2v.director.engine import check_director_inputs
    from direct2v.director.instructions import frame_chars_limit, max_answer_tokens

    prompts = benchmark_prompts(args.prompts)
    n = len(prompts)
    # as in a run: descriptions must fit the renderer's text encoder
    render_model_dir = args.render_model_dir if str(args.render_model_dir) not in ("", ".") else None
    try:
        budget = check_director_inputs(args.model_dir, render_model_dir)
    except FileNotFoundError as error:  # the default directories come from `direct2v models build`
        parser.error(str(error))
    max_new_tokens = max_answer_tokens(args.frames, frame_chars_limit(budget))  # the director's own cap
    vllm = run_vllm(args.model_dir, prompts, args.frames, args.fps, budget, args.max_attempts)
    rates = vllm["report"]
    print(f"vLLM: load {vllm['load_s']:.1f} s, plan {vllm['plan_s']:.1f} s, first call {vllm['first_call_s']:.1f} s, "
          f"{vllm['tokens'] / vllm['engine_s']:.0f} tokens/s", flush=True)
    baseline = None if args.skip_baseline else run_transformers(
        args.model_dir, prompts, args.frames, args.fps, max_new_tokens, budget
    )

    print(f"\n{n} prompts x {args.frames} frames, model {args.model_dir.name}, "
          f"token budget from {render_model_dir or 'none'}, answers capped at {max_new_tokens} tokens")
    print(f"{'':38s} {'load s':>7s} {'time s':>8s} {'s/prompt':>9s} {'tokens/s':>9s}")
    print(f"{'vLLM director (first call + repairs)':38s} {vllm['load_s']:7.1f} {vllm['plan_s']:8.1f} "
          f"{vllm['plan_s'] / n:9.2f} {vllm['tokens'] / vllm['engine_s']:9.0f}")
    print(f"{'vLLM first batched call only':38s} {'':7s} {vllm['first_call_s']:8.1f} "
          f"{vllm['first_call_s'] / n:9.2f} {vllm['first_call_tokens'] / vllm['first_call_s']:9.0f}")
    if baseline:
        print(f"{'transformers generate, sequential':38s} {baseline['load_s']:7.1f} {baseline['plan_s']:8.1f} "
              f"{baseline['plan_s'] / n:9.2f} {baseline['tokens'] / baseline['plan_s']:9.0f}")
        print(f"speed-up, planning time (sequential / director): {baseline['plan_s'] / vllm['plan_s']:.2f}x")
        print(f"speed-up, first answers (sequential / first call): {baseline['plan_s'] / vllm['first_call_s']:.2f}x")
        print(f"speed-up, tokens/s: {(vllm['tokens'] / vllm['engine_s']) / (baseline['tokens'] / baseline['plan_s']):.2f}x")
        print(f"transformers answers: {baseline['usable'] / n:.0%} pass the hard rules, {baseline['valid'] / n:.0%} break no rule")
    print(f"vLLM first try: {rates['usable_rate_first_try']:.0%} pass the hard rules, {rates['valid_rate_first_try']:.0%} "
          f"break no rule; after repair: {rates['accepted_rate_final']:.0%} accepted, {rates['valid_rate_final']:.0%} "
          f"break no rule")
    print(f"rules broken on the first try: {rates['rule_rates_first_try']}; in the end: {rates['rule_rates_final']}")
    if args.json:
        args.json.write_text(json.dumps({"vllm": vllm, "transformers": baseline}, indent=2))


if __name__ == "__main__":
    main()
