"""Template v1, the paper's: one request per prompt for the whole list of F descriptions, a repair
turn after an answer that broke a rule, and the paper's "divide each frame into two" turn for an
FPS doubling, all in one conversation per prompt."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from direct2v.director.instructions import (
    doubling_text,
    frames_schema,
    instruction_text,
    judge_answer,
    max_answer_tokens,
    repair_text,
)
from direct2v.director.prompts import PromptRecord
from direct2v.director.strategy import Conversation, Strategy

log = logging.getLogger(__name__)


@dataclass
class ListConversation(Conversation):
    messages: list[dict] = field(default_factory=list)  # the one conversation of the whole list


class WholeListStrategy(Strategy):
    """v1: every turn asks for the whole list; a repair follows the answer it complains about."""

    def start(self, record: PromptRecord, frames: int, fps: int, seed: int) -> ListConversation:
        conversation = ListConversation(record=record, frames=frames, fps=fps, seed=seed)
        conversation.messages.append(
            {"role": "user", "content": instruction_text(record.prompt, frames, fps, self.settings.camera)}
        )
        return conversation

    def _double(self, conversation: ListConversation) -> None:
        super()._double(conversation)
        conversation.messages.append({"role": "user", "content": doubling_text(conversation.frames, conversation.fps)})

    def _schema(self, conversation: ListConversation) -> dict:
        """The structured-output schema of the answer: the paper's list of F strings."""
        return frames_schema(conversation.frames, self.frame_chars)

    def _max_tokens(self, conversation: ListConversation) -> int:
        return max_answer_tokens(conversation.frames, self.frame_chars)

    def _repair(self, problems: list[str], conversation: ListConversation) -> dict:
        """The turn that follows an answer breaking the rules ``problems`` name."""
        return {"role": "user", "content": repair_text(problems, conversation.frames)}

    def _judge(self, answer: str, conversation: ListConversation, finish_reason: str) -> tuple[list[str] | None, dict]:
        """The answer's frames and the rules it breaks (``instructions.judge_answer``)."""
        return judge_answer(answer, conversation.frames, conversation.record.prompt, self.budget, finish_reason)

    def _run_round(self, conversations: list[ListConversation], first_round: bool) -> None:
        """Ask every conversation's pending turn in one batched call, repairing invalid answers.

        Hard problems always get repair turns and fail the prompt when they persist; quality
        problems follow ``settings.quality_policy``. A repair that gets the same answer back ends
        that conversation's repairs: asking again would not change it.
        """
        pending = list(conversations)
        for attempt in range(1, self.settings.max_attempts + 1):
            if not pending:
                return
            answers = self.ask(
                [c.messages for c in pending], [self._schema(c) for c in pending],
                [self._max_tokens(c) for c in pending], repair=attempt > 1, draws=[c.draw for c in pending],
            )
            retry = []
            for conversation, [(answer, finish_reason)] in zip(pending, answers, strict=True):
                conversation.attempts += 1
                unchanged = attempt > 1 and answer == conversation.last_answer
                conversation.last_answer = answer
                conversation.messages.append({"role": "assistant", "content": answer})
                frames, broken = self._judge(answer, conversation, finish_reason)
                if first_round and attempt == 1:
                    self._count_first_try(conversation, broken)
                blocking = broken if self.settings.quality_policy != "warn" or "hard" in broken else {}
                self.report.unchanged_repairs += unchanged
                if blocking and not unchanged and attempt < self.settings.max_attempts:
                    conversation.messages.append(self._repair(list(blocking.values()), conversation))
                    retry.append(conversation)
                    continue
                self._settle(conversation, frames, broken)
            log.info("director attempt %d: %d/%d answers accepted", attempt, len(pending) - len(retry), len(pending))
            pending = retry
