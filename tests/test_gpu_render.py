"""The prepared GPU check (benchmarks/gpu_render.py) runs on a CPU with --tiny: same code, tiny model."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys

import pytest
from conftest import REPO

VARIANTS = ["t2vz", "rvm", "rvm_dsf", "rvm_dsf_compiled", "long"]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("gpu_render") / "report.json"
    done = subprocess.run([sys.executable, "benchmarks/gpu_render.py", "--tiny", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| rvm_dsf_compiled |" in done.stdout and "| target |" in done.stdout  # the printed table
    return json.loads(out.read_text())


def test_every_variant_is_measured_and_healthy(report):
    assert list(report["variants"]) == VARIANTS
    for name, row in report["variants"].items():
        assert row["s_per_video"] > 0 and row["s_per_frame"] == pytest.approx(row["s_per_video"] / row["frames"])
        assert row["nan"] is False and row["black_frames"] == []
        assert row["peak_gib"] is None  # not measured off CUDA, and so said
        assert row["unet_calls"] > 0 and row["s_per_step"] == pytest.approx(row["s_per_video"] / row["unet_calls"])
    assert report["variants"]["long"]["frames"] == 8 and report["variants"]["rvm"]["frames"] == 4
    compiled = report["variants"]["rvm_dsf_compiled"]
    assert compiled["recompiles"] == 0 and compiled["compile_failure"] is None and compiled["compile_s"] > 0


def test_every_ratio_and_target_comes_from_the_measured_numbers(report):
    rows, summary = report["variants"], report["summary"]
    for row in rows.values():
        assert row["ratio_to_t2vz"] == pytest.approx(row["s_per_video"] / rows["t2vz"]["s_per_video"])
    assert summary["s_per_video"] == rows["rvm_dsf_compiled"]["s_per_video"]
    assert summary["dsf_over_rvm"] == pytest.approx(rows["rvm_dsf"]["s_per_video"] / rows["rvm"]["s_per_video"])
    assert summary["long_time_per_frame_ratio"] == pytest.approx(
        rows["long"]["s_per_frame"] / rows["rvm_dsf"]["s_per_frame"])
    assert summary["peak_gib"] is None and summary["long_peak_ratio"] is None  # memory: CUDA only
    for target in report["targets"]:
        value = target["value"]
        assert target["met"] is (None if value is None else value <= target["limit"])
    assert len(report["targets"]) == 6


def assert_none_imports_what_the_gpu_image_lacks(modules: list[str]) -> None:
    """Every direct2v module the check imported imports no prefect, vllm, pydantic or pyarrow."""
    for name in modules:
        source = importlib.util.find_spec(name).origin
        tree = ast.parse(open(source, encoding="utf-8").read())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not {module.split(".")[0] for module in imported} & {"prefect", "vllm", "pydantic", "pyarrow"}, name


def test_the_check_needs_none_of_the_packages_the_gpu_image_lacks(report):
    assert "direct2v.render.pipeline" in report["direct2v_modules"]
    assert_none_imports_what_the_gpu_image_lacks(report["direct2v_modules"])


def test_the_sdxl_rows_run_beside_diffusers_text2video_zero_sdxl(tmp_path):
    out = tmp_path / "sdxl.json"
    done = subprocess.run([sys.executable, "benchmarks/gpu_render.py", "--tiny", "--sdxl", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| sdxl_rvm_dsf |" in done.stdout
    report = json.loads(out.read_text())
    assert report["architecture"] == "tiny-sdxl" and list(report["variants"]) == ["sdxl_t2vz", "sdxl_rvm_dsf"]
    rows = report["variants"]
    for row in rows.values():
        assert row["s_per_video"] > 0 and row["unet_calls"] > 0 and not row["nan"] and row["black_frames"] == []
    assert rows["sdxl_rvm_dsf"]["ratio_to_t2vz"] == pytest.approx(
        rows["sdxl_rvm_dsf"]["s_per_video"] / rows["sdxl_t2vz"]["s_per_video"])
    assert "direct2v.render.pipeline_xl" in report["direct2v_modules"]
    assert_none_imports_what_the_gpu_image_lacks(report["direct2v_modules"])
