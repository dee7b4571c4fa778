"""The CPU lock installs as it is (``scripts/setup.sh``: ``pip install --no-deps -r requirements/cpu.lock``),
so it must hold every pin of ``requirements/cpu.txt`` at the same version, and none of the PyPI
torchvision/torchaudio/torchcodec builds that break transformers beside the CPU torch."""

import re

from conftest import REPO

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;#]+)")


def pins(path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        match = PIN.match(line.strip())
        if match:
            found[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(2)
    return found


def test_the_lock_holds_every_pin_of_the_requirements_at_its_version():
    wanted, locked = pins(REPO / "requirements/cpu.txt"), pins(REPO / "requirements/cpu.lock")
    assert len(wanted) >= 20 and len(locked) >= len(wanted)
    assert {name: version for name, version in wanted.items() if locked.get(name) != version} == {}


def test_the_lock_holds_the_setuptools_that_builds_the_editable_install():
    # pip freeze leaves setuptools out; the venv's own (65.x) cannot read pyproject's SPDX license
    assert pins(REPO / "requirements/cpu.lock").get("setuptools") == "78.1.1"


def test_the_lock_leaves_out_the_torch_companions_that_break_transformers():
    assert {"torchvision", "torchaudio", "torchcodec"} & set(pins(REPO / "requirements/cpu.lock")) == set()


def test_the_pin_reader_reads_extras_and_normalises_names(tmp_path):
    path = tmp_path / "r.txt"
    path.write_text("# a comment\nFoo_Bar.baz[extra]==1.2.3  # why\n-e .\nplain\n")
    assert pins(path) == {"foo-bar-baz": "1.2.3"}
