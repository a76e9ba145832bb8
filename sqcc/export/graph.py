"""The rewritten graph a package keeps for export (``graph.json``), and what may be exported.

``sqcc compile`` stores the Relax module after every rewrite and fold and before layout conversion
and scheduling -- the model sqcc built, in the NCHW form the passes speak -- as ``tvm.ir.save_json``
text (constants inline, base64). :func:`graph_module` reads it back with ``tvm.ir.load_json`` and
refuses, in one line each, what cannot be exported and checked here: a package made before graphs
were kept, a micro build, a package for a device this host cannot run (the export is verified by
running the package beside the exported file).
"""
from __future__ import annotations

from ..errors import SqccError, one_line

GRAPH_MEMBER = "graph.json"


def _where(pkg) -> str:
    return str(getattr(pkg, "path", None) or f"package {pkg.manifest['model']['name']}")


def check_exportable(pkg) -> None:
    """One SqccError when ``pkg`` cannot be exported (and verified) on this host."""
    fam = pkg.manifest["target"]["family"]
    where = _where(pkg)
    if fam == "micro":
        raise SqccError(f"{where}: a micro build (C sources for {pkg.target}) has no exportable graph; "
                        "compile the model for --target host and export that package")
    if fam != "host":
        raise SqccError(f"{where}: built for {pkg.target}, which this host cannot run, so the exported "
                        "file could not be checked against it; compile the same passes for --target host "
                        "and export that package")
    if getattr(pkg, "graph", None) is None:
        raise SqccError(f"{where}: the package has no rewritten graph (made by an sqcc before export "
                        "existed); re-compile with this sqcc to export")


def graph_module(pkg):
    """The package's rewritten Relax module (after :func:`check_exportable`)."""
    import tvm

    check_exportable(pkg)
    try:
        text = pkg.graph.decode() if isinstance(pkg.graph, bytes) else pkg.graph
        mod = tvm.ir.load_json(text)
    except Exception as e:  # noqa: BLE001  (TVM raises its own errors on a damaged document)
        raise SqccError(f"{_where(pkg)}: {GRAPH_MEMBER} is not a Relax module TVM can read "
                        f"({one_line(e)}); re-compile with this sqcc to export") from None
    if not isinstance(mod, tvm.IRModule) or "main" not in [gv.name_hint for gv in mod.get_global_vars()]:
        raise SqccError(f"{_where(pkg)}: {GRAPH_MEMBER} holds no 'main' function; re-compile with this "
                        "sqcc to export")
    return mod
