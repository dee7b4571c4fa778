"""Director throughput: vLLM batched (our director) vs sequential transformers ``generate``.

Both use the same local model, the same paper instruction and greedy decoding; vLLM also
constrains the answer to the JSON schema and repairs invalid answers, transformers does neither
(so its count of valid answers is a baseline, not a like-for-like quality number).

    python benchmarks/director.py                       # 64 prompts, the bundled SmolLM2
    python benchmarks/director.py --prompts 16 --model-dir /models/my-llm

Prints both wall times (engine/model load excluded, shown separately) and their ratio.
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


def run_vllm(model_dir: Path, prompts: list[str], frames: int, fps: int) -> dict:
    from direct2v.config import DirectorSettings
    from direct2v.director import Director
    from direct2v.plan import FramePlan
    from direct2v.prompts import PromptRecord

    records = [PromptRecord(id=f"b{i:04d}", prompt=p) for i, p in enumerate(prompts)]
    started = time.perf_counter()
    with Director(DirectorSettings(model_dir=model_dir, cache=False), state_dir=Path(".state")) as director:
        loaded = time.perf_counter()
        results = director.plan(records, frames=frames, fps=fps, seed=0)
        done = time.perf_counter()
        report = director.report.as_dict()
    return {
        "load_s": loaded - started,
        "plan_s": done - loaded,
        "valid": sum(isinstance(r, FramePlan) for r in results),
        "report": report,
    }


def run_transformers(model_dir: Path, prompts: list[str], frames: int, fps: int, max_new_tokens: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from direct2v.director import instruction_text
    from direct2v.plan import parse_frames

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=torch.bfloat16).eval()
    loaded = time.perf_counter()
    valid = 0
    for prompt in prompts:
        messages = [{"role": "user", "content": instruction_text(prompt, frames, fps)}]
        inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        valid += parse_frames(answer, frames)[0] is not None
    return {"load_s": loaded - started, "plan_s": time.perf_counter() - loaded, "valid": valid}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--fps", type=int, default=2)
    parser.add_argument("--model-dir", type=Path, default=Path(".state/models/smollm2-135m-instruct"))
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    from direct2v.director import SCHEMA_FRAME_CHARS

    prompts = benchmark_prompts(args.prompts)
    max_new_tokens = args.frames * (SCHEMA_FRAME_CHARS // 3 + 8) + 32  # the director's own cap
    vllm = run_vllm(args.model_dir, prompts, args.frames, args.fps)  # engine shut down before the baseline
    print(f"vLLM: load {vllm['load_s']:.1f} s, plan {vllm['plan_s']:.1f} s, valid {vllm['valid']}", flush=True)
    baseline = run_transformers(args.model_dir, prompts, args.frames, args.fps, max_new_tokens)

    n = len(prompts)
    print(f"\n{n} prompts x {args.frames} frames, model {args.model_dir.name}")
    print(f"{'':34s} {'load s':>8s} {'plan s':>8s} {'s/prompt':>9s} {'valid':>7s}")
    print(f"{'vLLM, one batched call (+repair)':34s} {vllm['load_s']:8.1f} {vllm['plan_s']:8.1f} "
          f"{vllm['plan_s'] / n:9.2f} {vllm['valid']:4d}/{n}")
    print(f"{'transformers generate, sequential':34s} {baseline['load_s']:8.1f} {baseline['plan_s']:8.1f} "
          f"{baseline['plan_s'] / n:9.2f} {baseline['valid']:4d}/{n}")
    ratio = baseline["plan_s"] / vllm["plan_s"]
    print(f"speed-up (sequential / batched, planning time): {ratio:.1f}x")
    rates = vllm["report"]
    print(f"vLLM valid-plan rate: first try {rates['valid_rate_first_try']:.0%}, after repair {rates['valid_rate_final']:.0%}; "
          f"rules broken on the first try: {rates['rule_rates_first_try']}")
    if args.json:
        args.json.write_text(json.dumps({"vllm": vllm, "transformers": baseline, "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
