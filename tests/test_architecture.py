"""The layout docs/architecture.md describes, kept true: one folder a stage of the data's
journey (and one for the model), imports that only run down the layers, no import cycle,
every package's docstring naming its modules, and modules and functions small enough to
read in one sitting."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "llt"
# The folders of llt/, from the bottom up: each may import only folders before it in this
# order, never one after it (no exception for any module). The data's journey (encode ->
# shards -> data -> train -> runs) is the order of the diagram in docs/architecture.md; this
# is the order of imports: the two contracts (shards, the run folder in runs) sit below the
# code that writes them, and the model as llt builds it below training and the tools after it.
ORDER = ("shards", "encode", "data", "model", "runs", "train")
STAGES = ORDER
ALLOWED = {
    "shards": set(),
    "encode": {"shards"},
    "data": {"shards"},
    "model": set(),
    "runs": {"model"},
    # GRPO reads its prompt records with the encoder's readers (llt.train.grpo.prompts)
    "train": {"shards", "encode", "data", "model", "runs"},
}
ENTRY_POINTS = {"llt.cli", "llt.quickstart", "llt.score", "llt.__main__"}
BASE = {"llt", "llt.errors", "llt.fsutil", "llt.flags", "llt.values", "llt.interrupt", "llt.progress", "llt.resources", "llt.tokenizer_loader",
        "llt.toy"}


def modules() -> dict[str, ast.Module]:
    out = {}
    for f in sorted(PKG.rglob("*.py")):
        name = ".".join(f.relative_to(PKG.parent).with_suffix("").parts).removesuffix(".__init__")
        out[name] = ast.parse(f.read_text(), str(f))
    return out


def llt_imports(tree: ast.Module, names: set[str]) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("llt"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in names else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("llt")}
    return found


MODULES = modules()
GRAPH = {m: llt_imports(t, set(MODULES)) - {m} for m, t in MODULES.items()}


def stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m not in ENTRY_POINTS))
def test_imports_flow_along_the_journey(module):
    own = stage(module)
    for dep in GRAPH[module]:
        if dep in BASE or stage(dep) == own:
            continue
        assert own is not None, f"{module} is a base module but imports the stage module {dep}"
        allowed = ALLOWED[own]
        assert stage(dep) in allowed, \
            f"{module} imports {dep}: stage {own} may import only {sorted(allowed) or 'base modules'}"


def test_no_stage_imports_one_above_it():
    for own, allowed in ALLOWED.items():
        above = {s for s in allowed if ORDER.index(s) >= ORDER.index(own)}
        assert not above, f"{own} may import {sorted(above)}, which stand above it"


def test_no_import_cycle():
    seen, on_path = set(), []

    def visit(m):
        if m in on_path:
            raise AssertionError("import cycle: " + " -> ".join(on_path[on_path.index(m):] + [m]))
        if m in seen:
            return
        on_path.append(m)
        for d in GRAPH.get(m, ()):
            visit(d)
        on_path.pop()
        seen.add(m)

    for m in MODULES:
        visit(m)


def test_modules_and_functions_stay_small():
    lines = {f.relative_to(PKG.parent): len(f.read_text().splitlines()) for f in PKG.rglob("*.py")}
    assert not {f: n for f, n in lines.items() if n > 400}
    long_functions = [(f"{m}.{n.name}", n.end_lineno - n.lineno + 1) for m, t in MODULES.items()
                      for n in ast.walk(t) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                      and n.end_lineno - n.lineno + 1 > 60]
    assert not long_functions, long_functions


def test_every_package_docstring_names_each_of_its_modules():
    packages = [m for m in MODULES if (PKG.parent / m.replace(".", "/") / "__init__.py").is_file()
                and m != "llt"]
    for pkg in packages:
        doc = ast.get_docstring(MODULES[pkg]) or ""
        children = [m for m in MODULES if m.rsplit(".", 1)[0] == pkg]
        missing = [m.rsplit(".", 1)[1] for m in children if f"`{m.rsplit('.', 1)[1]}`" not in doc]
        assert not missing, f"{pkg.replace('.', '/')}/__init__.py does not describe {missing}"
