"""Tuning a shape-world model's decoder: only the decoder changes (so the UNet's latent space is
kept), the result loads as the model did, a resumed run is the uninterrupted run, and a checkpoint of
another model or other settings is refused in one line."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from direct2v.cli import app
from direct2v.cli.common import UserError
from direct2v.core.training import CheckpointError
from direct2v.render import model_dir as model_dirs
from direct2v.shape_world.decoder_tuning import DecoderTuneConfig, DecoderTuner, tune_decoder
from direct2v.shape_world.training import TrainConfig, train

TINY_MODEL = {"num_images": 64, "vae_steps": 2, "unet_steps": 2, "vae_batch": 4, "unet_batch": 4, "warmup": 1,
              "checkpoint_every": 100}
TINY = {"num_images": 64, "steps": 4, "batch": 4, "warmup": 1, "checkpoint_every": 100}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-shape-model")
    return train(TrainConfig(**TINY_MODEL), root / "model", root / "work", echo=lambda line: None)


def _tensors(directory, component):
    return load_file(next((directory / component).glob("*.safetensors")))


def test_only_the_decoder_changes_and_the_model_loads_as_before(tiny_model, tmp_path):
    out = tune_decoder(DecoderTuneConfig(**TINY), tiny_model, tmp_path / "tuned", tmp_path / "work",
                       echo=lambda line: None)

    for component in ("unet", "text_encoder"):
        before, after = _tensors(tiny_model, component), _tensors(out, component)
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    before, after = _tensors(tiny_model, "vae"), _tensors(out, "vae")
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert changed and all(key.startswith(("decoder.", "post_quant_conv.")) for key in changed)
    assert any(key.startswith("decoder.") for key in changed)

    assert (out / "vae" / "config.json").read_text() == (tiny_model / "vae" / "config.json").read_text()
    record = json.loads((out / "TRAINING.json").read_text())
    assert record["config"]["unet_steps"] == TINY_MODEL["unet_steps"]  # the model's own provenance, kept
    assert record["decoder_tuning"]["config"]["steps"] == TINY["steps"]
    _, components = model_dirs.load_components(out, torch.float32)  # the renderer's own loader
    assert components["vae"].config.scaling_factor == json.loads((tiny_model / "vae" / "config.json").read_text())[
        "scaling_factor"]


def test_a_resumed_run_is_the_uninterrupted_run(tiny_model, tmp_path):
    config = DecoderTuneConfig(**TINY)
    straight = DecoderTuner(config, tiny_model, tmp_path / "straight")
    for step in range(config.steps):
        straight.step(step)

    first = DecoderTuner(config, tiny_model, tmp_path / "resumed")
    for step in range(2):
        first.step(step)
        first.next_step = step + 1
    first.save_checkpoint()
    resumed = DecoderTuner(config, tiny_model, tmp_path / "resumed")
    assert resumed.load_checkpoint() and resumed.next_step == 2
    for step in range(2, config.steps):
        resumed.step(step)

    expected, got = straight.vae.state_dict(), resumed.vae.state_dict()
    assert all(torch.equal(expected[key], got[key]) for key in expected)


def test_a_checkpoint_of_other_settings_or_another_model_is_refused(tiny_model, tmp_path):
    DecoderTuner(DecoderTuneConfig(**TINY), tiny_model, tmp_path / "work").save_checkpoint()
    with pytest.raises(CheckpointError, match="other settings"):
        other_settings = DecoderTuneConfig(**{**TINY, "latent_noise": 0.2})
        DecoderTuner(other_settings, tiny_model, tmp_path / "work").load_checkpoint()

    other = train(TrainConfig(**{**TINY_MODEL, "seed": 1}), tmp_path / "other", tmp_path / "other-work",
                  echo=lambda line: None)
    with pytest.raises(CheckpointError, match="another model's decoder"):
        DecoderTuner(DecoderTuneConfig(**TINY), other, tmp_path / "work").load_checkpoint()


def test_the_command_line_refuses_a_bad_option_and_a_missing_model_in_one_line(tmp_path):
    runner = CliRunner()
    bad = runner.invoke(app, ["models", "tune-decoder", "--model-dir", str(tmp_path), "--out", str(tmp_path / "o"),
                              "--latent-noise", "-1"])
    assert isinstance(bad.exception, UserError) and "--latent-noise" in str(bad.exception)
    missing = runner.invoke(app, ["models", "tune-decoder", "--model-dir", str(tmp_path / "nowhere"),
                                  "--out", str(tmp_path / "o"), "--work-dir", str(tmp_path / "w")])
    assert isinstance(missing.exception, UserError) and "not a shape-world model directory" in str(missing.exception)
    assert not (tmp_path / "o").exists()


def test_a_model_whose_decoder_is_already_tuned_is_refused(tiny_model, tmp_path):
    tuned = tune_decoder(DecoderTuneConfig(**TINY), tiny_model, tmp_path / "tuned", tmp_path / "work",
                         echo=lambda line: None)
    again = CliRunner().invoke(app, ["models", "tune-decoder", "--model-dir", str(tuned), "--out", str(tmp_path / "o"),
                                     "--work-dir", str(tmp_path / "w2")])
    assert isinstance(again.exception, UserError) and "already tuned" in str(again.exception)
    assert not (tmp_path / "o").exists() and not (tmp_path / "w2").exists()
