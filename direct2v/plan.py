"""Frame plans: the contract between the director and the renderer.

A plan is a JSON file a person can read, edit and re-render (``direct2v render --plans DIR``).
``validate_frames`` is the one gate every plan passes, whether an LLM or a person wrote it:
nothing unvalidated reaches the renderer.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PLAN_SCHEMA_VERSION = 1
MAX_FRAME_CHARS = 300  # ~75 CLIP tokens: longer would be cut by SD's 77-token encoder anyway


class PlanRound(BaseModel):
    """The frames of one director round; round k+1 doubles the frames and the frame rate of round k."""

    model_config = ConfigDict(extra="forbid")

    fps: int = Field(ge=1)
    frames: list[str]


class FramePlan(BaseModel):
    """A validated per-frame description of one video."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = PLAN_SCHEMA_VERSION
    prompt_id: str
    prompt: str
    fps: int = Field(ge=1, le=120)
    seed: int = Field(ge=0, le=2**32 - 1)
    frames: list[str] = Field(min_length=2)
    rounds: list[PlanRound] = Field(default_factory=list, description="every director round, first to last")
    director_model: str = "hand-written"
    template_version: str = "none"
    attempts: int = Field(1, ge=1)
    warnings: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _frames_are_valid(self) -> "FramePlan":
        problems = validate_frames(self.frames, len(self.frames))
        if problems:
            raise ValueError("; ".join(problems))
        if self.rounds and self.rounds[-1].frames != self.frames:
            raise ValueError("the last round's frames must be the plan's frames")
        return self


class PlanFailure(BaseModel):
    """A prompt the director could not plan: recorded, never rendered."""

    model_config = ConfigDict(extra="forbid")

    prompt_id: str
    prompt: str
    reason: str
    attempts: int = 0
    raw_output: str = ""


def validate_frames(frames: object, expected: int) -> list[str]:
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
    return problems


def parse_frames(text: str, expected: int) -> tuple[list[str] | None, list[str]]:
    """Parse an LLM answer (a JSON list, or an object whose only list is the frames) and validate it."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        return None, [f"the answer is not valid JSON ({error.msg} at character {error.pos})"]
    if isinstance(data, dict):
        lists = [value for value in data.values() if isinstance(value, list)]
        data = lists[0] if len(lists) == 1 else data
    problems = validate_frames(data, expected)
    if problems:
        return None, problems
    return [" ".join(frame.split()) for frame in data], []


def parent_frame(child_index: int) -> int:
    """FPS lineage: frame j of round k+1 comes from frame j // 2 of round k."""
    if child_index < 0:
        raise ValueError(f"frame index must be >= 0, got {child_index}")
    return child_index // 2


def plan_path(plans_dir: Path, prompt_id: str) -> Path:
    return Path(plans_dir) / f"{prompt_id}.json"


def write_plan(plan: FramePlan, plans_dir: Path) -> Path:
    """Write a plan atomically (temp name, then rename) so a crash never leaves half a file."""
    target = plan_path(plans_dir, plan.prompt_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_suffix(".json.tmp")
    temporary.write_text(plan.model_dump_json(indent=2) + "\n", encoding="utf-8")
    temporary.replace(target)
    return target


def read_plan(path: Path) -> FramePlan:
    """Read and validate a plan file; raises PlanFileError with the file name and the problems."""
    path = Path(path)
    try:
        return FramePlan.model_validate_json(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise PlanFileError(f"{path}: cannot read plan ({error.strerror})") from None
    except ValidationError as error:
        details = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'plan'}: {e['msg']}" for e in error.errors())
        raise PlanFileError(f"{path}: invalid plan: {details}") from None


class PlanFileError(ValueError):
    """A plan file is missing or invalid."""
