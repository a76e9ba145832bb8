"""The shape of the code, checked: function length and import cycles in sqcc/, passes/, schedules/,
targets/ (the ``sqcc.*`` packages).

The redesign is under way (issue "Architecture: ..."). What is still too long or cyclic is listed
below as known debt: a test fails when a new long function or a new cycle appears, when a listed
function grows, and when a listed entry is fixed but still listed (so the list only shrinks).
"""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"sqcc": ROOT / "sqcc", "sqcc.passes": ROOT / "passes", "sqcc.schedules": ROOT / "schedules",
            "sqcc.targets": ROOT / "targets"}
MAX_LINES = 80

# function → its length today; each is to be split (issue "Architecture: ...")
LONG_FUNCTIONS = {
}


def modules():
    for pkg, d in PACKAGES.items():
        for f in sorted(d.rglob("*.py")):
            rel = f.relative_to(d).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if pkg == "sqcc" and parts and parts[0] in ("passes", "schedules", "targets"):
                continue
            yield ".".join([pkg, *parts]), f


def function_lengths():
    for _, f in modules():
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f"{f.relative_to(ROOT)}:{node.name}", node.end_lineno - node.lineno + 1


def test_no_new_long_functions_and_listed_ones_do_not_grow():
    seen = {}
    for key, n in function_lengths():
        seen[key] = max(n, seen.get(key, 0))
    too_long = {k: n for k, n in seen.items() if n > MAX_LINES}
    new = {k: n for k, n in too_long.items() if k not in LONG_FUNCTIONS}
    grown = {k: (n, LONG_FUNCTIONS[k]) for k, n in too_long.items()
             if k in LONG_FUNCTIONS and n > LONG_FUNCTIONS[k]}
    fixed = sorted(k for k in LONG_FUNCTIONS if k not in too_long)
    assert not new, f"functions over {MAX_LINES} lines: {new}"
    assert not grown, f"listed long functions grew (now, allowed): {grown}"
    assert not fixed, f"no longer over {MAX_LINES} lines, remove from LONG_FUNCTIONS: {fixed}"


def _imports(name, path):
    """sqcc modules ``name`` imports, at module level or inside functions."""
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}
    return out


def import_graph():
    names = dict(modules())
    g = nx.DiGraph()
    for name, path in names.items():
        g.add_node(name)
        for imp in _imports(name, path):
            if imp in names and imp != name and not name.startswith(imp + "."):
                g.add_edge(name, imp)
    return g


def test_import_cycles_do_not_grow():
    g = import_graph()
    sccs = [sorted(c) for c in nx.strongly_connected_components(g) if len(c) > 1]
    biggest = max((len(c) for c in sccs), default=0)
    # Today: frontend ↔ tflite_frontend, {bench, package, remote}, shuffle ↔ shuffle_canon,
    # build ↔ schedules.tuning (function-level imports that hide a cycle count too).
    assert biggest <= KNOT_SIZE, f"import cycle grew to {biggest} modules: {max(sccs, key=len)}"
    assert len(sccs) <= KNOTS, f"{len(sccs)} import cycles: {sccs}"


KNOT_SIZE = 3
KNOTS = 1


def test_the_frontend_does_not_import_the_back_end():
    g = import_graph()
    for front in ("sqcc.frontend", "sqcc.tflite_frontend"):
        reach = nx.descendants(g, front) if front in g else set()
        back = sorted(m for m in reach if m.startswith(("sqcc.schedules", "sqcc.targets", "sqcc.build")))
        assert not back, f"{front} reaches {back}"
