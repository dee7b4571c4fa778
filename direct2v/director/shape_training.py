"""Fine-tune the shape director: a LoRA adapter that teaches SmolLM2-135M-Instruct the shape world's storylines.

    python -m direct2v models train-director --out .state/models/shape-director-adapter

Each example (``shape_data``) is the director's own request (template ``shapes``, sent as one
user message through the tokenizer's chat template with the generation prompt, SmolLM2's default
system message included) and the answer a perfect director writes: ``json.dumps`` of the story's
ideal frames, followed by the end-of-turn token ``<|im_end|>`` (the model's eos: vLLM stops there).
The loss is on the answer tokens and that end token only.

One config object (:class:`DirectorTrainConfig`) drives one loop: the base model in float32 (loaded
from its local directory, never remote code), LoRA on the attention and MLP projections, AdamW with
warm-up and cosine decay. Step ``i``'s batch and dropout come from ``(seed, i)``, so resuming from
the checkpoint (adapter + optimiser + step, written every ``checkpoint_every`` steps and on Ctrl-C)
continues exactly as an uninterrupted run would. The result is a PEFT adapter directory
(safetensors, ``adapter_config.json``) with ``TRAINING.json``; ``direct2v.bundled.models.merge_director``
folds it into the base for vLLM.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from direct2v.core.files import directory_hash, staged_directory, write_atomically
from direct2v.core.training import CHECKPOINT, git_commit, learning_rate, load_checkpoint, run_steps, save_checkpoint
from direct2v.director import shape_data
from direct2v.shape_world.stories import KINDS

log = logging.getLogger(__name__)

#: The end-of-turn token SmolLM2's chat template closes every message with (its eos token).
END_OF_TURN = "<|im_end|>"
#: Label of a token the loss ignores.
IGNORE = -100
ADAPTER_WEIGHTS = "adapter_model.safetensors"

__all__ = ["DirectorTrainConfig", "DirectorTrainer", "encode_example", "train_director"]


class DirectorTrainConfig(BaseModel):
    """Everything a fine-tuning run depends on; recorded beside the adapter."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    steps: int = Field(150, ge=1, description="150 x 8 examples: ~40 min on 2 idle CPU cores with bfloat16 autocast")
    batch_size: int = Field(8, ge=1)
    micro_batch: int = Field(2, ge=1, description="examples per forward pass (gradients accumulate over the batch): "
                             "on 2 CPU cores a whole batch of 8 at once runs ~5x slower per token than 4 passes of 2")
    lr: float = Field(2e-3, gt=0, description="peak learning rate (linear warm-up, then cosine decay to 10%)")
    warmup: int = Field(10, ge=0)
    weight_decay: float = 0.0
    lora_rank: int = Field(16, ge=1)
    lora_alpha: float = 32.0
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    answer: Literal["frames", "storyline"] = Field(
        "frames", description="what the model learns to write: frames = the whole list of frame descriptions (template "
        "shapes, the committed adapter); storyline = the story as JSON, the frames written from it (template storyline)")
    max_length: int = Field(640, ge=16, description="most tokens of one example (request + answer); longer is an error")
    frames_choices: tuple[int, ...] = shape_data.FRAMES_CHOICES
    kind_weights: dict[str, float] = Field(default_factory=lambda: dict(shape_data.KIND_WEIGHTS),
                                           description="how often each story kind is drawn, relative to the others")
    compute: Literal["float32", "bfloat16-autocast"] = Field(
        "bfloat16-autocast", description="float32 weights always; bfloat16-autocast runs the matrix products in bf16 "
        "(CPU autocast: ~1.2-1.3x faster per step on avx512_bf16, the same loss at step 0)")
    adapter_dtype: Literal["float16", "float32"] = Field(
        "float16", description="the saved adapter's dtype (rank 16 on all seven projections: ~10 MB in float16)")
    checkpoint_every: int = Field(25, ge=1)
    threads: int | None = None

    #: Settings that do not change what the steps compute: a checkpoint resumes whatever they are.
    OUTPUT_ONLY: ClassVar[frozenset[str]] = frozenset({"checkpoint_every", "threads", "adapter_dtype", "micro_batch"})

    @field_validator("frames_choices")
    @classmethod
    def _frames(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(f < 2 for f in value):
            raise ValueError("frames_choices: one or more frame counts, each at least 2")
        return value

    @field_validator("kind_weights")
    @classmethod
    def _kinds(cls, value: dict[str, float]) -> dict[str, float]:
        if unknown := sorted(set(value) - set(KINDS)):
            raise ValueError(f"kind_weights: unknown kinds {unknown}; the kinds are {', '.join(KINDS)}")
        if any(weight < 0 for weight in value.values()) or not any(weight > 0 for weight in value.values()):
            raise ValueError("kind_weights: weights of 0 or more, at least one above 0")
        return value

    def training_settings(self) -> dict:
        return self.model_dump(mode="json", exclude=set(self.OUTPUT_ONLY))


def request_text(tokenizer, messages: Sequence[dict]) -> str:
    """What the model reads before it answers: the chat template with the generation prompt (as vLLM's ``chat``)."""
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


def encode_example(tokenizer, messages: Sequence[dict], answer: str, max_length: int) -> tuple[list[int], list[int]]:
    """(input ids, labels): the request's tokens (label ``IGNORE``) then the answer's and the end
    token's (labels = the ids). The two are tokenized apart, as at run time, where the model
    continues the tokenized request."""
    prompt = tokenizer(request_text(tokenizer, messages), add_special_tokens=False)["input_ids"]
    target = tokenizer(answer + END_OF_TURN, add_special_tokens=False)["input_ids"]
    if target[-1] != tokenizer.convert_tokens_to_ids(END_OF_TURN):
        raise ValueError(f"the tokenizer does not read {END_OF_TURN!r} as one token")
    if len(prompt) + len(target) > max_length:
        raise ValueError(f"an example of {len(prompt) + len(target)} tokens is longer than max_length={max_length}")
    return prompt + target, [IGNORE] * len(prompt) + target


def collate(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (padding ignored)."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (input_ids, row_labels) in enumerate(rows):
        ids[row, : len(input_ids)] = torch.tensor(input_ids)
        labels[row, : len(row_labels)] = torch.tensor(row_labels)
        mask[row, : len(input_ids)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def load_base(base_dir: Path):
    """The base model (float32, local files only, no remote code) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True, trust_remote_code=False,
                                                 dtype=torch.float32)
    return tokenizer, model


class DirectorTrainer:
    """The LoRA model and optimiser of one run; ``step(i)`` does training step i."""

    def __init__(self, config: DirectorTrainConfig, base_dir: Path, work_dir: Path,
                 exclude: frozenset[str] | None = None):
        from peft import LoraConfig, get_peft_model

        self.config = config
        self.base_dir = Path(base_dir)
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.base_hash = directory_hash(self.base_dir)
        self.exclude = shape_data.benchmark_prompts() if exclude is None else exclude
        self.tokenizer, base = load_base(self.base_dir)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=list(config.target_modules), bias="none", task_type="CAUSAL_LM")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.model = get_peft_model(base, lora)
        self.model.peft_config["default"].base_model_name_or_path = self.base_dir.name
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.parameters, lr=config.lr, weight_decay=config.weight_decay)
        self.next_step = 0
        self.losses: list[tuple[int, float]] = []

    # ------------------------------------------------------------ state

    @property
    def checkpoint_path(self) -> Path:
        return self.work_dir / CHECKPOINT

    def adapter_state(self) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        state = get_peft_model_state_dict(self.model, save_embedding_layers=False)
        return {key: value.detach().clone() for key, value in state.items()}

    def save_checkpoint(self) -> None:
        save_checkpoint(self.checkpoint_path, {
            "config": self.config.training_settings(), "base_hash": self.base_hash, "next_step": self.next_step,
            "losses": self.losses, "adapter": self.adapter_state(), "optimizer": self.optimizer.state_dict()})

    def load_checkpoint(self) -> bool:
        from peft import set_peft_model_state_dict

        state = load_checkpoint(self.checkpoint_path, self.config, ("base_hash", self.base_hash, "base model"))
        if state is None:
            return False
        set_peft_model_state_dict(self.model, state["adapter"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.next_step, self.losses = state["next_step"], [tuple(x) for x in state["losses"]]
        return True

    # ------------------------------------------------------------ steps

    def rows(self, step: int) -> list[tuple[list[int], list[int]]]:
        """Step ``step``'s examples, drawn from ``(seed, step)`` alone, as (input ids, labels)."""
        rng = np.random.default_rng([self.config.seed, step])
        examples = [shape_data.random_example(rng, self.exclude, self.config.frames_choices, step,
                                              self.config.kind_weights, self.config.answer)
                    for _ in range(self.config.batch_size)]
        return [encode_example(self.tokenizer, e.messages, e.answer, self.config.max_length) for e in examples]

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        return collate(self.rows(step), self.pad_id)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy over the answer tokens of ``batch``."""
        total, count = self.loss_sum(batch)
        return total / count

    def loss_sum(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """Summed cross-entropy over the answer tokens of ``batch``, and their count (the LM head is
        applied to those positions only)."""
        autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if self.config.compute == "bfloat16-autocast"
                    else contextlib.nullcontext())
        base = self.model.get_base_model()
        with autocast:
            hidden = base.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            targets = batch["labels"][:, 1:]
            keep = targets != IGNORE
            logits = base.lm_head(hidden[:, :-1][keep])
        return torch.nn.functional.cross_entropy(logits.float(), targets[keep], reduction="sum"), int(keep.sum())

    def step(self, step: int) -> float:
        """One optimiser step on the batch of ``(seed, step)``: the mean loss over all its answer
        tokens, its gradient accumulated over passes of ``micro_batch`` examples."""
        config = self.config
        self.model.train()
        rows = self.rows(step)
        answer_tokens = sum(sum(label != IGNORE for label in labels[1:]) for _, labels in rows)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(step, config.steps, config.lr, config.warmup)
        torch.manual_seed(config.seed * 1_000_003 + step)  # this step's dropout
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for start in range(0, len(rows), config.micro_batch):
            part, _ = self.loss_sum(collate(rows[start : start + config.micro_batch], self.pad_id))
            (part / answer_tokens).backward()
            total += float(part.detach())
        torch.nn.utils.clip_grad_norm_(self.parameters, 1.0)
        self.optimizer.step()
        return total / answer_tokens

    # ------------------------------------------------------------ output

    def save_adapter(self, out_dir: Path, provenance: dict) -> Path:
        """The adapter as a PEFT directory (``adapter_config.json``, safetensors in ``adapter_dtype``) and ``TRAINING.json``."""
        from safetensors.torch import save_file

        dtype = getattr(torch, self.config.adapter_dtype)
        weights = {key: value.to(dtype).contiguous() for key, value in self.adapter_state().items()}
        with staged_directory(out_dir) as staging:
            staging.mkdir(parents=True)
            save_file(weights, staging / ADAPTER_WEIGHTS, metadata={"format": "pt"})
            self.model.peft_config["default"].save_pretrained(staging)
            write_atomically(staging / "TRAINING.json", json.dumps(provenance, indent=2) + "\n")
        return Path(out_dir)


def train_director(config: DirectorTrainConfig, base_dir: Path, out_dir: Path, work_dir: Path, echo=print,
                   command: str = "python -m direct2v models train-director", exclude: frozenset[str] | None = None,
                   log_every: int = 10) -> Path:
    """Fine-tune (resuming from ``work_dir/checkpoint.pt`` when there is one) and save the adapter to ``out_dir``."""
    if config.threads:
        torch.set_num_threads(config.threads)
    trainer = DirectorTrainer(config, base_dir, work_dir, exclude)
    if trainer.load_checkpoint():
        echo(f"resuming from step {trainer.next_step} of {config.steps}")
    started = time.monotonic()
    run_steps(trainer, config.steps, config.checkpoint_every, echo, log_every=log_every)
    recent = [loss for _, loss in trainer.losses][-20:]
    provenance = {
        "command": command, "config": config.model_dump(mode="json"), "base_model": trainer.base_dir.name,
        "base_model_sha256": trainer.base_hash, "commit": git_commit(), "steps": config.steps,
        "final_loss": round(float(np.mean(recent)), 5) if recent else None,
        "train_seconds_this_session": round(time.monotonic() - started, 1), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "excluded_benchmark_prompts": len(trainer.exclude),
        "loss_every_10_steps": [round(loss, 4) for step, loss in trainer.losses if step % 10 == 0],
    }
    return trainer.save_adapter(out_dir, provenance)
