"""What the two templates share: one conversation per prompt, a round per FPS doubling, and how a
round's last answer settles into frames (with their warnings) or problems.

Each template is a ``Strategy`` of its own (``v1.WholeListStrategy``, ``v2.PerFrameStrategy``):
what it asks, how it repairs, and how it asks for a doubling. ``Director`` picks one by
``director.template_version`` and lends it the engine (``Ask``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from direct2v.core.config import DirectorSettings
from direct2v.director.plan import PlanRound, TokenBudget, lineage
from direct2v.director.prompts import PromptRecord
from direct2v.director.report import DirectorReport


@dataclass(frozen=True)
class Draw:
    """How sample k >= 1 of a prompt is asked for (``samples``): every answer of its conversation,
    repairs too, sampled at this temperature and top-p from this seed."""

    temperature: float
    top_p: float
    seed: int
    redraw: int = 0  # drawn again for repeating an earlier sample: its first answer is not the prompt's first try


class Ask(Protocol):
    """The engine as a strategy sees it (``Director._ask``): one batched call, the repair turns at
    the repair temperature, a chat with a ``Draw`` at its own; per chat, ``candidates`` answers as
    (text, finish_reason)."""

    def __call__(self, chats: list[list[dict]], schemas: list[dict], max_tokens: list[int], repair: bool,
                 candidates: int = 1, attempt: int = 1,
                 draws: Sequence[Draw | None] | None = None) -> list[list[tuple[str, str]]]: ...


@dataclass
class Conversation:
    """One prompt's planning, round after round; a strategy adds what it asks with."""

    record: PromptRecord
    frames: int
    fps: int
    seed: int
    draw: Draw | None = None  # a sample >= 1 of its prompt: how its answers are sampled
    rounds: list[PlanRound] = field(default_factory=list)
    attempts: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    last_answer: str = ""


class Strategy(ABC):
    """How one template plans: ``start`` a conversation per prompt, then ``run`` the rounds."""

    def __init__(self, settings: DirectorSettings, budget: TokenBudget | None, frame_chars: int,
                 report: DirectorReport, ask: Ask):
        self.settings = settings
        self.budget = budget
        self.frame_chars = frame_chars
        self.report = report
        self.ask = ask

    @abstractmethod
    def start(self, record: PromptRecord, frames: int, fps: int, seed: int) -> Conversation:
        """A new conversation for ``record`` at the requested frames, fps and seed."""

    def run(self, conversations: Sequence[Conversation], fps_doublings: int) -> None:
        """The first round, then each FPS doubling, every conversation of a round in one batch; a
        conversation that failed a round is not asked the next."""
        active = list(conversations)
        for doubling in range(fps_doublings + 1):
            if not active:
                return
            if doubling:
                for conversation in active:
                    self._double(conversation)
            self._run_round(active, first_round=doubling == 0)
            active = [c for c in active if not c.problems]

    def _double(self, conversation: Conversation) -> None:
        conversation.frames *= 2
        conversation.fps *= 2

    @abstractmethod
    def _run_round(self, conversations: list[Conversation], first_round: bool) -> None:
        """Ask every conversation's round in one batched call, with repairs; ``_settle`` each."""

    def _count_first_try(self, conversation: Conversation, broken: dict[str, str]) -> None:
        if conversation.draw is not None and conversation.draw.redraw:
            return  # the prompt's first try was counted when it was first drawn
        self.report.first_try_rules.update(broken.keys())
        self.report.valid_first_try += not broken
        self.report.usable_first_try += "hard" not in broken

    def _settle(self, conversation: Conversation, frames: list[str] | None, broken: dict[str, str]) -> None:
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
