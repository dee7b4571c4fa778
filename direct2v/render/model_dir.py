"""A local diffusers model directory: which architecture it is, what it must hold, loading its components.

The architecture is what the directory's ``model_index.json`` says (``_class_name``), never guessed
from tensor sizes: ``StableDiffusionPipeline`` (SD 1.x and 2.x, one CLIP text encoder) or
``StableDiffusionXLPipeline`` (SDXL, two). :func:`read_architecture` and :func:`missing_model_files`
only read the file system (they import no torch), so a job can check a model directory before
anything heavy loads; :func:`load_components` loads the pipeline's components offline, safetensors
only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

_DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json")
_TRANSFORMERS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
_TOKENIZER = (("tokenizer.json", "vocab.json"), ("tokenizer.json", "merges.txt"))

MODEL_INDEX = "model_index.json"


class ModelDirError(ValueError):
    """A directory is not a diffusers model this renderer can run (the message says why, in one line)."""


@dataclass(frozen=True)
class Architecture:
    """One model family the renderer runs.

    Attributes:
        name: the short name rows and reports use (``sd``, ``sdxl``).
        label: what a person calls it.
        required: files each component subfolder must hold; one name of each inner tuple is enough.
    """

    name: str
    label: str
    required: dict[str, tuple[tuple[str, ...], ...]]


SD = Architecture("sd", "Stable Diffusion 1.x / 2.x", {
    "unet": (("config.json",), _DIFFUSERS_WEIGHTS),
    "vae": (("config.json",), _DIFFUSERS_WEIGHTS),
    "text_encoder": (("config.json",), _TRANSFORMERS_WEIGHTS),
    "tokenizer": _TOKENIZER,
    "scheduler": (("scheduler_config.json",),),
})
SDXL = Architecture("sdxl", "Stable Diffusion XL", {
    **SD.required,
    "text_encoder_2": (("config.json",), _TRANSFORMERS_WEIGHTS),
    "tokenizer_2": _TOKENIZER,
})

#: ``model_index.json``'s ``_class_name`` -> the architecture it is. Text2Video-Zero's pipelines save the
#: same components under their own class names.
ARCHITECTURES: dict[str, Architecture] = {
    "StableDiffusionPipeline": SD,
    "TextToVideoZeroPipeline": SD,
    "StableDiffusionXLPipeline": SDXL,
    "TextToVideoZeroSDXLPipeline": SDXL,
}
SUPPORTED = "StableDiffusionPipeline (SD 1.x, SD 2.x) and StableDiffusionXLPipeline (SDXL)"

#: Files each SD 1.x/2.x component subfolder must hold (the layout every test model and the defaults have).
REQUIRED_FILES = SD.required


def read_architecture(root: Path) -> Architecture:
    """The architecture ``root``'s ``model_index.json`` names.

    Raises:
        ModelDirError: no ``model_index.json``, one that is not JSON, or a pipeline class this
            renderer does not run (a transformer denoiser such as SD3, Flux or PixArt; an SDXL
            refiner): one line naming what is supported.
    """
    index = Path(root) / MODEL_INDEX
    try:
        class_name = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
    except FileNotFoundError:
        raise ModelDirError(f"{root} has no {MODEL_INDEX}: not a diffusers pipeline directory "
                            "(save one with the pipeline's save_pretrained)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as error:
        raise ModelDirError(f"{index} cannot be read as a diffusers model index ({error})") from None
    if class_name not in ARCHITECTURES:
        raise ModelDirError(f"{root} is a {class_name or 'pipeline of no named class'}, which this renderer does not "
                            f"run; it runs {SUPPORTED}")
    return ARCHITECTURES[class_name]


def missing_model_files(root: Path, architecture: Architecture = SD) -> list[str]:
    """The required files a local diffusers directory of ``architecture`` lacks (empty = complete)."""
    return [
        f"{component}/{' or '.join(names)}"
        for component, groups in architecture.required.items()
        for names in groups
        if not any((Path(root) / component / name).is_file() for name in names)
    ]


def check_model_dir(root: Path) -> Architecture:
    """The architecture of a complete model directory ``root``.

    Raises:
        FileNotFoundError: ``root`` is not a directory, or lacks required files (all of them named).
        ModelDirError: as :func:`read_architecture`.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"model directory not found: {root}")
    architecture = read_architecture(root)
    missing = missing_model_files(root, architecture)
    if missing:
        raise FileNotFoundError(f"{root} is not a complete diffusers {architecture.label} directory "
                                f"(safetensors only); missing: {', '.join(missing)}")
    return architecture


def read_index(root: Path) -> dict:
    """``model_index.json`` as a dict (its pipeline-level options: SDXL's ``force_zeros_for_empty_prompt``)."""
    return json.loads((Path(root) / MODEL_INDEX).read_text(encoding="utf-8"))


def load_components(path: str | Path, torch_dtype) -> tuple[Architecture, dict]:
    """The architecture of a local diffusers directory and its components, loaded offline and
    safetensors only, weights in ``torch_dtype``: ``vae``, ``text_encoder``, ``tokenizer``, ``unet``,
    the scheduler as PNDM (the paper's sampler, built from the directory's scheduler config), and for
    SDXL ``text_encoder_2`` (with projection), ``tokenizer_2`` and ``force_zeros_for_empty_prompt``.

    Raises:
        FileNotFoundError: the directory, a component subfolder or a required file is missing
            (the message lists every missing item).
        ModelDirError: an unsupported or unreadable ``model_index.json``.
    """
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    root = Path(path)
    architecture = check_model_dir(root)
    local = {"local_files_only": True, "use_safetensors": True}
    components = {
        "vae": AutoencoderKL.from_pretrained(root, subfolder="vae", torch_dtype=torch_dtype, **local),
        "text_encoder": CLIPTextModel.from_pretrained(root, subfolder="text_encoder", dtype=torch_dtype, **local),
        "tokenizer": CLIPTokenizer.from_pretrained(root, subfolder="tokenizer", local_files_only=True),
        "unet": UNet2DConditionModel.from_pretrained(root, subfolder="unet", torch_dtype=torch_dtype, **local),
        "scheduler": PNDMScheduler.from_pretrained(root, subfolder="scheduler", local_files_only=True),
    }
    if architecture is SDXL:
        components["text_encoder_2"] = CLIPTextModelWithProjection.from_pretrained(
            root, subfolder="text_encoder_2", dtype=torch_dtype, **local)
        components["tokenizer_2"] = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer_2", local_files_only=True)
        components["force_zeros_for_empty_prompt"] = bool(read_index(root).get("force_zeros_for_empty_prompt", True))
    return architecture, components


#: How many of the highest-resolution decoder stages with attention get RVM by default: the authors put
#: it on SD 1.x's up_blocks.2/.3 (32 and 64 latent pixels at 512 px), the last two of its three
#: attention up blocks. The same rule picks SDXL's up_blocks.0/.1 (32 and 64 latent pixels at 1024 px).
DEFAULT_RVM_STAGES = 2


def default_rvm_blocks(up_block_types: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The up blocks ``render.rvm_blocks="up"`` means for a UNet with these ``up_block_types``: the
    ``DEFAULT_RVM_STAGES`` highest-resolution decoder stages that have attention (SD 1.x/2.x:
    ``up_blocks.2``, ``up_blocks.3``; SDXL: ``up_blocks.0``, ``up_blocks.1``)."""
    with_attention = [f"up_blocks.{i}" for i, kind in enumerate(up_block_types) if "Attn" in kind]
    return tuple(with_attention[-DEFAULT_RVM_STAGES:])


def attention_blocks(root: Path) -> list[str]:
    """The UNet blocks of ``root`` that hold attention layers (``down_blocks.1``, ``mid_block``,
    ``up_blocks.0``...), read from ``unet/config.json``: what ``render.rvm_blocks`` may name."""
    config = json.loads((Path(root) / "unet" / "config.json").read_text(encoding="utf-8"))
    down = [f"down_blocks.{i}" for i, kind in enumerate(config.get("down_block_types", [])) if "Attn" in kind]
    mid = ["mid_block"] if "Attn" in str(config.get("mid_block_type") or "UNetMidBlock2DCrossAttn") else []
    up = [f"up_blocks.{i}" for i, kind in enumerate(config.get("up_block_types", [])) if "Attn" in kind]
    return down + mid + up
