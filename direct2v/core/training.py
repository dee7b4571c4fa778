"""What DirecT2V's two trainers share: the shape-world model's (``shape_world.training``) and the
storyline director's (``director.shape_training``).

One resumable loop (:func:`run_steps`) drives any trainer that has ``step(i) -> loss``,
``next_step``, ``losses`` and ``save_checkpoint()``; one resume rule (:func:`check_resumable`:
a checkpoint continues only a run of equal training settings); one learning-rate schedule; and the
commit a trained model records. Checkpoints are written and read here too (torch is imported only
there): a trainer's state is its own dict.
"""

from __future__ import annotations

import math
import subprocess
import time
from pathlib import Path

from pydantic import BaseModel

from direct2v.core.errors import Direct2VError
from direct2v.core.files import atomic_path

#: A trainer's checkpoint file in its work directory.
CHECKPOINT = "checkpoint.pt"


class CheckpointError(Direct2VError, ValueError):
    """A work directory's checkpoint cannot be continued with these settings (the message says what to do)."""


def checkpoint_settings(config_class: type[BaseModel], saved: dict) -> dict:
    """The training settings a checkpoint's recorded config stands for, read with ``config_class``: a
    setting added since it was written reads as its default (what that run used). The one resume
    rule of the trainers: a checkpoint continues only a run of equal settings."""
    known = {key: value for key, value in saved.items() if key in config_class.model_fields}
    return config_class(**known).training_settings()


def check_resumable(path: Path, saved: dict, config: BaseModel) -> None:
    """Refuse the checkpoint at ``path``, whose recorded config is ``saved``, unless it is a run of
    ``config``'s training settings."""
    if checkpoint_settings(type(config), saved) != config.training_settings():
        raise CheckpointError(f"{path} was made with other settings; delete it or use another --work-dir")


def save_checkpoint(path: Path, state: dict) -> None:
    """A trainer's ``state`` at ``path`` (``torch.save``), all or nothing: a crash keeps the last one."""
    import torch

    with atomic_path(path) as temporary:
        torch.save(state, temporary)


def load_checkpoint(path: Path, config: BaseModel, source: tuple[str, str, str] | None = None) -> dict | None:
    """The trainer state saved at ``path``, None when there is none. Refused unless it continues a run
    of ``config``'s training settings and, given ``source = (key, value, what)``, one made from the
    same ``what``: the state's ``key`` is ``value``."""
    import torch

    path = Path(path)
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    check_resumable(path, state["config"], config)
    if source is not None:
        key, value, what = source
        if state[key] != value:
            raise CheckpointError(f"{path} was made from another {what}; delete it or use another --work-dir")
    return state


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def git_commit() -> str | None:
    """The commit of this checkout, for a trained model's provenance (None outside a git checkout)."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False,
                              cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def run_steps(trainer, total_steps: int, checkpoint_every: int, echo=print, log_every: int = 50,
              phase=lambda step: "") -> None:
    """The one resumable loop: steps ``[trainer.next_step, total_steps)``, each recorded in
    ``trainer.losses``, a checkpoint every ``checkpoint_every`` steps, on Ctrl-C (then re-raised) and
    at the end; progress through ``echo`` every ``log_every`` steps, labelled ``phase(step)``."""
    started = time.monotonic()
    first = trainer.next_step
    try:
        for step in range(trainer.next_step, total_steps):
            loss = trainer.step(step)
            trainer.next_step = step + 1
            trainer.losses.append((step, loss))
            if trainer.next_step % checkpoint_every == 0:
                trainer.save_checkpoint()
            if step % log_every == 0 or step + 1 == total_steps:
                rate = (step + 1 - first) / max(1e-9, time.monotonic() - started)
                left = (total_steps - step - 1) / max(rate, 1e-9)
                label = f"{phase(step)} " if phase(step) else ""
                echo(f"step {step + 1}/{total_steps} {label}loss {loss:.4f} "
                     f"({60 * rate:.1f} steps/min, ~{left / 60:.1f} min left)")
    except KeyboardInterrupt:
        trainer.save_checkpoint()
        echo(f"interrupted: checkpoint at step {trainer.next_step}; run the same command again to resume")
        raise
    trainer.save_checkpoint()
