"""In-place overlap of a kernel's output with an input that dies at that kernel, from its TIR.

A conv writes its output element by element; once an input element's last reader has run, its bytes
may hold output. :func:`overlap_limit` finds, from the kernel's (scheduled) TIR, how far the output
may be shifted onto the input: d_max such that with out_base - in_base = d <= d_max no output byte
is written before every read of the input byte it lands on. It executes the loop nest symbolically
(numpy over each leaf block's whole iteration space): every input element's last-read time and
every output element's first-write time, in the kernel's sequential order. The kernels are plain
serial C without `restrict` (every access goes through char-typed or same-typed pointers that may
alias), so the compiler keeps that order. Anything the evaluator does not know makes it give up
(no overlap for that pair). Guarded loads count as reads even where the guard is false.

Time: every leaf store instance gets a step number (loops nest their bodies' durations); a store's
time is ``2·step + when`` with ``when = -1`` for a block's init, so an init runs before the body of
the same instance. From the per-byte last-read times (prefix maximum over the input's bytes) and
each output element's first write, the largest safe shift follows by one ``searchsorted``.

:func:`overlap_allowances` turns this into the planner's allowances for a whole graph.
"""
from __future__ import annotations

import numpy as np

OVERLAP_MAX_POINTS = 4_000_000  # iteration-space points evaluated per leaf block


class NoOverlap(Exception):
    pass


_NP_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "FloorDiv": np.floor_divide,
              "FloorMod": np.mod, "Min": np.minimum, "Max": np.maximum, "EQ": np.equal,
              "NE": np.not_equal, "LT": np.less, "LE": np.less_equal, "GT": np.greater,
              "GE": np.greater_equal, "And": np.logical_and, "Or": np.logical_or}


def np_eval(e, env):
    """Evaluate an index expression over numpy grids of loop values (``env``: Var → array)."""
    t = type(e).__name__
    if t == "IntImm":
        return np.int64(e.value)
    if t == "FloatImm":
        return np.float64(e.value)
    if t == "Var":
        for k, v in env.items():
            if k.same_as(e):
                return v
        raise NoOverlap(f"free variable {e}")
    if t in _NP_BINARY:
        return _NP_BINARY[t](np_eval(e.a, env), np_eval(e.b, env))
    if t in ("Div", "Mod"):  # C's truncating division
        a, b = np_eval(e.a, env), np_eval(e.b, env)
        q = np.sign(a) * np.sign(b) * (np.abs(a) // np.abs(b))
        return q if t == "Div" else a - b * q
    if t == "Not":
        return np.logical_not(np_eval(e.a, env))
    if t == "Cast":
        return np_eval(e.value, env)
    if t == "Select":
        return np.where(np_eval(e.condition, env), np_eval(e.true_value, env), np_eval(e.false_value, env))
    if t == "Call":
        name = getattr(e.op, "name", "")
        if name == "tirx.if_then_else":
            return np.where(*(np_eval(a, env) for a in e.args))
        if name == "tirx.likely":
            return np_eval(e.args[0], env)
        raise NoOverlap(f"call {name} in an index")
    raise NoOverlap(f"{t} in an index")


def _src(load):
    """The buffer a load reads (0.27's TensorLoad calls it ``source``)."""
    b = getattr(load, "buffer", None)
    return b if b is not None else load.source


_LEAF_EXPRS = ("IntImm", "FloatImm", "StringImm", "Var", "SizeVar")
_BINARY_EXPRS = ("Add", "Sub", "Mul", "Div", "Mod", "FloorDiv", "FloorMod", "Min", "Max", "EQ", "NE",
                 "LT", "LE", "GT", "GE", "And", "Or", "BitwiseAnd", "BitwiseOr", "BitwiseXor",
                 "LShift", "RShift")


def _loads(e, out):
    """Every load inside expression ``e``; an expression kind not listed here means no overlap."""
    t = type(e).__name__
    if t in ("BufferLoad", "TensorLoad"):
        out.append(e)
        for i in e.indices:
            _loads(i, out)
    elif t in _LEAF_EXPRS:
        pass
    elif t in _BINARY_EXPRS:
        _loads(e.a, out)
        _loads(e.b, out)
    elif t in ("Not", "BitwiseNot"):
        _loads(e.a, out)
    elif t == "Cast":
        _loads(e.value, out)
    elif t == "Select":
        for c in (e.condition, e.true_value, e.false_value):
            _loads(c, out)
    elif t == "Call":
        for a in e.args:
            _loads(a, out)
    else:
        raise NoOverlap(f"expression {t}")
    return out


def _btype(buf):
    """(shape, dtype) of a TIR buffer (0.27: buffers are Vars typed by a BufferType)."""
    ty = getattr(buf, "ty", None)
    src = ty if ty is not None and hasattr(ty, "shape") else buf
    return [int(d) for d in src.shape], str(src.dtype)


def _flat(buf, idx_vals):
    shape = _btype(buf)[0]
    flat = np.int64(0)
    for d, v in zip(shape, idx_vals):
        flat = flat * d + v
    return flat, int(np.prod(shape, dtype=np.int64))


def _duration(stmt) -> int:
    """How many leaf-store steps ``stmt`` takes (its time extent in the sequential order)."""
    t = type(stmt).__name__
    if t == "For":
        return int(stmt.extent) * _duration(stmt.body)
    if t == "SeqStmt":
        return sum(_duration(c) for c in stmt.seq)
    if t == "SBlockRealize":
        blk = stmt.block
        inner = type(blk.body).__name__
        if inner == "Evaluate":
            raise NoOverlap("opaque block")
        return 1 if inner == "BufferStore" else _duration(blk.body)
    if t in ("AllocBuffer", "AttrStmt"):
        return _duration(stmt.body) if getattr(stmt, "body", None) is not None else 0
    if t == "BufferStore":
        return 1
    if t == "Evaluate" and type(stmt.value).__name__ == "IntImm":
        return 0
    raise NoOverlap(f"statement {t}")


def _loop_grid(loops):
    """{loop var: its values, broadcast along its own axis} over the loops' full grid."""
    n = len(loops)
    grid = {}
    for k, (var, lo, ext, _) in enumerate(loops):
        shape = [1] * n
        shape[k] = ext
        grid[var] = (np.arange(ext, dtype=np.int64) + lo).reshape(shape)
    return grid


class _Tracer:
    """Walks a PrimFunc's body recording, per element, the last read of ``in_buf`` and the first
    write of ``out_buf``."""

    def __init__(self, in_buf, out_buf):
        self.in_buf, self.out_buf = in_buf, out_buf
        _, n_in = _flat(in_buf, [])
        _, n_out = _flat(out_buf, [])
        self.last_read = np.full(n_in, -1, np.int64)
        self.first_write = np.full(n_out, np.iinfo(np.int64).max, np.int64)

    def leaf(self, stores, loops, base, env):
        # loops: [(var, min, extent, stride)]; broadcast grids, one axis per loop
        points = int(np.prod([ext for _, _, ext, _ in loops], dtype=np.int64)) if loops else 1
        if points > OVERLAP_MAX_POINTS:
            raise NoOverlap("iteration space too large to check")
        env = dict(env)
        grid = _loop_grid(loops)
        time = np.int64(base)
        for var, lo, _, stride in loops:
            env[var] = grid[var]
            time = time + (grid[var] - lo) * stride
        time = np.broadcast_to(time, [ext for _, _, ext, _ in loops]) if loops else np.array(time)
        for store, when in stores:
            self._record(store, time * 2 + when, env)  # an init (when = -1) runs before the body

    def _record(self, store, tv, env):
        # (reads of the output itself, as an accumulator, do not matter)
        for ld in _loads(store.value, []) + [x for i in store.indices for x in _loads(i, [])]:
            if _src(ld).same_as(self.in_buf):
                flat, size = _flat(self.in_buf, [np_eval(i, env) for i in ld.indices])
                flat = np.broadcast_to(flat, tv.shape).ravel()
                ok = (flat >= 0) & (flat < size)
                np.maximum.at(self.last_read, flat[ok], tv.ravel()[ok])
        if store.buffer.same_as(self.in_buf):
            raise NoOverlap("the kernel writes its input")
        if store.buffer.same_as(self.out_buf):
            flat, size = _flat(self.out_buf, [np_eval(i, env) for i in store.indices])
            flat = np.broadcast_to(flat, tv.shape).ravel()
            ok = (flat >= 0) & (flat < size)
            np.minimum.at(self.first_write, flat[ok], tv.ravel()[ok])

    def walk(self, stmt, loops, base, env):
        t = type(stmt).__name__
        if t == "For":
            if int(stmt.kind) not in (0, 3):  # serial or unrolled: the C runs it in order
                raise NoOverlap(f"{stmt.kind} loop")
            body_d = _duration(stmt.body)
            self.walk(stmt.body, loops + [(stmt.loop_var, int(stmt.min), int(stmt.extent), body_d)], base, env)
        elif t == "SeqStmt":
            off = base
            for c in stmt.seq:
                self.walk(c, loops, off, env)
                off += _duration(c)
        elif t == "SBlockRealize":
            self.block(stmt, loops, base, env)
        elif t in ("AllocBuffer", "AttrStmt"):  # (a DeclBuffer could alias a parameter: give up)
            if getattr(stmt, "body", None) is not None:
                self.walk(stmt.body, loops, base, env)
        elif t == "BufferStore":
            self.leaf([(stmt, 0)], loops, base, env)
        elif t == "Evaluate" and type(stmt.value).__name__ == "IntImm":
            return
        else:  # extern calls (which may write through pointers), conditionals, lets, ...
            raise NoOverlap(f"statement {t}")

    def block(self, stmt, loops, base, env):
        blk = stmt.block
        if len(blk.match_buffers):  # a region of a parameter under another name
            raise NoOverlap("match_buffer")
        if type(blk.body).__name__ not in ("BufferStore", "Evaluate"):
            if blk.init is not None:
                raise NoOverlap("init of a block with loops inside")
            self.walk(blk.body, loops, base, env)
            return
        # bind block iter vars to their values over the enclosing loops' grid
        env2 = dict(env)
        grid_env = dict(env)
        grid_env.update(_loop_grid(loops))
        for iv, val in zip(blk.iter_vars, stmt.iter_values):
            env2[iv.var] = np_eval(val, grid_env)
        env2.update({var: grid_env[var] for var, _, _, _ in loops})
        stores = []
        if blk.init is not None:
            if type(blk.init).__name__ != "BufferStore":
                raise NoOverlap("block init is not a store")
            stores.append((blk.init, -1))
        if type(blk.body).__name__ == "BufferStore":
            stores.append((blk.body, 0))
        else:
            raise NoOverlap("block body is not a store")
        self.leaf(stores, loops, base, env2)


def access_times(func, in_buf, out_buf):
    """(last read time per input element, first write time per output element) of ``func``."""
    tr = _Tracer(in_buf, out_buf)
    tr.walk(func.body, [], 0, {})
    return tr.last_read, tr.first_write


def overlap_limit(func, in_idx: int, out_idx: int):
    """d_max in bytes (see the module docstring), or None when the output may not overlap."""
    try:
        params = list(func.params)
        in_buf, out_buf = params[in_idx], params[out_idx]
        lr, fw = access_times(func, in_buf, out_buf)
    except NoOverlap:
        return None
    except Exception:  # noqa: BLE001 -- an optimisation: anything unexpected means no overlap
        return None
    isz = max(1, int(np.dtype(_btype(in_buf)[1]).itemsize))
    osz = max(1, int(np.dtype(_btype(out_buf)[1]).itemsize))
    lr_bytes = np.repeat(lr, isz)
    pm = np.maximum.accumulate(lr_bytes) if lr_bytes.size else lr_bytes
    n_in = lr_bytes.size
    a = np.searchsorted(pm, fw, side="right")  # first input byte that may still be read after j's write
    j = np.arange(fw.size, dtype=np.int64)
    bound = a - (j + 1) * osz
    bound = bound[a < n_in]  # elements with no later-read byte above them constrain nothing
    return int(bound.min()) if bound.size else int(n_in)


def overlap_allowances(g, kfuncs: dict) -> list:
    """[{"out", "in", "d_max", "step"}] for every step whose single output may be written over an
    arena input that dies at that step (views resolve to the buffer they reinterpret).
    ``g``: a ``lowering.Graph``; ``kfuncs``: {kernel: PrimFunc as built}."""
    out, cache = [], {}
    for i, s in enumerate(g.steps):
        if s.n_out != 1:
            continue
        o = s.args[-1]
        ob = g.bufs[o]
        if ob.kind not in ("act", "output") or ob.start != i:
            continue
        n_in = len(s.args) - 1
        for a in s.args[:n_in]:
            ab = g.bufs[a]
            root = ab.base or a
            rb = g.bufs[root]
            if rb.kind not in ("input", "act") or rb.end != i or ab.nbytes != rb.nbytes:
                continue
            # every argument that reinterprets the same bytes must allow it
            idxs = [k for k, x in enumerate(s.args[:n_in]) if (g.bufs[x].base or x) == root]
            f = kfuncs.get(s.kernel)
            if f is None:
                continue
            lims = []
            for k in idxs:
                key = (s.kernel, k)
                if key not in cache:
                    cache[key] = overlap_limit(f, k, len(s.args) - 1)
                lims.append(cache[key])
            if any(d is None for d in lims) or any(x["in"] == root and x["out"] == o for x in out):
                continue
            out.append({"out": o, "in": root, "d_max": int(min(lims)), "step": i})
    return out
