"""The step schedule of a render, relative to its step count: Text2Video-Zero's window and the RVM period.

Text2Video-Zero's ``t0``/``t1`` are absolute step indices counted from the end of a run (the paper's
90 and 95 of 100 steps), and the RVM period m=4 is a number of steps of that 100-step run. Here
both follow the run's step count ``n``, so any sampler at any step count gets the same shape of
schedule, and 100 steps give exactly the paper's values:

* ``t1 = min(round(t1_fraction * n), n - 2)`` and ``t0 = min(round(t0_fraction * n), t1 - 1)``
  (defaults 0.95 and 0.90; rounding half up): frame 1 is denoised alone for the first
  ``n - t1 - 1`` steps (at least one), then over ``t1 - t0`` more (at least one) to x_t0, and the
  last ``t1 + 1`` steps are joint;
* ``m = max(1, round(rvm_period * n / 100))``: the period counts steps of a 100-step run, so the
  rotation visits the frames about as often as the paper's m=4 does at 100 steps (``inf`` stays
  Text2Video-Zero's fixed reference).

Explicit absolute values (``t0``, ``t1``, ``rvm_period_steps``) override the rules and are taken as
given: a combination that cannot run is refused, naming the keys, never adjusted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from direct2v.core.errors import Direct2VError

#: The step count at which the fractions and ``rvm_period`` mean what the paper says.
REFERENCE_STEPS = 100


class ScheduleError(Direct2VError, ValueError):
    """The settings describe a schedule that cannot run (the message names the keys)."""


@dataclass(frozen=True)
class Schedule:
    """A resolved schedule: absolute step indices for the pipeline.

    Attributes:
        steps: n, the sampler's step count.
        t0, t1: Text2Video-Zero's indices from the end (``0 <= t0 < t1 <= n - 2``).
        period: m in steps (a whole number >= 1), or ``math.inf``.
    """

    steps: int
    t0: int
    t1: int
    period: float

    @property
    def joint_steps(self) -> int:
        """T': the steps all frames are denoised together (each with its reference frame)."""
        return self.t1 + 1

    @property
    def alone_steps(self) -> int:
        """Steps frame 1 is denoised alone before x_t1."""
        return self.steps - self.t1 - 1

    def visits_per_frame(self, frames: int) -> float:
        """How many reference blocks of m steps each frame gets on average: T' / (m F); 0 for m = inf."""
        return 0.0 if math.isinf(self.period) else self.joint_steps / (self.period * frames)


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


def resolve_schedule(
    steps: int,
    t0_fraction: float = 0.90,
    t1_fraction: float = 0.95,
    t0: int | None = None,
    t1: int | None = None,
    rvm_period: float = 4,
    rvm_period_steps: int | None = None,
) -> Schedule:
    """The absolute schedule of an ``steps``-step render (module docstring for the rules).

    Raises:
        ScheduleError: the window leaves frame 1 no step alone, ``t0 >= t1``, a negative index, a
            period below 1 or not whole; the message names the settings keys involved.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ScheduleError(f"render.num_inference_steps must be an int >= 2, got {steps!r}")
    for name, fraction in (("t0_fraction", t0_fraction), ("t1_fraction", t1_fraction)):
        if not 0.0 < fraction < 1.0:
            raise ScheduleError(f"render.{name} must be between 0 and 1 (exclusive), got {fraction!r}")
    if t0 is None and t1 is None and t0_fraction >= t1_fraction:  # else the clamp would hide the mistake
        raise ScheduleError(f"render.t0_fraction={t0_fraction} must be below render.t1_fraction={t1_fraction}")
    if t1 is None:
        t1 = min(_round_half_up(t1_fraction * steps), steps - 2)
    elif not 0 < t1 <= steps - 2:
        raise ScheduleError(
            f"render.t1={t1} must be between 1 and num_inference_steps - 2 = {steps - 2}: frame 1 needs at "
            f"least one step alone before the last t1 + 1 steps are denoised jointly"
        )
    if t0 is None:
        t0 = min(_round_half_up(t0_fraction * steps), t1 - 1)
        if t0 < 0:
            raise ScheduleError(
                f"render.num_inference_steps={steps} is too few for the Text2Video-Zero window "
                f"(frame 1 alone, then on to x_t0, then the joint steps): use at least 3"
            )
    elif not 0 <= t0 < t1:
        raise ScheduleError(f"render.t0={t0} must be at least 0 and below render.t1={t1}")
    if rvm_period_steps is not None:
        if isinstance(rvm_period_steps, bool) or not isinstance(rvm_period_steps, int) or rvm_period_steps < 1:
            raise ScheduleError(f"render.rvm_period_steps must be a whole number of steps >= 1, got {rvm_period_steps!r}")
        period: float = rvm_period_steps
    elif math.isinf(rvm_period) and rvm_period > 0:
        period = math.inf
    elif math.isnan(rvm_period) or rvm_period < 1 or not float(rvm_period).is_integer():
        raise ScheduleError(f"render.rvm_period must be a whole number >= 1 or inf, got {rvm_period!r}")
    else:
        period = max(1, _round_half_up(rvm_period * steps / REFERENCE_STEPS))
    return Schedule(steps=steps, t0=t0, t1=t1, period=period)


def schedule_table(steps: list[int], frames: int = 8, **settings) -> list[dict]:
    """One row per step count: what README's schedule table shows (and a test compares)."""
    rows = []
    for count in steps:
        schedule = resolve_schedule(count, **settings)
        rows.append({
            "steps": count, "t0": schedule.t0, "t1": schedule.t1, "joint": schedule.joint_steps,
            "m": schedule.period, "visits": round(schedule.visits_per_frame(frames), 2),
        })
    return rows
