"""ONNX cases: real models (mnist-8, a quarter-width SqueezeNet, SqueezeNet 1.1) with one protobuf
edit each — the ways an exported or hand-edited model goes wrong: impossible dimensions (0, -1, 2^31)
on inputs and initializers, initializers that are missing or whose declared size does not match their
data, unknown operators, missing or extra or absurd attributes, cycles, wrong or unknown dtypes,
huge declared sizes, empty graphs, odd opset/IR versions, external data pointing outside the model's
folder — plus byte-level damage of the serialised file. Each case runs ``sqcc inspect`` or
``sqcc compile`` on the result, which must import-check it and fail with one line, or build it."""
from __future__ import annotations

from . import mutate
from .assets import ONNX_SEEDS, weighted
from .case import Case

BIG = [0, -1, 2**31, 2**31 - 1, 2**40]


def _seed(ctx):
    import onnx

    name, path = weighted(ctx.rng, ONNX_SEEDS)
    return name, onnx.load_from_string(ctx.assets.read(path))


def _argv(ctx, path: str) -> list:
    """inspect (import only) or compile (import, build, check against onnxruntime, export)."""
    r = ctx.rng.random()
    if r < 0.4:
        return ["inspect", path]
    if r < 0.5:
        return ["inspect", path, "--json"]
    return ["compile", path, "-o", "out.tar"]


def _emit(ctx, name, proto, gen, what) -> Case:
    path = ctx.write(name, proto.SerializeToString())
    return Case(f"onnx.{gen}", f"{name}: {what}", argv=_argv(ctx, path))


def _node_with_attrs(ctx, proto):
    nodes = [n for n in proto.graph.node if len(n.attribute)]
    return ctx.rng.choice(nodes) if nodes else ctx.rng.choice(list(proto.graph.node))


def bytes_(ctx) -> Case:
    """Byte-level damage of the serialised model."""
    name, path = weighted(ctx.rng, ONNX_SEEDS)
    data, what = mutate.mutate(ctx.assets.read(path), ctx.rng)
    p = ctx.write(name, data)
    return Case("onnx.bytes", f"{name}: {what}", argv=_argv(ctx, p))


def input_dim(ctx) -> Case:
    """A graph input's dimension set to 0, -1, 2^31, 2^31-1 or 2^40."""
    name, proto = _seed(ctx)
    vi = proto.graph.input[0]
    dims = vi.type.tensor_type.shape.dim
    ax, v = ctx.rng.randrange(len(dims)), ctx.rng.choice(BIG)
    dims[ax].Clear()
    dims[ax].dim_value = v
    return _emit(ctx, name, proto, "input_dim", f"graph.input[0] '{vi.name}' dim {ax} = {v}")


def init_dims(ctx) -> Case:
    """An initializer's declared dimension changed (0, -1, 2^31...): the data no longer fits."""
    name, proto = _seed(ctx)
    inits = [t for t in proto.graph.initializer if len(t.dims)]
    t = ctx.rng.choice(inits)
    ax, v = ctx.rng.randrange(len(t.dims)), ctx.rng.choice(BIG + [2, 3])
    t.dims[ax] = v
    return _emit(ctx, name, proto, "init_dims", f"initializer '{t.name}' dims[{ax}] = {v}")


def missing_init(ctx) -> Case:
    """An initializer removed while nodes still use it (and, sometimes, its graph.input kept)."""
    name, proto = _seed(ctx)
    k = ctx.rng.randrange(len(proto.graph.initializer))
    gone = proto.graph.initializer[k].name
    del proto.graph.initializer[k]
    return _emit(ctx, name, proto, "missing_init", f"initializer '{gone}' removed")


def unknown_op(ctx) -> Case:
    """A node's op_type or domain changed to one no runtime knows."""
    name, proto = _seed(ctx)
    n = ctx.rng.choice(list(proto.graph.node))
    old = n.op_type
    if ctx.rng.random() < 0.3:
        n.domain = ctx.rng.choice(["com.evil", "ai.onnx.ml", "com.microsoft"])
        what = f"node '{n.name}' ({old}) domain = '{n.domain}'"
    else:
        n.op_type = ctx.rng.choice(["FooBar", "", "conv", "Conv2D", "Loop", "Ω" * 3, "X" * 5000])
        what = f"node '{n.name}' op_type {old} -> '{n.op_type[:20]}'"
    return _emit(ctx, name, proto, "unknown_op", what)


def missing_attr(ctx) -> Case:
    """A required or defaulted attribute removed from a node."""
    name, proto = _seed(ctx)
    n = _node_with_attrs(ctx, proto)
    if not len(n.attribute):
        return _emit(ctx, name, proto, "missing_attr", f"node '{n.name}' has no attributes (unchanged)")
    k = ctx.rng.randrange(len(n.attribute))
    gone = n.attribute[k].name
    del n.attribute[k]
    return _emit(ctx, name, proto, "missing_attr", f"node '{n.name}' ({n.op_type}) attribute '{gone}' removed")


def extra_attr(ctx) -> Case:
    """An unknown attribute added, or an existing one duplicated or given an absurd value or type."""
    from onnx import helper

    name, proto = _seed(ctx)
    n = _node_with_attrs(ctx, proto)
    how = ctx.rng.choice(["unknown", "duplicate", "absurd", "retype"])
    if how == "unknown" or not len(n.attribute):
        n.attribute.append(helper.make_attribute("bogus_attr", ctx.rng.choice([1, 2.5, "x", [1, 2]])))
        return _emit(ctx, name, proto, "extra_attr", f"node '{n.name}' ({n.op_type}): attribute 'bogus_attr' added")
    a = ctx.rng.choice(list(n.attribute))
    if how == "duplicate":
        n.attribute.append(a)
        return _emit(ctx, name, proto, "extra_attr", f"node '{n.name}': attribute '{a.name}' twice")
    if how == "absurd":
        v = ctx.rng.choice([0, -5, 2**31, 10**6])
        new = helper.make_attribute(a.name, [v] * max(1, len(a.ints)) if a.ints else v)
    else:
        new = helper.make_attribute(a.name, ctx.rng.choice(["text", 1.5, [0.5, 0.5]]))
    a.CopyFrom(new)
    return _emit(ctx, name, proto, "extra_attr", f"node '{n.name}' ({n.op_type}): {how} attribute {a.name}={str(new)[:60]!r}")


def cycle(ctx) -> Case:
    """A node's input rewired to its own output or a later node's: the graph is no longer a DAG."""
    name, proto = _seed(ctx)
    nodes = list(proto.graph.node)
    i = ctx.rng.randrange(len(nodes))
    j = ctx.rng.randrange(i, len(nodes))
    nodes[i].input[0] = nodes[j].output[0]
    return _emit(ctx, name, proto, "cycle", f"node[{i}] '{nodes[i].name}' input 0 = output of node[{j}]")


def dtype(ctx) -> Case:
    """The graph input's elem_type, or an initializer's data_type, changed (to another or no type)."""
    name, proto = _seed(ctx)
    code = ctx.rng.choice([0, 2, 6, 7, 8, 9, 10, 11, 14, 16, 999])
    if ctx.rng.random() < 0.5:
        proto.graph.input[0].type.tensor_type.elem_type = code
        return _emit(ctx, name, proto, "dtype", f"graph.input[0] elem_type = {code}")
    t = ctx.rng.choice(list(proto.graph.initializer))
    t.data_type = code
    return _emit(ctx, name, proto, "dtype", f"initializer '{t.name}' data_type = {code}")


def huge(ctx) -> Case:
    """Huge declared sizes: a plausible-looking giant input, or an initializer declaring 2^40
    elements over a few bytes of data."""
    from onnx import TensorProto, helper

    name, proto = _seed(ctx)
    if ctx.rng.random() < 0.5:
        dims = proto.graph.input[0].type.tensor_type.shape.dim
        side = ctx.rng.choice([4096, 65536, 1 << 20])
        for d in list(dims)[-2:]:
            d.Clear()
            d.dim_value = side
        return _emit(ctx, name, proto, "huge", f"graph.input[0] spatial dims = {side}x{side}")
    t = proto.graph.initializer.add()  # built by hand: helper.make_tensor refuses the lie
    t.name, t.data_type, t.raw_data = "fuzz_huge", TensorProto.FLOAT, b"\0" * 16
    t.dims.extend([1 << 20, 1 << 20])
    n0 = proto.graph.node[0]
    proto.graph.node.insert(0, helper.make_node("Identity", ["fuzz_huge"], ["fuzz_huge_out"], name="fuzz_id"))
    return _emit(ctx, name, proto, "huge", f"initializer 'fuzz_huge' declares 2^40 floats in 16 bytes (before {n0.name})")


def empty_graph(ctx) -> Case:
    """No nodes, no outputs, no inputs, or nothing at all."""
    name, proto = _seed(ctx)
    how = ctx.rng.choice(["nodes", "outputs", "inputs", "all", "initializers"])
    if how in ("nodes", "all"):
        del proto.graph.node[:]
    if how in ("outputs", "all"):
        del proto.graph.output[:]
    if how in ("inputs", "all"):
        del proto.graph.input[:]
    if how in ("initializers", "all"):
        del proto.graph.initializer[:]
    return _emit(ctx, name, proto, "empty_graph", f"graph {how} removed")


def versions(ctx) -> Case:
    """Opset and IR versions from the past, the future, or missing."""
    name, proto = _seed(ctx)
    how = ctx.rng.choice(["opset", "ir", "no_opset"])
    if how == "opset":
        v = ctx.rng.choice([0, 1, 6, 99, 2**31])
        proto.opset_import[0].version = v
        what = f"opset_import[0].version = {v}"
    elif how == "ir":
        v = ctx.rng.choice([0, 1, 99])
        proto.ir_version = v
        what = f"ir_version = {v}"
    else:
        del proto.opset_import[:]
        what = "opset_import removed"
    return _emit(ctx, name, proto, "versions", what)


def external_data(ctx) -> Case:
    """An initializer moved to 'external data' whose location escapes the model's folder."""
    from onnx import TensorProto

    name, proto = _seed(ctx)
    t = max(proto.graph.initializer, key=lambda x: len(x.raw_data) or len(x.float_data))
    loc = ctx.rng.choice(["../../../../../etc/passwd", "/etc/passwd", "missing.bin", "/dev/zero", "/proc/self/mem"])
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    del t.external_data[:]
    e = t.external_data.add()
    e.key, e.value = "location", loc
    return _emit(ctx, name, proto, "external_data", f"initializer '{t.name}' external data at {loc}")


def names(ctx) -> Case:
    """Duplicate output names, a graph output nothing produces, an empty input name, or a node whose
    output shadows the graph input."""
    name, proto = _seed(ctx)
    nodes = list(proto.graph.node)
    how = ctx.rng.choice(["dup_output", "ghost_output", "empty_input", "shadow_input"])
    n = ctx.rng.choice(nodes)
    if how == "dup_output":
        n.output[0] = nodes[0].output[0]
    elif how == "ghost_output":
        proto.graph.output[0].name = "nothing_makes_this"
    elif how == "empty_input":
        n.input[0] = ""
    else:
        n.output[0] = proto.graph.input[0].name
    return _emit(ctx, name, proto, "names", f"{how} at node '{n.name}'")


GENERATORS = {
    "onnx.bytes": (bytes_, 4), "onnx.input_dim": (input_dim, 3), "onnx.init_dims": (init_dims, 2),
    "onnx.missing_init": (missing_init, 1), "onnx.unknown_op": (unknown_op, 1),
    "onnx.missing_attr": (missing_attr, 2), "onnx.extra_attr": (extra_attr, 2), "onnx.cycle": (cycle, 1),
    "onnx.dtype": (dtype, 2), "onnx.huge": (huge, 1), "onnx.empty_graph": (empty_graph, 1),
    "onnx.versions": (versions, 1), "onnx.external_data": (external_data, 1), "onnx.names": (names, 1),
}
