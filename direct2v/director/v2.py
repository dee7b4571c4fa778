"""Template v2 (the default): one request per *frame* ("frame k of F, which shows the middle of the
video"), each after a worked example's frame k as a prior turn, so a small model writes one scene
at a time instead of one sentence F times. An FPS doubling keeps the previous frames and asks for
each frame halfway between two of them. Measured in benchmarks/plan_quality.py."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from direct2v.director.instructions import (
    COPIED_EXAMPLE,
    between_text,
    copies_example,
    example_frame,
    frame_instruction_text,
    frame_schema,
    frames_to_repair,
    parse_frame,
    worked_example,
)
from direct2v.director.plan import quality_problems, validate_frames
from direct2v.director.prompts import PromptRecord
from direct2v.director.strategy import Conversation, Strategy

log = logging.getLogger(__name__)


def _after_example(example_question: str, example_answer: str, question: str) -> list[dict]:
    """A chat asking ``question`` after the worked example's question and answer."""
    return [{"role": "user", "content": example_question},
            {"role": "assistant", "content": json.dumps(example_answer)},
            {"role": "user", "content": question}]


@dataclass
class FrameRequest:
    """One frame's own conversation with the engine."""

    index: int  # 0-based frame of the round
    messages: list[dict]
    answer: str | None = None  # the last one kept


@dataclass
class FrameConversation(Conversation):
    requests: list[FrameRequest] = field(default_factory=list)  # one per frame still asked this round
    current: list[str] = field(default_factory=list)  # the round's frames as they stand


class PerFrameStrategy(Strategy):
    """v2: a request per frame; only the frames that broke a rule are asked again."""

    def start(self, record: PromptRecord, frames: int, fps: int, seed: int) -> FrameConversation:
        return FrameConversation(record=record, frames=frames, fps=fps, seed=seed)

    def _frame_requests(self, conversation: FrameConversation, doubling: bool) -> list[FrameRequest]:
        """The round's per-frame requests (each after the worked example's matching turn); a
        doubled round keeps the previous frames as its frames 1, 3, 5, ... and asks only the ones
        between."""
        prompt, frames, fps, camera = conversation.record.prompt, conversation.frames, conversation.fps, self.settings.camera
        example = worked_example()["prompt"]
        if not doubling:
            conversation.current = [""] * frames
            return [
                FrameRequest(index, _after_example(frame_instruction_text(example, index + 1, frames, fps, camera),
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
            requests.append(FrameRequest(number - 1, _after_example(
                between_text(example, number, frames, fps, example_before, example_after),
                example_frame(parent + 1, len(previous), between=True),
                between_text(prompt, number, frames, fps, before, after),
            )))
        return requests

    def _check_frame(self, answer: str, finish_reason: str) -> tuple[str | None, str | None]:
        """One answer's hard rules: (description, None) or (None, the problem)."""
        text, problem = parse_frame(answer, finish_reason)
        if text is None:
            return None, problem
        if copies_example(text):
            return None, COPIED_EXAMPLE
        problems = validate_frames([text], 1, self.budget)  # "frame 1 has 90 text-encoder tokens, ..."
        return (None, problems[0].replace("frame 1 ", "it ", 1)) if problems else (text, None)

    def _pick_frame(self, conversation: FrameConversation, index: int, candidates: list[tuple[str, str]],
                    fixed: set[int]) -> tuple[str, str | None, str | None]:
        """Of one frame's sampled answers, the first that breaks no rule among the round's other
        frames, else the first usable one, else the first: (answer, description or None, hard
        problem or None)."""
        checked = [(answer, *self._check_frame(answer, finish_reason)) for answer, finish_reason in candidates]
        usable = [(answer, text) for answer, text, problem in checked if problem is None]
        for answer, text in usable:
            trial = list(conversation.current)
            trial[index] = text
            if index not in frames_to_repair(trial, conversation.record.prompt, fixed):
                return answer, text, None
        return (*usable[0], None) if usable else checked[0]

    def _run_round(self, conversations: list[FrameConversation], first_round: bool) -> None:
        """Every frame request of every conversation in one batched call; then only the frames
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
            answers = self.ask([r.messages for _, r in pending], [schema] * len(pending), [cap] * len(pending),
                               repair=repair, candidates=self.settings.repair_candidates if repair else 1,
                               attempt=attempt, draws=[c.draw for c, _ in pending])
            asked: dict[int, FrameConversation] = {}
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
                    self._count_first_try(conversation, broken)
                repairs -= unchanged.get(key, set())
                if repairs and attempt < self.settings.max_attempts:
                    retry += [(conversation, request) for request in conversation.requests if request.index in repairs]
                    continue
                self._settle(conversation, None if frame_hard else list(conversation.current), broken)
            log.info("director attempt %d: %d/%d frames asked again", attempt, len(retry), len(pending))
            pending = retry
