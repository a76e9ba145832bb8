"""Write corpus.json for a corpus folder: one entry per model file, merging the partial entries the
exporters / fetcher left in FOLDER/.partial/ with what the files themselves say (inputs, outputs
with symbolic dims as strings, operator counts, op-level feature tags, size, sha256).

Developer tool, not run by CI.  Needs `onnx` and the PyPI `tflite` flatbuffer parser (both are in
the project's .venv, which this only reads from):

    python benchmarks/corpus/manifest.py tests/data/corpus [--keep-partial]
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
from collections import Counter


ONNX_DT = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
           10: "float16", 11: "float64", 16: "bfloat16"}


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def onnx_info(path):
    import onnx
    m = onnx.load(path)
    g = m.graph
    inits = {i.name: i for i in g.initializer}

    def vi(v):
        t = v.type.tensor_type
        dims = []
        for d in t.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param or "?")
        return {"name": v.name, "shape": dims, "dtype": ONNX_DT.get(t.elem_type, str(t.elem_type))}

    inputs = [vi(v) for v in g.input if v.name not in inits]
    outputs = [vi(v) for v in g.output]
    ops = Counter(n.op_type for n in g.node)
    feats = set()
    for n in g.node:
        if n.op_type == "Conv":
            a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
            grp, strides = a.get("group", 1), list(a.get("strides", [1, 1]))
            w = inits.get(n.input[1]) if len(n.input) > 1 else None
            if grp > 1 and w is not None and w.dims[1] == 1:
                feats.add("depthwise")
                if max(strides) >= 2:
                    feats.add("depthwise-s2")
            elif grp > 1:
                feats.add("grouped-conv")
            if any(d > 1 for d in a.get("dilations", [1])):
                feats.add("dilated-conv")
    table = {"Resize": "resize", "Upsample": "resize", "HardSwish": "hardswish",
             "HardSigmoid": "hardsigmoid", "PRelu": "prelu", "ConvTranspose": "conv-transpose",
             "LayerNormalization": "layernorm", "Erf": "gelu", "Gelu": "gelu",
             "GlobalAveragePool": "gap", "ReduceMean": "mean", "Transpose": "transpose",
             "Concat": "concat", "Shape": "shape-ops", "Split": "split", "Softmax": "softmax",
             "LeakyRelu": "leakyrelu", "Sigmoid": "sigmoid", "Clip": "clip", "Gemm": "gemm",
             "MatMul": "matmul", "Pad": "pad", "BatchNormalization": "batchnorm-node",
             "DequantizeLinear": "dequantize", "QuantizeLinear": "quantize", "Loop": "control-flow",
             "If": "control-flow", "ConstantOfShape": "constant-of-shape"}
    feats |= {t for op, t in table.items() if op in ops}
    dtypes = {i.data_type for i in g.initializer}
    if 10 in dtypes:
        feats.add("fp16-weights")
    opset = {o.domain or "ai.onnx": o.version for o in m.opset_import}
    return inputs, outputs, dict(sorted(ops.items())), feats, {"opset": opset.get("ai.onnx"),
                                                               "ir_version": m.ir_version,
                                                               "producer": f"{m.producer_name} "
                                                                           f"{m.producer_version}"}


def tflite_info(path):
    import tflite
    buf = open(path, "rb").read()
    m = tflite.Model.GetRootAsModel(buf, 0)
    names = {v: k for k, v in tflite.BuiltinOperator.__dict__.items() if not k.startswith("_")}
    tnames = {v: k.lower() for k, v in tflite.TensorType.__dict__.items() if not k.startswith("_")}
    sg = m.Subgraphs(0)

    def ti(idx):
        t = sg.Tensors(idx)
        shape = [int(d) for d in (t.ShapeAsNumpy() if t.ShapeLength() else [])]
        sig = [int(d) for d in (t.ShapeSignatureAsNumpy() if t.ShapeSignatureLength() else [])]
        dims = []
        for i, d in enumerate(shape):
            dims.append("?" if (sig and i < len(sig) and sig[i] == -1) else d)
        name = t.Name().decode()
        dt = tnames.get(t.Type(), str(t.Type()))
        return {"name": name, "shape": dims, "dtype": {"float32": "float32"}.get(dt, dt)}

    inputs = [ti(sg.Inputs(i)) for i in range(sg.InputsLength())]
    outputs = [ti(sg.Outputs(i)) for i in range(sg.OutputsLength())]
    ops = Counter()
    feats = set()
    for j in range(sg.OperatorsLength()):
        op = sg.Operators(j)
        oc = m.OperatorCodes(op.OpcodeIndex())
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        name = names.get(code, str(code))
        if name == "CUSTOM":
            name = "CUSTOM:" + oc.CustomCode().decode()
            feats.add("custom-op")
        ops[name] += 1
        if name == "DEPTHWISE_CONV_2D":
            feats.add("depthwise")
            opt = op.BuiltinOptions()
            o = tflite.DepthwiseConv2DOptions()
            o.Init(opt.Bytes, opt.Pos)
            if max(o.StrideH(), o.StrideW()) >= 2:
                feats.add("depthwise-s2")
            if max(o.DilationHFactor(), o.DilationWFactor()) > 1:
                feats.add("dilated-conv")
        if name == "CONV_2D":
            opt = op.BuiltinOptions()
            o = tflite.Conv2DOptions()
            o.Init(opt.Bytes, opt.Pos)
            if max(o.DilationHFactor(), o.DilationWFactor()) > 1:
                feats.add("dilated-conv")
        if name == "DEQUANTIZE":
            src = sg.Tensors(op.Inputs(0))
            if src.Type() == tflite.TensorType.FLOAT16:
                feats.add("fp16-weights")
            feats.add("dequantize")
    table = {"RESIZE_BILINEAR": "resize-bilinear", "RESIZE_NEAREST_NEIGHBOR": "resize-nearest",
             "HARD_SWISH": "hardswish", "PRELU": "prelu", "TRANSPOSE_CONV": "conv-transpose",
             "MEAN": "mean", "MAX_POOL_2D": "maxpool", "AVERAGE_POOL_2D": "avgpool",
             "CONCATENATION": "concat", "RESHAPE": "reshape", "PAD": "pad",
             "FULLY_CONNECTED": "fully-connected", "SOFTMAX": "softmax", "LOGISTIC": "sigmoid",
             "DENSIFY": "sparse-densify", "TRANSPOSE": "transpose", "SHAPE": "shape-ops",
             "SPACE_TO_BATCH_ND": "space-to-batch", "QUANTIZE": "quantize"}
    feats |= {t for op, t in table.items() if op in ops}
    if "RESIZE_BILINEAR" in ops or "RESIZE_NEAREST_NEIGHBOR" in ops:
        feats.add("resize")
    feats.add("nhwc")
    desc = m.Description().decode() if m.Description() else ""
    return inputs, outputs, dict(sorted(ops.items())), feats, {"tflite_version": m.Version(),
                                                               "description": desc}


def build(folder, keep_partial=False):
    part_dir = os.path.join(folder, ".partial")
    old = {}
    mpath = os.path.join(folder, "corpus.json")
    if os.path.exists(mpath):
        old = {e["file"]: e for e in json.load(open(mpath))}
    entries = []
    for path in sorted(glob.glob(os.path.join(folder, "*.onnx")) + glob.glob(os.path.join(folder, "*.tflite"))):
        fname = os.path.basename(path)
        pj = os.path.join(part_dir, fname.rsplit(".", 1)[0] + ".json")
        base = json.load(open(pj)) if os.path.exists(pj) else old.get(fname)
        if base is None:
            raise SystemExit(f"{fname}: no partial entry and not in corpus.json")
        if fname.endswith(".onnx"):
            ins, outs, ops, feats, extra = onnx_info(path)
        else:
            ins, outs, ops, feats, extra = tflite_info(path)
        if any(isinstance(d, str) for v in ins for d in v["shape"][:1]):
            feats.add("dynamic-batch")
        if any(isinstance(d, str) for v in ins for d in v["shape"][1:]):
            feats.add("dynamic-spatial")
        if len(outs) > 1:
            feats.add("multi-output")
        if not any(isinstance(d, str) for v in ins for d in v["shape"]):
            feats.add("static")
        feats.discard("static") if any(isinstance(d, str) for v in ins for d in v["shape"]) else None
        role = [f for f in base.get("features", []) if f != "static"]
        e = {
            "file": fname,
            "format": base["format"],
            "source": base["source"],
            "license": base["license"],
            "inputs": ins,
            "outputs": outs,
            "features": sorted(set(role) | feats),
            "notes": base["notes"],
            "bytes": os.path.getsize(path),
            "sha256": _sha(path),
            "ops": ops,
        }
        e.update(extra)
        entries.append(e)
    with open(mpath, "w") as f:
        json.dump(entries, f, indent=1)
        f.write("\n")
    if not keep_partial and os.path.isdir(part_dir):
        shutil.rmtree(part_dir)
    return entries


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--keep-partial", action="store_true")
    a = ap.parse_args(argv)
    es = build(a.folder, a.keep_partial)
    tot = sum(e["bytes"] for e in es)
    for e in es:
        print(f"{e['file']:45s} {e['bytes']:>10,d}  {','.join(e['features'])}")
    print(f"{len(es)} models, {tot:,d} bytes")


if __name__ == "__main__":
    main()
