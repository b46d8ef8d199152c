"""The package's shape: imports point down the layers, no logic written twice, and every
documentation citation in the code points at a page and heading of this repository."""
import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "harness"

# Lower numbers are lower layers; a module may import its own layer and those below. run and
# bench are siblings: neither imports the other; so are report and api (the Python API).
LAYERS = {"core": 0, "programs": 1, "tasks": 2, "methods": 3, "eval": 4, "run": 5, "bench": 5, "report": 6, "api": 6,
          "cli": 7}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "harness" or len(parts) < 2:
        return None
    return parts[1]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def harness_imports(path: Path):
    """(line, imported module) for every import of the package in `path`, at any depth."""
    tree = ast.parse(path.read_text())
    pkg = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("harness"):
                    yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("harness"):
                if mod == "harness" or mod.count(".") == 0:
                    for a in node.names:  # `from harness import core` names a layer
                        yield node.lineno, f"harness.{a.name}"
                else:
                    yield node.lineno, mod


def modules():
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_sits_in_a_layer():
    for p in modules():
        name = module_name(p)
        assert name == "harness" or layer_of(name) in LAYERS, f"{name} is in no layer: add it to LAYERS or move it"


def test_no_import_points_up():
    bad = []
    for p in modules():
        here = layer_of(module_name(p))
        if here is None:
            continue
        for line, mod in harness_imports(p):
            if mod == "harness":  # the package root: its __init__ holds the version and imports nothing
                continue
            there = layer_of(mod)
            assert there in LAYERS, f"{p}:{line} imports {mod}, which is in no layer"
            if LAYERS[there] > LAYERS[here] or (there != here and LAYERS[there] == LAYERS[here]):
                bad.append(f"{p.relative_to(ROOT)}:{line} ({here}) imports {mod} ({there})")
    assert not bad, "imports that point up or sideways:\n" + "\n".join(bad)


def test_the_layer_check_catches_an_upward_import(tmp_path, monkeypatch):
    """The walk above sees function-level and relative imports (else the test proves nothing)."""
    fake = tmp_path / "harness" / "core"
    fake.mkdir(parents=True)
    (fake / "x.py").write_text("def f():\n    from ..methods import registry\n    import harness.report.render\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    got = [m for _, m in harness_imports(fake / "x.py")]
    assert got == ["harness.methods", "harness.report.render"]


# ----- no logic written twice ----------------------------------------------------------------------
WINDOW = 6
DATA_MODULES = {"harness/tasks/data_lists.py", "harness/report/published.py"}  # tables, not logic


def logic_lines(path: Path):
    """(line number, normalised text) of the lines that carry logic: no blank lines, comments,
    docstrings, imports or lone brackets; names kept, white space folded."""
    src = path.read_text()
    doc_lines = set()
    for node in ast.walk(ast.parse(src)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                and isinstance(body[0].value.value, str):
            doc_lines.update(range(body[0].lineno, body[0].end_lineno + 1))
    out = []
    for i, line in enumerate(src.splitlines(), 1):
        t = re.sub(r"\s+", " ", line.split("#", 1)[0]).strip()
        if not t or i in doc_lines or t.startswith(("import ", "from ")) or re.fullmatch(r"[\[\](){}:,]+", t):
            continue
        out.append((i, t))
    return out


def test_no_logic_written_twice():
    seen = defaultdict(list)
    for p in modules():
        rel = str(p.relative_to(ROOT))
        if rel in DATA_MODULES:
            continue
        lines = logic_lines(p)
        for k in range(len(lines) - WINDOW + 1):
            chunk = tuple(t for _, t in lines[k : k + WINDOW])
            seen[chunk].append(f"{rel}:{lines[k][0]}")
    twice = {c: where for c, where in seen.items() if len(where) > 1}
    assert not twice, "the same 6 lines of logic stand in more than one place:\n" + "\n".join(
        " and ".join(where) + "\n    " + "\n    ".join(c) for c, where in list(twice.items())[:5])


# ----- citations ------------------------------------------------------------------------------------
def anchors(page: Path) -> set:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in page.read_text().splitlines():
        m = re.match(r"#{1,6} (.+)", line)
        if m:
            out.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return out


CITED = sorted({p for d in ("harness", "tests", "benchmarks", "ground_truth") for p in (ROOT / d).rglob("*")
                if p.suffix in (".py", ".json") and "__pycache__" not in p.parts and p != Path(__file__).resolve()})


def test_citations_point_at_pages_here():
    missing = []
    for p in CITED:
        text = p.read_text()
        for gone in ("acdc-tasks.md", "peers-and-methods.md", "tracr-and-analogues.md", "where-to-read.md"):
            assert gone not in text, f"{p} cites {gone}, which is not in this repository (use docs/)"
        for page, anchor in re.findall(r"docs/([\w\-]+\.md)(?:#([\w\-]+))?", text):
            target = ROOT / "docs" / page
            if not target.exists():
                missing.append(f"{p.relative_to(ROOT)}: docs/{page} does not exist")
            elif anchor and anchor not in anchors(target):
                missing.append(f"{p.relative_to(ROOT)}: docs/{page} has no heading #{anchor}")
    assert not missing, "\n".join(missing)
    assert any("docs/" in p.read_text() for p in CITED)  # the check above has something to check


@pytest.mark.parametrize("page", sorted((ROOT / "docs").glob("*.md")), ids=lambda p: p.name)
def test_docs_pages_link_to_pages_that_exist(page):
    for target, anchor in re.findall(r"\]\(([\w\-]+\.md)(?:#([\w\-]+))?\)", page.read_text()):
        assert (ROOT / "docs" / target).exists(), f"{page.name} links to {target}"
        if anchor:
            assert anchor in anchors(ROOT / "docs" / target), f"{page.name} links to {target}#{anchor}"
