"""The DSF cost benchmark (benchmarks/dsf_cost.py) runs, small, on a CPU: the device check runs it on a GPU
once, where a Python error would cost the lent minutes, so its code paths are exercised here."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO


def dsf_cost(*args: str) -> str:
    done = subprocess.run([sys.executable, "benchmarks/dsf_cost.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def table(stdout: str) -> list[list[str]]:
    """The rows of the printed markdown table, header and separator left out."""
    lines = [line for line in stdout.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


def test_the_render_table_gives_each_variant_and_ratios_from_its_own_seconds():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from dsf_cost import VARIANTS
    finally:
        sys.path.pop(0)
    variants = ["t2vz", "rvm", "rvm-dsf"]
    rows = table(dsf_cost("--size", "64", "--frames", "4", "--steps", "2", "--t0", "0", "--t1", "1",
                          "--variants", *variants))
    assert [row[0] for row in rows] == [VARIANTS[v] for v in variants]
    seconds = {v: float(row[1]) for v, row in zip(variants, rows)}
    assert all(s > 0 for s in seconds.values())

    def ratio(a: str, b: str) -> object:  # all printed to two decimals: the ratio within both roundings
        value = seconds[a] / seconds[b]
        return pytest.approx(value, abs=value * (0.005 / seconds[a] + 0.005 / seconds[b]) + 0.0051)

    for variant, row in zip(variants, rows):
        assert float(row[2]) == ratio(variant, "t2vz") and float(row[3]) == ratio(variant, "rvm")
        assert row[4].endswith(" GiB") and float(row[4].split()[0]) > 0  # the child's resident set
        assert float(row[5]) > 0  # the warm-up render's seconds
    assert rows[0][2] == "1.00" and rows[1][3] == "1.00"


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_the_layer_table_times_every_step(dtype):
    stdout = dsf_cost("--layer", "--shape", "1", "2", "2", "64", "8", "--dtype", dtype)
    assert f"(1, 2, 2, 64, 8), cpu {dtype}" in stdout
    rows = table(stdout)
    names = [row[0] for row in rows]
    assert all(float(row[1]) > 0 for row in rows), rows  # every step timed: none failed, none rounded to 0
    assert "the whole RVM self-attention" in names and "the whole RVM + DSF self-attention, stock kernels" in names
    # float32 on CPU: our kernels beside the stock calls; half precision: the float32 copies of before
    one_pass = [name for name in names if name.startswith("one-pass CPU kernel")]
    unpadded = [name for name in names if name.endswith("unpadded: our CPU kernel")]
    before = [name for name in names if name.endswith("(before)")]
    assert (len(one_pass), len(unpadded), len(before)) == ((1, 1, 0) if dtype == "float32" else (0, 0, 3))
