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


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    from direct2v.tiny_clip import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip", seed=0)


#: Hand-written plans for ``rendered_run`` (the second prompt is HTML, to test escaping).
EVAL_PLANS = [
    {"prompt_id": "boat", "prompt": "a boat sails into a storm", "fps": 2, "seed": 1,
     "frames": ["a small boat at dawn on a calm sea", "dark clouds gather over the boat", "the boat in a storm"]},
    {"prompt_id": "fox", "prompt": "a <b>fox</b> & a hare", "fps": 2, "seed": 2,
     "frames": ["a red fox in the snow", "a hare runs <script>alert(1)</script>"]},
]


@pytest.fixture(scope="session")
def rendered_run(tmp_path_factory, tiny_sd_dir) -> Path:
    """A run directory made by ``direct2v render --plans`` (tiny SD, 6 steps). Copy it before changing it."""
    import json
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("rendered")
    plans = root / "plans"
    plans.mkdir()
    for plan in EVAL_PLANS:
        (plans / f"{plan['prompt_id']}.json").write_text(json.dumps(plan))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIRECT2V_")}
    env.update(DIRECT2V_RENDER__MODEL_DIR=str(tiny_sd_dir), DIRECT2V_RENDER__NUM_INFERENCE_STEPS="6",
               DIRECT2V_RENDER__T0="3", DIRECT2V_RENDER__T1="4")
    command = [sys.executable, "-m", "direct2v", "render", "--plans", str(plans), "--out", str(root / "run")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "run"
