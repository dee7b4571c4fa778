"""Template ``shapes``, the shape-world profile: one request per prompt for the whole list, in the
shape world's own words (``instructions.shape_instruction_text``), answered by a SmolLM2 fine-tuned
on storylines drawn from the world (``shape_world.director_training``).

It differs from v1 where the world does: an object that holds its cell for a few frames gives
identical neighbouring frames, and a background that is all that changes gives frames that differ
in one word, so the free-text rules that flag those (``adjacent_identical``, ``repeated_frame``,
``static_video``, ``repeats_prompt``, ``off_topic``: the prompt's "ball" is the world's "circle")
do not apply; an answer must still parse, fit the budget, and not loop. An FPS doubling asks for
the whole list again at twice the frames and rate (the model was trained on whole lists, not on
v1's "divide each frame into two" turn).
"""

from __future__ import annotations

from direct2v.director.instructions import judge_answer, shape_instruction_text
from direct2v.director.prompts import PromptRecord
from direct2v.director.v1 import ListConversation, WholeListStrategy

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
