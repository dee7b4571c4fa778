"""The loop both trainers share (``core.training``), on a toy trainer: checkpoints where promised,
Ctrl-C keeps the work done, a resumed loop continues where it stopped, and the one resume rule."""

from __future__ import annotations

import math

import pytest
from pydantic import BaseModel

from direct2v.core.training import CheckpointError, check_resumable, learning_rate, run_steps


class ToyTrainer:
    """Loss = 1 / (step + 1); remembers at which ``next_step`` each checkpoint was written."""

    def __init__(self, interrupt_at: int | None = None):
        self.next_step, self.losses, self.checkpoints, self.interrupt_at = 0, [], [], interrupt_at

    def step(self, step: int) -> float:
        if step == self.interrupt_at:
            raise KeyboardInterrupt
        return 1.0 / (step + 1)

    def save_checkpoint(self) -> None:
        self.checkpoints.append(self.next_step)


def test_the_loop_checkpoints_every_n_steps_and_at_the_end():
    trainer, lines = ToyTrainer(), []
    run_steps(trainer, total_steps=10, checkpoint_every=4, echo=lines.append, log_every=5)
    assert trainer.checkpoints == [4, 8, 10]
    assert [step for step, _ in trainer.losses] == list(range(10))
    assert [line.split()[1] for line in lines] == ["1/10", "6/10", "10/10"]


def test_ctrl_c_saves_the_steps_done_and_the_same_loop_resumes_from_them():
    trainer, lines = ToyTrainer(interrupt_at=6), []
    with pytest.raises(KeyboardInterrupt):
        run_steps(trainer, total_steps=10, checkpoint_every=4, echo=lines.append, phase=lambda step: "toy")
    assert trainer.checkpoints == [4, 6] and trainer.next_step == 6
    assert "checkpoint at step 6" in lines[-1] and "toy loss" in lines[0]

    trainer.interrupt_at = None
    run_steps(trainer, total_steps=10, checkpoint_every=4, echo=lines.append)
    uninterrupted = ToyTrainer()
    run_steps(uninterrupted, total_steps=10, checkpoint_every=4, echo=lambda line: None)
    assert trainer.losses == uninterrupted.losses


def test_learning_rate_warms_up_linearly_then_decays_to_a_tenth_of_the_peak():
    assert learning_rate(0, 100, 1.0, warmup=10) == pytest.approx(0.1)
    assert learning_rate(9, 100, 1.0, warmup=10) == pytest.approx(1.0)
    assert learning_rate(10, 100, 1.0, warmup=10) == pytest.approx(1.0)
    assert learning_rate(55, 100, 1.0, warmup=10) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert learning_rate(100, 100, 1.0, warmup=10) == pytest.approx(0.1)
    assert learning_rate(500, 100, 1.0, warmup=10) == pytest.approx(0.1)  # past the end: held at the floor


class ToyConfig(BaseModel):
    lr: float = 0.1
    steps: int = 10
    threads: int = 2  # not a training setting: a run may resume on another machine

    def training_settings(self) -> dict:
        return self.model_dump(exclude={"threads"})


def test_a_checkpoint_resumes_only_a_run_of_equal_training_settings(tmp_path):
    path = tmp_path / "checkpoint.pt"
    check_resumable(path, {"lr": 0.1, "steps": 10, "threads": 8}, ToyConfig())  # threads differ: fine
    check_resumable(path, {"lr": 0.1}, ToyConfig())  # a setting added since reads as its default
    with pytest.raises(CheckpointError, match=f"{path} was made with other settings"):
        check_resumable(path, {"lr": 0.1, "steps": 20}, ToyConfig())
