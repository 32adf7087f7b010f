"""The documents: generated pages match the code, the README stays short and its links resolve."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field

from normbench import docgen

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_MAX_CHARS = 15_000


def test_generated_docs_are_current():
    stale = [str(path.relative_to(ROOT)) for path in docgen.stale_files(ROOT)]
    assert not stale, f"stale generated docs {stale}: run `make docs` (python -m normbench.docgen)"


def test_check_exits_1_and_names_a_stale_file(tmp_path, capsys):
    begin, end = docgen.README_MARKERS
    (tmp_path / "README.md").write_text(f"# intro\n{begin}\nold list\n{end}\nthe rest\n", encoding="utf-8")
    assert docgen.main(["--check", "--root", str(tmp_path)]) == 1
    assert docgen.main(["--root", str(tmp_path)]) == 0
    assert docgen.main(["--check", "--root", str(tmp_path)]) == 0
    readme = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert readme.startswith("# intro\n") and readme.endswith("the rest\n") and "| `batch` |" in readme
    (tmp_path / "docs" / "norms.md").write_text("old\n", encoding="utf-8")
    capsys.readouterr()
    assert docgen.main(["--check", "--root", str(tmp_path)]) == 1
    assert "norms.md" in capsys.readouterr().err


def test_readme_is_short():
    assert len(README.read_text(encoding="utf-8")) <= README_MAX_CHARS


def linked_docs(path: Path) -> set[str]:
    """The docs/*.md paths a markdown file names (links and plain mentions), relative to the repo root."""
    text = path.read_text(encoding="utf-8")
    base = path.parent.relative_to(ROOT)
    found = {m for m in re.findall(r"\b(docs/[\w./-]+?\.md)\b", text)}
    found |= {str((base / m).as_posix()) for m in re.findall(r"\]\(([\w./-]+?\.md)(?:#[\w-]*)?\)", text) if "://" not in m}
    return {str(Path(p)) for p in found}


def test_every_docs_page_the_readme_names_exists():
    missing = sorted(p for p in linked_docs(README) if not (ROOT / p).is_file())
    assert not missing, f"README links to missing pages: {missing}"


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a markdown file (code blocks skipped)."""
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    headings = re.findall(r"^#+ (.+)$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_anchors_in_links_exist():
    pages = [README, *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target, anchor in re.findall(r"\]\(([\w./-]*?\.md)?#([\w-]+)\)", page.read_text(encoding="utf-8")):
            linked = (page.parent / target) if target else page
            if linked.is_file() and anchor not in anchors(linked):
                broken.append(f"{page.name} -> {target}#{anchor}")
    assert not broken, f"links to missing headings: {broken}"


def test_links_between_docs_pages_resolve():
    pages = sorted((ROOT / "docs").glob("*.md"))
    missing = sorted(f"{page.name} -> {p}" for page in pages for p in linked_docs(page)
                     if p.startswith("docs/") and not (ROOT / p).is_file())
    assert not missing, f"broken links: {missing}"


class _Section(BaseModel):
    """A section added later."""

    depth: int = Field(3, ge=1, le=8, description="how deep")


class _Config(BaseModel):
    width: float | None = Field(None, gt=0, description="a key added later")
    extra: _Section | None = None


def test_a_new_config_key_appears_without_editing_the_generator():
    text = docgen.render_config(_Config, {})
    assert "| `width` | float > 0 or null | `null` | a key added later |" in text
    assert "| `extra` | mapping or null | `null` | A section added later. |" in text
    assert "| `extra.depth` | int ≥ 1, ≤ 8 | `3` | how deep |" in text


@dataclass(frozen=True)
class _Spec:
    name: str
    summary: str
    batch_dependent: bool
    options: str
    novelty: str
    build: object = print


def test_a_new_norm_and_a_new_spec_field_appear_without_editing_the_generator():
    registry = {"newnorm": _Spec("newnorm", "a norm added later", False, "eps", "a field added later")}
    text = docgen.render_norms(registry)
    assert "| [`newnorm`](#newnorm) | a norm added later | no | eps |" in text
    assert "### `newnorm`" in text and "- **novelty**: a field added later" in text
    assert "| `newnorm` | a norm added later | no |" in docgen.render_readme_norms(registry)


def test_results_format_names_every_column_the_code_writes():
    from normbench.bench.vs_plain import BENCH_COLUMNS
    from normbench.bench.pack import PACK_COLUMNS
    from normbench.results import EPOCH_COLUMNS, STATUSES, STEP_COLUMNS
    from normbench.sweep.plan import INDEX_TAIL
    from normbench.train.probe import PROBE_COLUMNS
    from normbench.train.saved import EVAL_COLUMNS

    text = (ROOT / "docs" / "results-format.md").read_text(encoding="utf-8")
    names = {*STEP_COLUMNS, *EPOCH_COLUMNS, *PROBE_COLUMNS, *INDEX_TAIL, *BENCH_COLUMNS, *PACK_COLUMNS, *STATUSES, *EVAL_COLUMNS}
    missing = sorted(name for name in names if not re.search(rf"\b{re.escape(name)}\b", text))
    assert not missing, f"docs/results-format.md does not name {missing}"
