"""Frame plans: the contract between the director and the renderer.

A plan is a JSON file a person can read, edit and re-render (``direct2v render --plans DIR``).
``validate_frames`` is the one gate every plan passes, whether an LLM or a person wrote it:
nothing unvalidated reaches the renderer.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

from direct2v.core.errors import Direct2VError
from direct2v.core.files import write_atomically
from direct2v.core.messages import problem
from direct2v.director import quality
from direct2v.director.prompts import check_safe_id, describe_character, first_unprintable

SafeId = Annotated[str, AfterValidator(check_safe_id)]

PLAN_SCHEMA_VERSION = 1
MAX_FRAME_CHARS = 300  # a sanity bound; the real limit is the text encoder's, in tokens (TokenBudget)
#: No plan file is larger: 32,768 frames (512 doubled six times) of 300 characters, every round kept,
#: are about 20 MB.
MAX_PLAN_BYTES = 64 << 20
# Frame descriptions in the paper's style with common and rarer words, to measure how many
# characters a tokenizer packs per token (the densest one counts).
REFERENCE_DESCRIPTIONS = (
    "A small corgi with a red collar runs across a sunny park, its ears flapping, while a second "
    "corgi appears at the edge of the frame; wide shot, the camera slowly pans to the right.",
    "Bioluminescent jellyfish drift past a sunken galleon, silhouetted against shimmering turquoise "
    "water; tracking shot.",
    "An elderly fisherman mends tangled nets on a weathered pier while seagulls squabble overhead, "
    "handheld close-up.",
)


@dataclass(frozen=True)
class TokenBudget:
    """How the configured SD text encoder sees a description: ``count`` includes BOS/EOS, and
    anything past ``limit`` tokens would be silently cut off by the encoder."""

    count: Callable[[str], int]
    limit: int

    @classmethod
    def from_sd_model(cls, model_dir: Path) -> "TokenBudget":
        """The budget of a local diffusers SD directory's CLIP tokenizer."""
        from transformers import CLIPTokenizer

        tokenizer_dir = Path(model_dir) / "tokenizer"
        if not tokenizer_dir.is_dir():
            raise FileNotFoundError(f"{tokenizer_dir} not found: render.model_dir is not a diffusers SD directory")
        tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        return cls(count=lambda text: len(tokenizer(text, verbose=False).input_ids), limit=tokenizer.model_max_length)

    def safe_chars(self, references: Sequence[str] = REFERENCE_DESCRIPTIONS, margin: float = 0.8) -> int:
        """About how many characters of description fit the limit, with a safety margin.

        Used as the JSON schema's ``maxLength`` so the constrained decoder stops a description
        before the tokenizer would reject it; the exact token check still validates every frame.
        Measured on ``references`` (the densest counts) because characters per token depend on
        the vocabulary: ~4 for SD's CLIP BPE on English, ~2.5 for the tiny test tokenizer.
        """
        chars_per_token = min(len(text) / max(self.count(text) - 2, 1) for text in references)  # minus BOS/EOS
        return max(int((self.limit - 2) * chars_per_token * margin), 1)


class PlanRound(BaseModel):
    """The frames of one director round; round k+1 doubles the frames and the frame rate of round k.

    ``parents[j]`` is the frame of the previous round that frame j was divided from (empty for the
    first round): always ``j // 2`` (see ``lineage``), stored so a reader need not know the rule.
    """

    model_config = ConfigDict(extra="forbid")

    fps: int = Field(ge=1)
    frames: list[str]
    parents: list[int] = Field(default_factory=list)


def lineage(num_frames: int) -> list[int]:
    """Parents of the frames of a doubled round: frame j comes from frame j // 2."""
    return [parent_frame(j) for j in range(num_frames)]


class FramePlan(BaseModel):
    """A validated per-frame description of one video.

    Validated with ``context={"token_budget": TokenBudget}``, every frame must also fit the text
    encoder; without a budget only the other hard rules apply.
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: int = PLAN_SCHEMA_VERSION
    prompt_id: SafeId
    prompt: str
    fps: int = Field(ge=1, le=960)
    seed: int = Field(ge=0, le=2**32 - 1)
    frames: list[str] = Field(min_length=2)
    rounds: list[PlanRound] = Field(default_factory=list, description="every director round, first to last")
    director_model: str = "hand-written"
    template_version: str = "none"
    director_sampling: dict[str, float | int | str] = Field(
        default_factory=dict, description="the template and sampling settings that produced the plan"
    )
    attempts: int = Field(1, ge=1)
    warnings: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _frames_are_valid(self, info: ValidationInfo) -> "FramePlan":
        budget = (info.context or {}).get("token_budget")
        problems = validate_frames(self.frames, len(self.frames), budget)
        if (char := first_unprintable(self.prompt)) is not None:
            problems.insert(0, f"the prompt contains {describe_character(char)}, which is not text")
        if problems:
            raise ValueError("; ".join(problems))
        if self.rounds:
            if self.rounds[-1].frames != self.frames:
                raise ValueError("the last round's frames must be the plan's frames")
            for previous, current in zip(self.rounds, self.rounds[1:]):
                if len(current.frames) != 2 * len(previous.frames) or current.fps != 2 * previous.fps:
                    raise ValueError("each round must double the previous round's frames and fps")
                if current.parents != lineage(len(current.frames)):
                    raise ValueError("a doubled round's parents must be [0, 0, 1, 1, ...] (frame j from j // 2)")
        return self


class PlanFailure(BaseModel):
    """A prompt the director could not plan: recorded, never rendered."""

    model_config = ConfigDict(extra="forbid")

    prompt_id: SafeId
    prompt: str
    reason: str
    attempts: int = 0
    raw_output: str = ""


def validate_frames(frames: object, expected: int, budget: TokenBudget | None = None) -> list[str]:
    """Hard rules for a list of frame descriptions; returns the problems (empty = valid)."""
    if not isinstance(frames, list):
        return [f"expected a JSON list of {expected} strings, got {type(frames).__name__}"]
    problems = []
    if len(frames) != expected:
        problems.append(f"expected exactly {expected} frame descriptions, got {len(frames)}")
    for index, frame in enumerate(frames, start=1):
        if not isinstance(frame, str):
            problems.append(f"frame {index} is not a string")
        elif not frame.strip():
            problems.append(f"frame {index} is empty")
        elif len(frame) > MAX_FRAME_CHARS:
            problems.append(f"frame {index} is longer than {MAX_FRAME_CHARS} characters")
        elif (char := first_unprintable(frame)) is not None:
            problems.append(f"frame {index} contains {describe_character(char)}, which is not text")
        elif budget is not None and (tokens := budget.count(frame)) > budget.limit:
            problems.append(
                f"frame {index} has {tokens} text-encoder tokens, more than the {budget.limit} "
                "the renderer can read; shorten it"
            )
    return problems


def parse_frames(text: str, expected: int, budget: TokenBudget | None = None) -> tuple[list[str] | None, list[str]]:
    """Parse an LLM answer (a JSON list, or an object whose only list is the frames) and validate it."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        return None, [f"the answer is not valid JSON ({error.msg} at character {error.pos})"]
    if isinstance(data, dict):
        lists = [value for value in data.values() if isinstance(value, list)]
        data = lists[0] if len(lists) == 1 else data
    if isinstance(data, list):
        data = [" ".join(frame.split()) if isinstance(frame, str) else frame for frame in data]
    problems = validate_frames(data, expected, budget)
    if problems:
        return None, problems
    return data, []


MIN_FRAME_WORDS = 3  # "The corgi**" or "," describes no scene

_QUALITY_MESSAGES = {
    "repeats_prompt": "frames {frames} only repeat the user prompt; describe what is seen in each frame",
    "static_video": "all frames are identical; each frame must show the next small change",
    "adjacent_identical": "frames {frames} are identical to the frame after them; make each frame differ a little",
    "repeated_frame": "frames {frames} repeat an earlier frame; each frame must show its own moment",
    "too_short": "frames {frames} are too short; describe the whole scene in each frame",
    "phrase_loop": "frames {frames} repeat a phrase over and over; say each thing once",
    "off_topic": "frames {frames} do not show the prompt's subject ({subject}); keep it in every frame",
}


def quality_findings(frames: list[str], user_prompt: str) -> dict[str, list[int]]:
    """Soft rules (a plan can break them and still render): rule name -> the frames (1-based)
    that break it. The measures are ``plan_quality``'s, the benchmark's own.

    * ``repeats_prompt``: a frame merely restates the user prompt (no direction was added);
    * ``adjacent_identical``: a frame is the same as the next one (the earlier frame is named);
    * ``static_video``: every frame is the same (frames 2..F are named), nothing changes;
    * ``repeated_frame``: a frame repeats an earlier, not neighbouring, frame (the later is named);
    * ``too_short``: a frame has fewer than MIN_FRAME_WORDS words with letters;
    * ``phrase_loop``: a run of words comes back inside one frame (degenerate decoding);
    * ``off_topic``: a frame does not name the prompt's subject (``quality.subject_terms``).
    Small models break these often (SmolLM2-135M likes to return the prompt F times, to loop on a
    phrase, and, pushed to vary, to drift off the subject).
    """
    normal = [quality.normalised(frame) for frame in frames]
    subject = quality.subject_terms(user_prompt)
    static = len(set(normal)) == 1  # then only static_video, not every pair of frames again
    found = {
        "repeats_prompt": [i for i, frame in enumerate(frames, 1) if quality.restates_prompt(frame, user_prompt)],
        "static_video": list(range(2, len(frames) + 1)) if static else [],
        "adjacent_identical": [] if static else [i + 1 for i in range(len(normal) - 1) if normal[i] == normal[i + 1]],
        "repeated_frame": [] if static else [i + 1 for i in range(2, len(normal)) if normal[i] in normal[:i - 1]],
        "too_short": [i for i, frame in enumerate(frames, 1)
                      if sum(any(c.isalpha() for c in w) for w in frame.split()) < MIN_FRAME_WORDS],
        "phrase_loop": [i for i, frame in enumerate(frames, 1) if quality.phrase_loop(frame)],
        "off_topic": [i for i, frame in enumerate(frames, 1) if not quality.on_topic(frame, subject)],
    }
    return {rule: numbers for rule, numbers in found.items() if numbers}


def quality_problems(frames: list[str], user_prompt: str) -> dict[str, str]:
    """``quality_findings`` as rule name -> the sentence a repair turn quotes to the director."""
    subject = ", ".join(sorted(quality.subject_terms(user_prompt)))
    return {rule: _QUALITY_MESSAGES[rule].format(frames=numbers, subject=subject)
            for rule, numbers in quality_findings(frames, user_prompt).items()}


def parent_frame(child_index: int) -> int:
    """FPS lineage: frame j of round k+1 comes from frame j // 2 of round k."""
    if child_index < 0:
        raise ValueError(f"frame index must be >= 0, got {child_index}")
    return child_index // 2


def plan_path(plans_dir: Path, prompt_id: str) -> Path:
    return Path(plans_dir) / f"{prompt_id}.json"


def write_plan(plan: FramePlan, plans_dir: Path) -> Path:
    """Write a plan atomically (``files.write_atomically``) so a crash never leaves half a file."""
    target = plan_path(plans_dir, plan.prompt_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    return write_atomically(target, plan.model_dump_json(indent=2) + "\n")


def read_plan(path: Path, budget: TokenBudget | None = None) -> FramePlan:
    """Read and validate a plan file; raises PlanFileError with the file name and the problems,
    whatever the file holds (pydantic's JSON parser stops nesting and out-of-range numbers itself)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_PLAN_BYTES:  # never read whole what cannot be a plan
            raise PlanFileError(f"{path}: {size} bytes, larger than any plan can be ({MAX_PLAN_BYTES >> 20} MiB); "
                                "is it a plan file?")
        text = path.read_bytes().decode("utf-8-sig")  # a byte-order mark (Windows editors) is dropped
        return FramePlan.model_validate_json(text, context={"token_budget": budget})
    except OSError as error:
        raise PlanFileError(f"{path}: cannot read plan ({error.strerror})") from None
    except UnicodeDecodeError as error:
        raise PlanFileError(f"{path}: not UTF-8 text (byte {error.start}); save the plan as UTF-8") from None
    except ValidationError as error:
        details = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'plan'}: {problem(e)}" for e in error.errors())
        raise PlanFileError(f"{path}: invalid plan: {details}") from None


class PlanFileError(Direct2VError, ValueError):
    """A plan file is missing or invalid."""
