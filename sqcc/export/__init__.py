"""Export a compiled package's rewritten graph to files other runtimes and Netron open.

    sqcc export c.tar --onnx c.onnx        # float ONNX; an int8 package: QDQ ONNX
    sqcc export c.tar --tflite c.tflite    # float TFLite
    pkg.export_onnx("c.onnx"); pkg.export_tflite("c.tflite")

One module per format: :mod:`.onnx_export` (with :mod:`.onnx_graph`, :mod:`.onnx_ops` and
:mod:`.qdq`), :mod:`.tflite_export`. Each reads the package's ``graph.json`` (:mod:`.graph`), checks
the file it built by running it in the peer runtime beside the package (:mod:`.verify`), and writes
it atomically only when it matches. This package imports from sqcc's core, never the reverse
(``Package.export_onnx`` imports it inside the method).
"""
from .graph import GRAPH_MEMBER, check_exportable, graph_module
from .onnx_export import build_onnx, export_onnx


def export_tflite(pkg, path, flag: str = "--tflite", feeds=None) -> dict:
    from .tflite_export import export_tflite as _export

    return _export(pkg, path, flag=flag, feeds=feeds)


__all__ = ["GRAPH_MEMBER", "build_onnx", "check_exportable", "export_onnx", "export_tflite", "graph_module"]
