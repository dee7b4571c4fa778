"""The shape world's templates.

Template ``shapes``, the shape-world profile: one request per prompt for the whole list, in the
shape world's own words (``instructions.shape_instruction_text``), answered by a SmolLM2 fine-tuned
on storylines drawn from the world (``director.shape_training``).

It differs from v1 where the world does: an object that holds its cell for a few frames gives
identical neighbouring frames, and a background that is all that changes gives frames that differ
in one word, so the free-text rules that flag those (``adjacent_identical``, ``repeated_frame``,
``static_video``, ``repeats_prompt``, ``off_topic``: the prompt's "ball" is the world's "circle")
do not apply; an answer must still parse, fit the budget, and not loop. An FPS doubling asks for
the whole list again at twice the frames and rate (the model was trained on whole lists, not on
v1's "divide each frame into two" turn).

Template ``storyline``: one request per prompt for its storyline as JSON (each object's colour,
shape, start and end cell, whether it enters later or leaves; the background and whether it
changes), constrained to the world's names by the engine's structured output; the frames are then
written from it in the world's own words (``shape_world.stories.ideal_frames``, what the storyline
benchmark calls perfect). The model decides the story; the frame count only decides how finely it
is cut, so an FPS doubling writes the same storyline at twice the frames without asking again.
"""

from __future__ import annotations

from direct2v.director.instructions import (
    cut_off_problem,
    judge_answer,
    shape_instruction_text,
    storyline_instruction_text,
)
from direct2v.director.plan import validate_frames
from direct2v.director.prompts import PromptRecord
from direct2v.director.strategy import Strategy
from direct2v.director.v1 import ListConversation, WholeListStrategy
from direct2v.shape_world.stories import ideal_frames, parse_storyline, storyline_schema

#: the soft rules that hold in the shape world (see the module docstring for those that do not)
SHAPE_RULES = ("too_short", "phrase_loop")


class ShapeWorldStrategy(WholeListStrategy):
    """``shapes``: v1's whole-list turns with the shape-world instruction and rules."""

    def start(self, record: PromptRecord, frames: int, fps: int, seed: int) -> ListConversation:
        conversation = ListConversation(record=record, frames=frames, fps=fps, seed=seed)
        conversation.messages.append(self._request(conversation))
        return conversation

    def _request(self, conversation: ListConversation) -> dict:
        text = shape_instruction_text(conversation.record.prompt, conversation.frames, conversation.fps)
        return {"role": "user", "content": text}

    def _double(self, conversation: ListConversation) -> None:
        conversation.frames *= 2
        conversation.fps *= 2
        conversation.messages = [self._request(conversation)]

    def _judge(self, answer: str, conversation: ListConversation, finish_reason: str) -> tuple[list[str] | None, dict]:
        frames, broken = judge_answer(answer, conversation.frames, conversation.record.prompt, self.budget,
                                      finish_reason)
        return frames, {rule: text for rule, text in broken.items() if rule == "hard" or rule in SHAPE_RULES}


#: Most tokens of a storyline answer (two objects with every field: ~90).
STORYLINE_TOKENS = 160


class StorylineStrategy(ShapeWorldStrategy):
    """``storyline``: the prompt's storyline as JSON, the frames written from it."""

    def _request(self, conversation: ListConversation) -> dict:
        return {"role": "user", "content": storyline_instruction_text(conversation.record.prompt)}

    def _schema(self, conversation: ListConversation) -> dict:
        return storyline_schema()

    def _max_tokens(self, conversation: ListConversation) -> int:
        return STORYLINE_TOKENS

    def _repair(self, problems: list[str], conversation: ListConversation) -> dict:
        return {"role": "user", "content": f"That is not a storyline: {'; '.join(problems)}. Write the storyline "
                                           "again as JSON."}

    def _double(self, conversation: ListConversation) -> None:
        Strategy._double(self, conversation)  # twice the frames and rate; the story, and so the request, stay

    def _run_round(self, conversations: list[ListConversation], first_round: bool) -> None:
        """The storyline is asked once; a doubling round writes the same answer at twice the frames."""
        if first_round:
            super()._run_round(conversations, first_round)
            return
        for conversation in conversations:
            self._settle(conversation, *self._judge(conversation.last_answer, conversation, "stop"))

    def _judge(self, answer: str, conversation: ListConversation, finish_reason: str) -> tuple[list[str] | None, dict]:
        cut_off = cut_off_problem(finish_reason)
        if cut_off:
            return None, {"hard": cut_off}
        storyline, problem = parse_storyline(answer)
        if storyline is None:
            return None, {"hard": problem}
        frames = ideal_frames(storyline, conversation.frames)
        problems = validate_frames(frames, conversation.frames, self.budget)  # e.g. too long for the renderer
        return (None, {"hard": "; ".join(problems)}) if problems else (frames, {})
