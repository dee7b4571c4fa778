"""A local diffusers Stable Diffusion 1.x directory: what it must hold, and loading its components.

:func:`missing_model_files` only reads the file system (it imports no torch), so a job can check a
model directory before anything heavy loads; :func:`load_components` loads the pipeline's
components offline, safetensors only.
"""

from __future__ import annotations

from pathlib import Path

_DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json")

#: Files each component subfolder must hold; one name of each inner tuple is enough.
REQUIRED_FILES: dict[str, tuple[tuple[str, ...], ...]] = {
    "unet": (("config.json",), _DIFFUSERS_WEIGHTS),
    "vae": (("config.json",), _DIFFUSERS_WEIGHTS),
    "text_encoder": (("config.json",), ("model.safetensors", "model.safetensors.index.json")),
    "tokenizer": (("tokenizer.json", "vocab.json"), ("tokenizer.json", "merges.txt")),
    "scheduler": (("scheduler_config.json",),),
}


def missing_model_files(root: Path) -> list[str]:
    """The REQUIRED_FILES a local diffusers SD directory lacks (empty = complete)."""
    return [
        f"{component}/{' or '.join(names)}"
        for component, groups in REQUIRED_FILES.items()
        for names in groups
        if not any((Path(root) / component / name).is_file() for name in names)
    ]


def load_components(path: str | Path, torch_dtype) -> dict:
    """The ``vae``, ``text_encoder``, ``tokenizer``, ``unet`` and (PNDM) ``scheduler`` of a local
    diffusers SD 1.x directory, loaded offline and safetensors only, weights in ``torch_dtype``.

    Raises:
        FileNotFoundError: the directory, a component subfolder or a required file is missing
            (the message lists every missing item).
    """
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"model directory not found: {root}")
    missing = missing_model_files(root)
    if missing:
        raise FileNotFoundError(
            f"{root} is not a complete diffusers Stable Diffusion directory; missing: {', '.join(missing)}"
        )
    local = {"local_files_only": True, "use_safetensors": True}
    return {
        "vae": AutoencoderKL.from_pretrained(root, subfolder="vae", torch_dtype=torch_dtype, **local),
        "text_encoder": CLIPTextModel.from_pretrained(root, subfolder="text_encoder", dtype=torch_dtype, **local),
        "tokenizer": CLIPTokenizer.from_pretrained(root, subfolder="tokenizer", local_files_only=True),
        "unet": UNet2DConditionModel.from_pretrained(root, subfolder="unet", torch_dtype=torch_dtype, **local),
        "scheduler": PNDMScheduler.from_pretrained(root, subfolder="scheduler", local_files_only=True),
    }
