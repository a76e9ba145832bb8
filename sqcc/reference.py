"""Reference runtimes: run a model's *original* file the way its framework would.

``reference_session(model)`` gives onnxruntime (CPU, sequential) for ONNX models and LiteRT
(``ai_edge_litert``, the TFLite interpreter with its default XNNPACK delegate) for TFLite models.
Both run ``model.source`` — the bytes the user gave — so they check sqcc's import and every later
rewrite against the framework, not against sqcc itself. A TFLite file is first passed through
:func:`sqcc.tflite_frontend.normalize_tflite` (LiteRT rejects the out-of-range
``quantized_dimension`` of TFLite Micro models; the fix changes nothing else).

    sess = reference_session(model, threads=2)
    outs = sess.run({"data": x})      # list of np.ndarray, in model.outputs order
"""
from __future__ import annotations

import numpy as np

from .errors import SqccError, one_line, text_of


def _check_inputs(model, inputs: dict) -> dict:
    from .frontend import check_feed

    return check_feed(model.inputs, inputs, f"{model.name}: reference run")


class OnnxRuntimeSession:
    """onnxruntime CPUExecutionProvider; ``threads`` intra-op threads, 1 inter-op, sequential."""

    name = "onnxruntime"

    def __init__(self, model, threads: int | None = None, spinning: bool = True):
        import onnxruntime as ort

        self.model = model
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        if not spinning:  # workers sleep when idle instead of spinning (onnxruntime spins by default)
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.spinning = spinning
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        try:
            self.sess = ort.InferenceSession(model.source, sess_options=opts,
                                             providers=["CPUExecutionProvider"])
        except Exception as e:
            raise SqccError(f"{model.name}: onnxruntime cannot load the model: {one_line(e)}") from e
        self.output_names = [o.name for o in self.sess.get_outputs()]

    def run(self, inputs: dict) -> list:
        feed = _check_inputs(self.model, inputs)
        try:
            return [np.asarray(o) for o in self.sess.run(self.output_names, feed)]
        except Exception as e:  # the model declares shapes its own graph or these inputs contradict
            why = " ".join(text_of(e).split())  # onnxruntime spreads one reason over several lines
            raise SqccError(f"{self.model.name}: onnxruntime cannot run the model: {why[:300]}") from e


class LiteRTSession:
    """LiteRT interpreter (``ai_edge_litert``) on the normalised flatbuffer, ``num_threads=threads``."""

    name = "litert"

    def __init__(self, model, threads: int | None = None):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as e:
            raise SqccError("the TFLite reference runtime needs LiteRT: pip install ai-edge-litert") from e
        from .tflite_frontend import normalize_tflite

        self.model = model
        self.content = normalize_tflite(model.source)
        try:
            self.interp = Interpreter(model_content=self.content, num_threads=threads)
            details = {d["name"]: d for d in self.interp.get_input_details()}
            for spec in model.inputs:  # shapes given with --input-shape for dynamic dims
                d = details.get(spec.name)
                if d is not None and tuple(d["shape"]) != tuple(spec.shape):
                    self.interp.resize_tensor_input(d["index"], list(spec.shape))
            self.interp.allocate_tensors()
        except SqccError:
            raise
        except Exception as e:
            raise SqccError(f"{model.name}: LiteRT cannot load the model: {one_line(e)}") from e
        self.inputs = {d["name"]: d["index"] for d in self.interp.get_input_details()}
        self.outputs = [d["index"] for d in self.interp.get_output_details()]
        unknown = [s.name for s in model.inputs if s.name not in self.inputs]
        if unknown:
            raise SqccError(f"{model.name}: LiteRT's inputs are {', '.join(self.inputs)}, "
                            f"not {', '.join(unknown)}")

    def run(self, inputs: dict) -> list:
        feed = _check_inputs(self.model, inputs)
        try:
            for name, x in feed.items():
                self.interp.set_tensor(self.inputs[name], x)
            self.interp.invoke()
            return [np.array(self.interp.get_tensor(i)) for i in self.outputs]
        except Exception as e:  # noqa: BLE001 -- a kernel the flatbuffer's shapes make fail
            raise SqccError(f"{self.model.name}: LiteRT cannot run the model: {one_line(e)}") from e


def reference_session(model, threads: int | None = None, spinning: bool = True):
    """A session with ``.run(inputs) -> list[np.ndarray]`` and ``.name`` for ``model``'s framework.
    ``spinning=False``: onnxruntime's idle workers sleep instead of spinning (LiteRT does not spin)."""
    if model.format == "onnx":
        return OnnxRuntimeSession(model, threads, spinning)
    if model.format == "tflite":
        return LiteRTSession(model, threads)
    raise SqccError(f"{model.name}: no reference runtime for format '{model.format}'")
