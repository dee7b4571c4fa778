"""The README and docs/ stay connected: every relative link and #anchor resolves, every quoted
reference such as README "Configuration" (in the docs or in the code) names a heading that exists,
every repository path the docs name in backticks exists, and the README stays a front page.

Pure file reading: no services, no models, no imports of the package.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

#: Where code, scripts and settings may point a reader at a heading of the README or a docs page.
CODE_FILES = sorted(
    [path for folder in ("direct2v", "flows", "scripts", "benchmarks", "tests", "prompts_in")
     for pattern in ("*.py", "*.sh", "*.yaml", "*.yml", "*.toml", "*.txt")
     for path in (ROOT / folder).rglob(pattern)
     if path.is_file() and path != Path(__file__).resolve() and "weights" not in path.relative_to(ROOT).parts]
    + [ROOT / "prefect.yaml"]
)

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
#: README "Heading", README.md "A" and "B", docs/x.md "Heading"; also wrapped across comment lines
#: (``README\n  # "Heading"``).
QUOTED_REFERENCE = re.compile(
    r"(?P<file>README(?:\.md)?|docs/[\w.-]+\.md)[\s#]+"
    r"(?P<names>\"[^\"\n]+\"(?:[\s#]*(?:,|and|or)[\s#]*\"[^\"\n]+\")*)")
#: Backticked paths under the repository's own folders, e.g. `direct2v/job/videos.py`.
REPO_PATH = re.compile(r"`((?:direct2v|flows|tests|benchmarks|scripts|requirements|prompts_in|docs)/[^`\s]*)`")
PLACEHOLDER = re.compile(r"[<>*{}]|NNNNN|\bDIR\b|\bKEY\b")


# --- the checker ---------------------------------------------------------------------------------


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks: a `# comment` in a code block is no heading."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def heading_text(raw: str) -> str:
    """A heading as rendered: links by their text, no code or emphasis markers."""
    text = LINK.sub(lambda match: match.group("text"), raw)
    return text.replace("`", "").replace("*", "").strip()


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped except hyphens (and
    underscores, which are word characters), each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", heading_text(heading).lower()).replace(" ", "-")


def headings(path: Path) -> list[str]:
    return [heading_text(match.group(2)) for _, line in prose_lines(path.read_text(encoding="utf-8"))
            if (match := HEADING.match(line))]


def anchors(path: Path) -> set[str]:
    """Every anchor GitHub gives the headings of a Markdown file (a repeated one gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    result = set()
    for heading in headings(path):
        base = slug(heading)
        count = seen.get(base, 0)
        result.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return result


def broken_links(path: Path) -> list[str]:
    """Each relative link of a Markdown file whose file, or #anchor in it, does not exist."""
    problems = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        for match in LINK.finditer(INLINE_CODE.sub("", line)):
            target = match.group("target")
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(ROOT)}:{number}: {target}"
            if not linked.exists():
                problems.append(f"{where}: no such file")
            elif anchor and (linked.suffix != ".md" or anchor not in anchors(linked)):
                problems.append(f"{where}: no heading with anchor #{anchor} in {linked.name}")
    return problems


def quoted_references(path: Path) -> list[tuple[int, str, str]]:
    """(line, target file, heading name) for each README "Heading" / docs/x.md "Heading" in a file."""
    text = path.read_text(encoding="utf-8", errors="replace")
    found = []
    for match in QUOTED_REFERENCE.finditer(text):
        number = text.count("\n", 0, match.start()) + 1
        target = "README.md" if match.group("file").startswith("README") else match.group("file")
        found += [(number, target, name) for name in re.findall(r"\"([^\"\n]+)\"", match.group("names"))]
    return found


def unresolved_references(path: Path) -> list[str]:
    problems = []
    for number, target, name in quoted_references(path):
        target_path = ROOT / target
        names = {heading.lower() for heading in headings(target_path)} if target_path.is_file() else set()
        if name.lower() not in names:
            problems.append(f'{path.relative_to(ROOT)}:{number}: {target} "{name}": no such heading in {target}')
    return problems


# --- the README and docs/ ------------------------------------------------------------------------


def test_docs_exist():
    assert README.is_file() and DOCS, "README.md and docs/*.md"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page):
    assert broken_links(page) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_quoted_references_in_the_docs_name_existing_headings(page):
    assert unresolved_references(page) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_repository_path_named_in_the_docs_exists(page):
    missing = []
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        for named in REPO_PATH.findall(line):
            path = named.split(":")[0].rstrip(".,;")  # flows/dataset.py:generate_dataset
            if not PLACEHOLDER.search(path) and not (ROOT / path).exists():
                missing.append(f"{page.relative_to(ROOT)}:{number}: {named}")
    assert missing == []


def test_every_docs_page_is_linked_from_the_readme_and_links_back():
    readme = README.read_text(encoding="utf-8")
    for page in DOCS:
        assert f"](docs/{page.name})" in readme or f"](docs/{page.name}#" in readme, page.name
        first_lines = "\n".join(page.read_text(encoding="utf-8").splitlines()[:4])
        assert "](../README.md)" in first_lines, f"{page.name} starts without a link back to the README"


def test_readme_is_a_front_page_that_starts_with_the_two_commands():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300
    assert re.match(r"# DirecT2V\n\n```\nbash scripts/run-examples\.sh\nbash scripts/test\.sh\n```\n", text), \
        "README.md must open with the two commands"


def test_the_contact_sheet_is_shown_where_the_shape_world_is_described():
    assert (ROOT / "docs" / "contact-sheet-shapes.png").is_file()
    assert "](contact-sheet-shapes.png)" in (ROOT / "docs" / "shape-world.md").read_text(encoding="utf-8")


# --- the code ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", CODE_FILES, ids=lambda path: str(path.relative_to(ROOT)))
def test_quoted_references_in_the_code_name_existing_headings(path):
    assert unresolved_references(path) == []


# --- the checker itself --------------------------------------------------------------------------


def test_slug_follows_githubs_rule():
    assert slug("Step counts and samplers") == "step-counts-and-samplers"
    assert slug("What the embedded defaults can and cannot show") == "what-the-embedded-defaults-can-and-cannot-show"
    assert slug("CPU or GPU install") == "cpu-or-gpu-install"
    assert slug("Training-ready exports") == "training-ready-exports"
    assert slug("The `direct2v` command, *briefly*!") == "the-direct2v-command-briefly"
    assert slug("Running at scale: 10,000+ lines") == "running-at-scale-10000-lines"
    assert slug("shape_world and [docs](docs/x.md)") == "shape_world-and-docs"


def test_checker_finds_broken_links_anchors_and_references(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text(
        "# Guide\n\n## Step counts\n\n## Step counts\n\n```\n# not a heading\n```\n", encoding="utf-8")
    readme = tmp_path / "README.md"
    readme.write_text(
        "# Project\n\n## Usage\n\n"
        "[fine](docs/guide.md#step-counts) [second](docs/guide.md#step-counts-1) [self](#usage)\n"
        "[web](https://example.com/x#y) `[in code](docs/missing.md)`\n"
        "[no file](docs/missing.md) [no anchor](docs/guide.md#step-count)\n"
        "[code comment](docs/guide.md#not-a-heading) [third](docs/guide.md#step-counts-2)\n"
        'See README "Usage" and docs/guide.md "Step counts"; not README "Missing" or "Gone".\n',
        encoding="utf-8")

    assert anchors(tmp_path / "docs" / "guide.md") == {"guide", "step-counts", "step-counts-1"}
    assert broken_links(readme) == [
        "README.md:7: docs/missing.md: no such file",
        "README.md:7: docs/guide.md#step-count: no heading with anchor #step-count in guide.md",
        "README.md:8: docs/guide.md#not-a-heading: no heading with anchor #not-a-heading in guide.md",
        "README.md:8: docs/guide.md#step-counts-2: no heading with anchor #step-counts-2 in guide.md",
    ]
    assert unresolved_references(readme) == [
        'README.md:9: README.md "Missing": no such heading in README.md',
        'README.md:9: README.md "Gone": no such heading in README.md',
    ]

    code = tmp_path / "module.py"
    code.write_text('"""Settings (README "Configuration"); see docs/guide.md "Step counts"."""\n'
                    '# nested as in a TOML file (README\n# "Configuration" and "Usage")\n', encoding="utf-8")
    assert unresolved_references(code) == ['module.py:1: README.md "Configuration": no such heading in README.md',
                                           'module.py:2: README.md "Configuration": no such heading in README.md']
    readme.write_text(readme.read_text(encoding="utf-8") + "\n## Configuration\n", encoding="utf-8")
    assert unresolved_references(code) == []
