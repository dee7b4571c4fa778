"""The LLM frame-level director: prompt records -> validated frame plans, through vLLM.

Run it as its own process, before any renderer work (vLLM and a CUDA context forked from a
diffusers process do not mix; the flows call it through the CLI):

    python -m direct2v plan prompts_in/examples.txt --out outputs/my-run

All prompts of a batch go to the engine in ONE ``LLM.chat`` call; the answers are constrained
to a JSON schema AND validated with pydantic rules afterwards (constraints can be silently
ignored when misconfigured). A prompt whose answer stays invalid after the repair turns is a
``PlanFailure`` with its reason; it never reaches the renderer. What is asked and how an answer is
judged (templates, schemas, rules) are pure functions in ``instructions``; each template's way of
asking is a strategy (``v1``, ``v2``); the engine is ``engine``, the plan cache ``cache``. This
module ties them together: settings, cache lookups, and the plans.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from direct2v.core.config import DirectorSettings
from direct2v.director.cache import PlanCache, model_fingerprint
from direct2v.director.engine import (
    ENGINE_KEYS,
    check_model_dir,
    configure_vllm_environment,
    engine_dtype,
    generate,
    start_engine,
    stop_engine,
)
from direct2v.director.instructions import (
    TEMPLATE_FRAME_CHARS,
    TEMPLATE_PRESENCE_PENALTY,
    TEMPLATE_REPAIR_TEMPERATURE,
    frame_chars_limit,
    templates_digest,
)
from direct2v.director.plan import FramePlan, PlanFailure, TokenBudget
from direct2v.director.prompts import PromptRecord
from direct2v.director.report import DirectorReport
from direct2v.director.shapes import ShapeWorldStrategy, StorylineStrategy
from direct2v.director.strategy import Conversation, Draw, Strategy
from direct2v.director.v1 import WholeListStrategy
from direct2v.director.v2 import PerFrameStrategy

#: What ``Director._sample_plan`` adds to a sample's ``director_sampling``.
SAMPLE_KEYS = ("sample", "sample_of", "sample_temperature", "sample_top_p", "sample_seed", "redraws", "repeats")

#: ``director.template_version`` -> how that template asks
STRATEGIES: dict[str, type[Strategy]] = {"v1": WholeListStrategy, "v2": PerFrameStrategy, "shapes": ShapeWorldStrategy,
                                         "storyline": StorylineStrategy}


def unmarked(plan: FramePlan) -> FramePlan:
    """``plan`` without the sample marks of ``Director._sample_plan``."""
    if not any(key in plan.director_sampling for key in SAMPLE_KEYS):
        return plan
    sampling = {key: value for key, value in plan.director_sampling.items() if key not in SAMPLE_KEYS}
    return plan.model_copy(update={"director_sampling": sampling})


class Director:
    """A loaded vLLM engine that turns batches of prompt records into frame plans.

    Two templates (``director.template_version``), both the paper's instruction at heart:

    * **v1** (``v1.WholeListStrategy``): the paper's one request per prompt for the whole list of
      F descriptions, and its "divide each frame into two" turn for an FPS doubling;
    * **v2** (``v2.PerFrameStrategy``, default): one request per *frame*, each after a worked
      example's frame as a prior turn; an FPS doubling keeps the previous frames and asks for each
      frame halfway between two of them. Measured in benchmarks/plan_quality.py.

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
        configure_vllm_environment(settings, state_dir)  # before vLLM is imported (start_engine)
        self.budget = budget
        self.model_name = Path(settings.model_dir).name
        self.cache = (PlanCache(state_dir / "plan-cache", model_fingerprint(settings.model_dir))
                      if settings.cache else None)
        self._use(settings)
        self.llm = start_engine(settings, self.dtype)

    def reconfigure(self, settings: DirectorSettings) -> None:
        """New template, sampling and policy settings on the loaded engine, with a fresh report (the
        plan-quality benchmark compares variants without loading the model again)."""
        changed = [key for key in ENGINE_KEYS if getattr(settings, key) != getattr(self.settings, key)]
        if changed:
            raise ValueError(f"these director settings need a new engine: {', '.join(changed)}")
        if settings.cache and self.cache is None:
            raise ValueError("director.cache can only be turned on with a new Director (it needs the state directory)")
        if not settings.cache:
            self.cache = None
        self._use(settings)

    def _use(self, settings: DirectorSettings) -> None:
        """Take ``settings`` (and a fresh report); what follows from them is worked out once here."""
        import torch  # late: importing this module loads no framework

        self.settings = settings
        self.report = DirectorReport()
        self.dtype = engine_dtype(settings, on_cpu=not torch.cuda.is_available())
        wanted = settings.frame_chars or TEMPLATE_FRAME_CHARS[settings.template_version]
        self.frame_chars = frame_chars_limit(self.budget, wanted)  # tokenizes the reference texts: once
        self.strategy = STRATEGIES[settings.template_version](settings, self.budget, self.frame_chars, self.report,
                                                              self._ask)

    @property
    def template(self) -> str:
        return self.settings.template_version

    @property
    def presence_penalty(self) -> float:
        penalty = self.settings.presence_penalty
        return TEMPLATE_PRESENCE_PENALTY[self.template] if penalty is None else penalty

    @property
    def repair_temperature(self) -> float:
        temperature = self.settings.repair_temperature
        if temperature is None:
            temperature = TEMPLATE_REPAIR_TEMPERATURE[self.template]
        return self.settings.temperature if temperature is None else temperature

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
        stop_engine(self.llm)

    def __enter__(self) -> "Director":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _ask(self, chats: list[list[dict]], schemas: list[dict], max_tokens: list[int], repair: bool,
             candidates: int = 1, attempt: int = 1, draws: Sequence[Draw | None] | None = None,
             ) -> list[list[tuple[str, str]]]:
        """The strategy's way to the engine (``strategy.Ask``), with this Director's sampling.
        ``self.llm`` is read on every call: the tests put a scripted engine there."""
        temperature = self.repair_temperature if repair else self.settings.temperature
        return generate(self.llm, chats, schemas, max_tokens, settings=self.settings, temperature=temperature,
                        presence_penalty=self.presence_penalty, report=self.report, candidates=candidates,
                        attempt=attempt, draws=draws)

    def plan(
        self, records: Sequence[PromptRecord], frames: int, fps: int, seed: int, fps_doublings: int = 0
    ) -> list[FramePlan | PlanFailure]:
        """Plan every record (record values override the defaults), in input order.

        Round k+1 (an FPS doubling) of every prompt still valid after round k goes out in one call.
        The samples of a prompt (``prompts.sample_records``) go out in the same calls; a sample
        whose frames repeat an earlier sample's is drawn again (``_redraw_repeated_samples``).
        """
        results, planned = {}, []  # planned: (conversation, its cache key)
        requested = {}
        for record in records:
            requested[record.id] = (record.frames or frames, record.fps or fps,
                                    record.seed if record.seed is not None else seed)
            key = self._cache_key(record, *requested[record.id], fps_doublings)
            cached = self.cache.get(key, record) if self.cache else None
            if cached is not None:
                results[record.id] = cached
                continue
            planned.append((self._start(record, requested[record.id]), key))
        self.report.prompts += len(records)
        self.report.cached += len(records) - len(planned)
        self.strategy.run([conversation for conversation, _ in planned], fps_doublings)
        results.update({conversation.record.id: self._result(conversation) for conversation, _ in planned})
        redraws = self._redraw_repeated_samples(records, results, {c.record.id for c, _ in planned}, requested,
                                                fps_doublings)
        self._mark_samples(records, results, redraws)
        for conversation, key in planned:
            result = results[conversation.record.id]
            if isinstance(result, FramePlan):
                self.report.accepted_final += 1
                self.report.valid_final += not result.warnings
                if self.cache:  # as the request's answer, whichever sample of which prompt asked it
                    self.cache.put(key, unmarked(result))
            else:
                self.report.failed += 1
        return [results[record.id] for record in records]

    def _start(self, record: PromptRecord, requested: tuple[int, int, int], redraw: int = 0) -> Conversation:
        conversation = self.strategy.start(record, *requested)
        conversation.draw = self._draw(record, requested[2], redraw)
        return conversation

    def _draw(self, record: PromptRecord, seed: int, redraw: int) -> Draw | None:
        """How sample k >= 1 of a prompt is sampled (sample 0, and a prompt of one video: the
        director's usual answer): its seed from the director's seed, the sample's render seed (its
        own for every sample, ``prompts.sample_seed``) and the redraw."""
        if record.sample == 0:
            return None
        s = self.settings
        digest = hashlib.sha256(f"{s.seed}:{seed}:{redraw}".encode()).digest()
        return Draw(s.sample_temperature, s.sample_top_p, int.from_bytes(digest[:4], "big") & 0x7FFFFFFF, redraw)

    def _redraw_repeated_samples(self, records: Sequence[PromptRecord], results: dict, fresh: set[str],
                                 requested: dict, fps_doublings: int) -> dict[str, int]:
        """A sample (k >= 1, planned now) whose frames are an earlier sample's of the same prompt is
        drawn again with the next seed, all such samples in one batch, up to
        ``director.sample_redraws`` times; a redraw that fails keeps the plan it would replace.
        Returns sample id -> the redraw whose plan was kept."""
        redraws: dict[str, int] = {}
        for redraw in range(1, self.settings.sample_redraws + 1):
            repeated = [record for record, _ in self._repeated_samples(records, results) if record.id in fresh]
            if not repeated:
                break
            conversations = [self._start(record, requested[record.id], redraw) for record in repeated]
            self.strategy.run(conversations, fps_doublings)
            self.report.redraws += len(conversations)
            for conversation in conversations:
                again = self._result(conversation)
                if isinstance(again, FramePlan):
                    results[conversation.record.id] = again
                    redraws[conversation.record.id] = redraw
        return redraws

    def _mark_samples(self, records: Sequence[PromptRecord], results: dict, redraws: dict[str, int]) -> None:
        """Each plan says whether, and how, it is one of several samples of a prompt (``_sample_plan``;
        a plan from the cache may carry another request's marks), and which still repeats an earlier one."""
        for record in records:
            result = results[record.id]
            if isinstance(result, FramePlan):
                results[record.id] = (unmarked(result) if record.sample_of is None else
                                      self._sample_plan(result, record, redraws.get(record.id, 0)))
        for record, earlier in self._repeated_samples(records, results):
            self.report.repeated_samples += 1
            plan = results[record.id]
            results[record.id] = plan.model_copy(update={"director_sampling": {**plan.director_sampling,
                                                                               "repeats": earlier}})

    @staticmethod
    def _repeated_samples(records: Sequence[PromptRecord], results: dict) -> list[tuple[PromptRecord, str]]:
        """(sample, the id of an earlier sample of its prompt with the same frames), in input order."""
        seen: dict[tuple[str, tuple[str, ...]], str] = {}
        repeated = []
        for record in sorted((r for r in records if r.sample_of is not None), key=lambda r: (r.sample_of, r.sample)):
            result = results[record.id]
            if not isinstance(result, FramePlan):
                continue
            earlier = seen.setdefault((record.sample_of, tuple(result.frames)), record.id)
            if earlier != record.id:
                repeated.append((record, earlier))
        return repeated

    def _sample_plan(self, plan: FramePlan, record: PromptRecord, redraws: int) -> FramePlan:
        """The plan of one of several samples of a prompt, saying so in ``director_sampling``:
        which sample of which prompt, and for k >= 1 how it was drawn."""
        sampling = dict(unmarked(plan).director_sampling)
        sampling.update(sample=record.sample, sample_of=record.sample_of)
        draw = self._draw(record, plan.seed, redraws)
        if draw is not None:
            sampling.update(sample_temperature=draw.temperature, sample_top_p=draw.top_p, sample_seed=draw.seed,
                            redraws=redraws)
        return plan.model_copy(update={"director_sampling": sampling})

    def _cache_key(self, record: PromptRecord, frames: int, fps: int, seed: int, fps_doublings: int) -> dict:
        """Everything that decides the answer to a request (frames and fps as requested, before
        any doubling). A sample k >= 1 adds how it is drawn (sample 0's key is the prompt's own)."""
        s = self.settings
        key = {
            "prompt": record.prompt,
            "frames": frames,
            "fps": fps,
            "seed": seed,
            "fps_doublings": fps_doublings,
            "camera": s.camera,
            "sampling": self.sampling(),
            "templates": templates_digest(),  # the text asked with, not only the template's name
            "quality_policy": s.quality_policy,
            "token_limit": self.budget.limit if self.budget else None,
        }
        if record.sample:
            key["sample"] = {"sample": record.sample, "temperature": s.sample_temperature, "top_p": s.sample_top_p,
                             "redraws": s.sample_redraws}
        return key

    def _result(self, conversation: Conversation) -> FramePlan | PlanFailure:
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
