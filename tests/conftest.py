"""Shared fixtures: the real local models, built once per session.

The SmolLM2 director directory is the same one the main job uses (``.state/models``), so a
machine that already ran ``direct2v models build`` does not convert it again.
"""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Tests run offline and on few cores, whatever the caller's environment says.
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from direct2v.config import DEFAULT_LLM_DIR
    from direct2v.models import bundled_smollm2_gguf, convert_gguf_to_hf

    path = REPO / DEFAULT_LLM_DIR
    if not (path / "config.json").is_file():
        convert_gguf_to_hf(bundled_smollm2_gguf(), path)
    return path


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory) -> Path:
    from direct2v.tiny_models import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd", seed=0)
