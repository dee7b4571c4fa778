"""Settings: defaults, environment and TOML overrides, and errors that name the key."""

import math

import pytest

from direct2v.cli.common import UserError, parse_overrides
from direct2v.core.config import ConfigError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in list(__import__("os").environ):
        if key.startswith("DIRECT2V_"):
            monkeypatch.delenv(key)


def test_defaults_follow_the_paper():
    settings = load_settings()
    assert settings.render.num_inference_steps == 100
    schedule = settings.render.schedule()
    assert (schedule.t0, schedule.t1, schedule.period, schedule.joint_steps) == (90, 95, 4, 96)


def test_guidance_is_the_papers_for_a_real_model_and_the_measured_one_for_the_shape_world(tmp_path):
    real, trained = tmp_path / "sd15", tmp_path / "trained"
    real.mkdir(), trained.mkdir()
    (trained / "TRAINING.json").write_text('{"command": "python -m direct2v models train-shapes"}')
    assert load_settings(render={"model_dir": real}).render.resolved_guidance_scale() == 12.0
    assert load_settings().render.resolved_guidance_scale() == 7.5  # the embedded shape-world model
    assert load_settings(render={"model_dir": trained}).render.resolved_guidance_scale() == 7.5
    assert load_settings(render={"model_dir": trained, "scheduler": "lcm", "num_inference_steps": 4}
                         ).render.resolved_guidance_scale() == 1.0
    assert load_settings(render={"guidance_scale": 9.0}).render.resolved_guidance_scale() == 9.0  # given: kept


def test_env_then_overrides(monkeypatch):
    monkeypatch.setenv("DIRECT2V_RENDER__NUM_INFERENCE_STEPS", "20")
    monkeypatch.setenv("DIRECT2V_RENDER__T0", "10")
    monkeypatch.setenv("DIRECT2V_RENDER__T1", "12")
    settings = load_settings(frames=4, render={"rvm_period": "inf"})
    assert settings.render.num_inference_steps == 20 and settings.frames == 4
    assert math.isinf(settings.render.rvm_period) and settings.render.t0 == 10


def test_toml_file(tmp_path, monkeypatch):
    path = tmp_path / "c.toml"
    path.write_text('fps = 4\n[render]\nguidance_scale = 7.5\n')
    settings = load_settings(path)
    assert settings.fps == 4 and settings.render.guidance_scale == 7.5


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"frames": 1}, "frames"),
        ({"render": {"num_inference_steps": 10, "t0": 9}}, "render.t0=9 must be at least 0 and below render.t1=8"),
        ({"render": {"rvm_period": 2.5}}, "rvm_period"),
        ({"render": {"colour": "red"}}, "render.colour"),
        ({"director": {"temperature": -1}}, "director.temperature"),
    ],
)
def test_bad_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings(**overrides)


def test_bad_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "none.toml")
    path = tmp_path / "bad.toml"
    path.write_text("fps = \n")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_settings(path)


def test_cli_set_overrides():
    assert parse_overrides(["render.t0=3", "fps=4"], frames=6, seed=None) == {
        "frames": 6, "render": {"t0": "3"}, "fps": "4"
    }
    with pytest.raises(UserError, match="KEY=VALUE"):
        parse_overrides(["render.t0"])
