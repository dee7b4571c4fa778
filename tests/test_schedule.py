"""The schedule relative to the step count (direct2v/core/schedule.py) and what README's table says of it."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from direct2v.core.config import RenderSettings
from direct2v.core.schedule import ScheduleError, resolve_schedule, schedule_table
from direct2v.director.plan import FramePlan
from direct2v.job.videos import identity_settings, video_hash

README = Path(__file__).resolve().parent.parent / "README.md"


def test_a_100_step_run_is_the_papers_schedule():
    schedule = resolve_schedule(100)
    assert (schedule.t0, schedule.t1, schedule.period) == (90, 95, 4)
    assert (schedule.joint_steps, schedule.alone_steps, schedule.visits_per_frame(8)) == (96, 4, 3.0)


def test_every_step_count_from_3_to_1000_gets_a_runnable_window():
    for steps in range(3, 1001):
        schedule = resolve_schedule(steps)
        assert 0 <= schedule.t0 < schedule.t1 <= steps - 2, steps  # frame 1: >= 1 step alone, >= 1 to x_t0
        assert schedule.alone_steps >= 1 and schedule.joint_steps == schedule.t1 + 1, steps
        assert schedule.period >= 1 and float(schedule.period).is_integer(), steps
        # the fractions, rounded half up, unless a clamp keeps a segment from vanishing
        assert schedule.t1 == min(math.floor(0.95 * steps + 0.5), steps - 2), steps
        assert abs(schedule.period - 4 * steps / 100) <= 0.5 or schedule.period == 1, steps


@pytest.mark.parametrize("steps, t0, t1, period", [(8, 5, 6, 1), (20, 17, 18, 1), (50, 45, 48, 2), (200, 180, 190, 8)])
def test_worked_examples_of_the_rule(steps, t0, t1, period):
    # 20 steps: t1 = round(19) = 19 would leave frame 1 no step alone, so 18; t0 = round(18) = 18 -> 17
    schedule = resolve_schedule(steps)
    assert (schedule.t0, schedule.t1, schedule.period) == (t0, t1, period)


def test_absolute_values_override_the_fractions_and_are_not_adjusted():
    schedule = resolve_schedule(20, t0=3, t1=5, rvm_period_steps=3)
    assert (schedule.t0, schedule.t1, schedule.period) == (3, 5, 3)
    assert resolve_schedule(20, rvm_period=math.inf).period == math.inf
    assert resolve_schedule(40, t0_fraction=0.5, t1_fraction=0.75).t0 == 20


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"steps": 2}, "render.num_inference_steps=2 is too few"),
        ({"steps": 20, "t1": 19}, "render.t1=19 must be between 1 and num_inference_steps - 2 = 18"),
        ({"steps": 20, "t0": 12, "t1": 12}, "render.t0=12 must be at least 0 and below render.t1=12"),
        ({"steps": 20, "rvm_period": 2.5}, "render.rvm_period must be a whole number"),
        ({"steps": 20, "rvm_period_steps": 0}, "render.rvm_period_steps must be a whole number of steps >= 1"),
        ({"steps": 20, "t1_fraction": 1.0}, "render.t1_fraction must be between 0 and 1"),
        ({"steps": 100, "t0_fraction": 0.96}, "render.t0_fraction=0.96 must be below render.t1_fraction=0.95"),
    ],
)
def test_impossible_schedules_are_refused_naming_the_keys(kwargs, message):
    with pytest.raises(ScheduleError, match=re.escape(message)):
        resolve_schedule(**kwargs)


def test_settings_refuse_them_before_any_model_loads(tmp_path):
    # RenderSettings itself, not load_settings: no DIRECT2V_* variable or TOML file of another test
    # can reach in (the CLI path with its one-line error is tests/test_bad_inputs.py)
    with pytest.raises(ValidationError, match=re.escape("render.t1=99 must be between 1")):
        RenderSettings(model_dir=tmp_path / "no-model", t1=99)
    with pytest.raises(ValidationError, match=re.escape("render.num_inference_steps=100 is more than render.scheduler=lcm")):
        RenderSettings(scheduler="lcm")
    assert RenderSettings(scheduler="lcm", num_inference_steps=8).resolved_guidance_scale() == 1.0
    assert RenderSettings(scheduler="lcm", num_inference_steps=8, guidance_scale=1.5).resolved_guidance_scale() == 1.5


def readme_schedule_table() -> list[dict]:
    text = README.read_text()
    table = text[text.index("<!-- schedule-table -->"): text.index("<!-- /schedule-table -->")]
    rows = []
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0].isdigit():
            rows.append({"steps": int(cells[0]), "t0": int(cells[1]), "t1": int(cells[2]), "joint": int(cells[3]),
                         "m": int(cells[4]), "visits": float(cells[5])})
    return rows


def test_readme_schedule_table_is_what_the_code_computes():
    rows = readme_schedule_table()
    assert [row["steps"] for row in rows] == [4, 8, 20, 25, 50, 100]
    assert rows == schedule_table([row["steps"] for row in rows], frames=8)


def plan() -> FramePlan:
    return FramePlan(prompt_id="fox", prompt="a fox", fps=2, seed=1, frames=["a fox runs", "a fox stops"])


#: a model directory that is not a shape-world model's: the paper's guidance (12) is its default
REAL_MODEL = Path("models/sd15")


def test_two_ways_of_writing_one_schedule_are_one_video():
    default = RenderSettings(model_dir=REAL_MODEL)
    spelled_out = RenderSettings(model_dir=REAL_MODEL, t0=90, t1=95, rvm_period_steps=4, guidance_scale=12.0)
    assert video_hash(plan(), default, "m@1") == video_hash(plan(), spelled_out, "m@1")
    assert video_hash(plan(), RenderSettings(num_inference_steps=20), "m@1") != video_hash(plan(), default, "m@1")
    # the shape world's default guidance (7.5) is part of the identity as a written one is
    assert video_hash(plan(), RenderSettings(), "m@1") == video_hash(plan(), RenderSettings(guidance_scale=7.5), "m@1")
    assert video_hash(plan(), RenderSettings(), "m@1") != video_hash(plan(), RenderSettings(guidance_scale=12.0), "m@1")


def test_the_video_identity_keeps_its_pre_fraction_form():
    # the keys videos were hashed with before the schedule became relative, with the resolved values:
    # finished videos of earlier runs keep their identity (resume, --reuse-from)
    identity = identity_settings(RenderSettings(model_dir=REAL_MODEL))
    assert (identity["t0"], identity["t1"], identity["rvm_period"], identity["guidance_scale"]) == (90, 95, 4.0, 12.0)
    assert identity_settings(RenderSettings())["guidance_scale"] == 7.5  # the shape world's
    assert not {"t0_fraction", "t1_fraction", "rvm_period_steps", "lora_dir", "lora_scale", "model_dir"} & set(identity)
