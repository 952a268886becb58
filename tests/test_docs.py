"""The documentation's links resolve: every relative link of README.md and docs/*.md names a file of
the repository, and every #anchor a heading of that file (GitHub's slugs)."""

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"(?ms)^```.*?^```", "", page.read_text())
    return {slug(m) for m in re.findall(r"(?m)^#+ (.+)$", text)}


def test_every_relative_link_and_anchor_of_the_docs_resolves():
    broken = []
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and anchor not in anchors(dest):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken


def test_the_readme_stays_a_door_and_no_comment_cites_notes_outside_the_repository():
    assert len((ROOT / "README.md").read_bytes()) <= 15_000
    cited = [f"{p.relative_to(ROOT)}:{i}" for p in [*ROOT.glob("dgm_dist/**/*.py"), *ROOT.glob("edge/dgm_predict/*.py"),
                                                   *ROOT.glob("bench/*"), *ROOT.glob("tests/**/*.py"),
                                                   *ROOT.glob("tune_spaces/*.yaml"), ROOT / "cluster.yaml"]
             if p.is_file() for i, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"(?<!docs/)\b(papers|stack|DESIGN)\.md\b", line)]
    assert not cited, cited


def test_the_makefile_never_sudoes_and_clean_keeps_the_runs():
    import shutil
    import subprocess

    if not shutil.which("make"):
        pytest.fail("make is needed: the README's two set-up commands are make targets")

    # Run as a top-level make: under `make test` the outer make's MAKEFLAGS (its VENV=…, -w) would
    # reach this one and print "Entering directory" lines into the dry run.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}

    def dry(*targets):
        done = subprocess.run(["make", "--no-print-directory", "-n", "-B", *targets, "VENV=/nonexistent-venv"],
                              cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == 0, done.stderr
        return done.stdout

    data = dry("fashion-mnist")
    assert "sudo" not in data and "dgm-dist data prepare fashion-mnist" in data and "apt-get install" in data
    clean = dry("clean")
    assert "rm -rf" in clean and "runs" not in clean.split()
    assert dry("clean-runs").split() == ["rm", "-rf", "runs"]
    assert "--index-url https://download.pytorch.org/whl/cpu" in dry("setup", "TORCH_INDEX=https://download.pytorch.org/whl/cpu")
