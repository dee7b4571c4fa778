"""Shared fixtures: the real local models, built once per session.

The SmolLM2 director directory is the same one the main job uses (``.state/models``), so a
machine that already ran ``direct2v models build`` does not convert it again.
"""

import contextlib
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Tests run offline and on few cores, whatever the caller's environment says. Under pytest-xdist
# (scripts/test.sh runs two workers) the cores are shared out: two workers of two torch threads each
# on two cores spin against each other far more than 2x slower.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
CORES = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
os.environ["OMP_NUM_THREADS"] = str(max(1, CORES // WORKERS))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One vLLM cache for every engine the suite starts, where the product's default state directory puts
# it: a cold cache costs each engine start ~10 s (vLLM inspects the model class in a subprocess of its
# own), and tests give their runs state directories of their own (for a plan cache of their own).
os.environ.setdefault("VLLM_CACHE_ROOT", str(REPO / ".state" / "vllm-cache"))


@contextlib.contextmanager
def state_lock(name: str):
    """A lock across pytest-xdist workers (scripts/test.sh runs two, ``--dist loadfile``):
    ``models`` while a session builds a model under ``.state/models`` (every worker builds into the
    same place, staged in a fixed ``.partial`` directory); ``vllm`` while a real vLLM engine runs
    (test_director_llm, the main job): two engines on these cores starve each other."""
    from filelock import FileLock

    (REPO / ".state").mkdir(exist_ok=True)
    with FileLock(REPO / ".state" / f"{name}.lock"):
        yield


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from direct2v.bundled.models import bundled_smollm2_gguf, convert_gguf_to_hf
    from direct2v.core.config import DEFAULT_LLM_DIR

    path = REPO / DEFAULT_LLM_DIR
    with state_lock("models"):
        if not (path / "config.json").is_file():
            convert_gguf_to_hf(bundled_smollm2_gguf(), path)
    return path


@pytest.fixture(scope="session")
def default_models(smollm2_dir) -> dict[str, Path]:
    """The embedded defaults as ``direct2v models build`` makes them (in ``.state/models``, built
    once per machine): role -> absolute directory."""
    from direct2v.bundled.models import build_default_models
    from direct2v.core.config import DEFAULT_SD_DIR, DEFAULT_SHAPE_DIRECTOR_DIR

    paths = {"director": smollm2_dir, "shape-world director": REPO / DEFAULT_SHAPE_DIRECTOR_DIR,
             "renderer": REPO / DEFAULT_SD_DIR}
    with state_lock("models"):
        build_default_models(llm_dir=paths["director"], shape_director_dir=paths["shape-world director"],
                             sd_dir=paths["renderer"])
    return paths


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory) -> Path:
    from direct2v.bundled.tiny_models import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd", seed=0)


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory) -> Path:
    from direct2v.bundled.tiny_models import build_tiny_sdxl

    return build_tiny_sdxl(tmp_path_factory.mktemp("models") / "tiny-sdxl", seed=0)


@pytest.fixture(scope="session")
def tiny_sd2_dir(tmp_path_factory) -> Path:
    from direct2v.bundled.tiny_models import build_tiny_sd2

    return build_tiny_sd2(tmp_path_factory.mktemp("models") / "tiny-sd2", seed=0)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    from direct2v.bundled.tiny_clip import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip", seed=0)


#: Hand-written plans for ``rendered_run`` (the second prompt is HTML, to test escaping).
EVAL_PLANS = [
    {"prompt_id": "boat", "prompt": "a boat sails into a storm", "fps": 2, "seed": 1,
     "frames": ["a small boat at dawn on a calm sea", "dark clouds gather over the boat", "the boat in a storm"]},
    {"prompt_id": "fox", "prompt": "a <b>fox</b> & a hare", "fps": 2, "seed": 2,
     "frames": ["a red fox in the snow", "a hare runs <script>alert(1)</script>"]},
]


@pytest.fixture(scope="session")
def rendered_run(tmp_path_factory, run_cli, tiny_render_env) -> Path:
    """A run directory made by ``direct2v render --plans`` (tiny SD, 6 steps). Copy it before changing it."""
    import json

    root = tmp_path_factory.mktemp("rendered")
    plans = root / "plans"
    plans.mkdir()
    for plan in EVAL_PLANS:
        (plans / f"{plan['prompt_id']}.json").write_text(json.dumps(plan))
    done = run_cli(["render", "--plans", plans, "--out", root / "run"], tiny_render_env)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "run"


# --- the command line, as a user runs it ----------------------------------------------------------


@contextlib.contextmanager
def prefect_server(home: Path):
    """A self-hosted Prefect server on 127.0.0.1 with its database under ``home``, stopped on exit;
    yields its environment (``PREFECT_API_URL`` set)."""
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DIRECT2V_"))}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false",
               DO_NOT_TRACK="1")
    Path(home).mkdir(parents=True, exist_ok=True)
    log_path = Path(home) / "server.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                   "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        url = f"http://127.0.0.1:{port}/api"
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=2):
                        break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("the Prefect server did not start: " + log_path.read_text()[-2000:]) from None
                    time.sleep(0.5)
            yield {**env, "PREFECT_API_URL": url}
        finally:
            os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn child
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


@pytest.fixture(scope="session")
def cli_env(tmp_path_factory) -> dict[str, str]:
    """The environment every CLI test starts from: the caller's without any DIRECT2V_ or PREFECT_
    setting, and one Prefect server for the whole session (a flow run's own temporary server takes
    10-15 s to start; the main job's test, test_flow's ``main_job``, still uses that path)."""
    with prefect_server(tmp_path_factory.mktemp("prefect")) as env:
        yield {**env, "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="session")
def run_cli(cli_env):
    """``run_cli(args, env=None, cwd=None, timeout=900)``: ``python -m direct2v ARGS`` in ``cli_env``
    plus ``env``, as a fork of one warm process (tests/warm_cli.py says what that changes, and when
    a command runs as a plain subprocess instead)."""
    from warm_cli import WarmCli

    warm = WarmCli(cli_env)
    yield warm.run
    warm.close()


@pytest.fixture(scope="session")
def tiny_render_env(tiny_sd_dir) -> dict[str, str]:
    """Settings for the tiny renderer at a few steps: a video in about a second on a CPU."""
    return {"DIRECT2V_RENDER__MODEL_DIR": str(tiny_sd_dir), "DIRECT2V_RENDER__NUM_INFERENCE_STEPS": "6",
            "DIRECT2V_RENDER__T0": "3", "DIRECT2V_RENDER__T1": "4"}


@pytest.fixture(scope="session")
def pipe(tiny_sd_dir):
    """The tiny SD loaded once as our pipeline (fp32, CPU)."""
    from direct2v.render.pipeline import DirecT2VPipeline

    return DirecT2VPipeline.from_local_dir(tiny_sd_dir)


@pytest.fixture
def dataset_env(tmp_path, tiny_sd_dir, cli_env) -> dict[str, str]:
    """A run of the tiny renderer at 4 steps under ``tmp_path/outputs``, one thread per process."""
    return {**cli_env, "DIRECT2V_OUTPUT_ROOT": str(tmp_path / "outputs"), "DIRECT2V_RENDER__MODEL_DIR": str(tiny_sd_dir),
            "DIRECT2V_RENDER__NUM_INFERENCE_STEPS": "4", "DIRECT2V_RENDER__T0": "1", "DIRECT2V_RENDER__T1": "2",
            "OMP_NUM_THREADS": "1"}


def summary_of(done) -> dict:
    """The run summary a job command printed (it must have succeeded)."""
    import json

    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)
