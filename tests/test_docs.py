"""The documentation's links resolve: every relative link of README.md and docs/*.md names a file of
the repository, and every #anchor a heading of that file (GitHub's slugs)."""

import re
from pathlib import Path

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
