"""The Deep Compression size report (Han et al. 2016): the bytes a model's weights need at each stage,
per layer and in total — computed by actually encoding the weights, not by formula.

Columns (weights; biases are stored as fp32 in every column and counted in ``bias_bytes``):

* ``dense``: fp32, 4 bytes per weight.
* ``csr``: the non-zeros as fp32 values plus *relative* indices, as in the paper: each entry stores
  the gap to the previous non-zero in ``index_bits`` bits (8 for conv, 5 for fc layers); a gap
  larger than 2^bits is bridged by filler entries (a stored zero at the bound). The weight is
  flattened row-major (output channel, then input channel, kernel y, kernel x), so the rows of the
  CSR matrix are contiguous and the gap stream alone locates every entry (no row pointers needed).
* ``shared``: the same entries with each value replaced by a b-bit index into the layer's codebook
  (k-means weight sharing) plus the codebook itself (fp32 per centroid). Zero is a codebook symbol
  when the layer is pruned (the filler entries need it). A layer whose weights take more than 256
  distinct values is not shared: its column repeats ``csr``.
* ``huffman``: the value indices and the relative indices each Huffman-coded (one code per layer and
  stream, built from the symbol frequencies with heapq), counting the encoded bits, plus the code
  tables (one byte per alphabet symbol: canonical code lengths) and the codebook.

:func:`size_report` reads the weights from the module's inline constants (after ``prune``/``share``,
or the original model); :func:`encode_layer` returns the actual streams so tests decode them back.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import SqccError, one_line

MIB = 1 << 20
PAPER = {"model": "SqueezeNet 1.0 (Iandola et al. 2016, Table 2; Han et al. Deep Compression)",
         "dense_mb": 4.8, "8bit_mb": 0.66, "6bit_mb": 0.47, "density": 0.33}


# --------------------------------------------------------------------------------------- Huffman

def huffman_lengths(freqs: dict) -> dict:
    """{symbol: code length} of a Huffman code for ``{symbol: frequency}`` (frequencies > 0)."""
    items = [(int(f), i, s) for i, (s, f) in enumerate(sorted(freqs.items())) if f > 0]
    if not items:
        return {}
    if len(items) == 1:
        return {items[0][2]: 1}
    heap = [(f, i, [s]) for f, i, s in items]
    heapq.heapify(heap)
    depth = {s: 0 for _, _, s in items}
    counter = len(items)
    while len(heap) > 1:
        f1, _, s1 = heapq.heappop(heap)
        f2, _, s2 = heapq.heappop(heap)
        for s in s1 + s2:
            depth[s] += 1
        heapq.heappush(heap, (f1 + f2, counter, s1 + s2))
        counter += 1
    return depth


def canonical_codes(lengths: dict) -> dict:
    """{symbol: (code, length)}: the canonical Huffman code for the given lengths."""
    codes = {}
    code = 0
    prev_len = 0
    for s, ln in sorted(lengths.items(), key=lambda kv: (kv[1], kv[0])):
        code <<= ln - prev_len
        codes[s] = (code, ln)
        code += 1
        prev_len = ln
    return codes


def huffman_encode(symbols: np.ndarray, codes: dict) -> tuple[bytes, int]:
    """Pack the code words of ``symbols`` MSB-first; returns (bytes, number of bits)."""
    symbols = np.asarray(symbols).ravel()
    if symbols.size == 0:
        return b"", 0
    alphabet = np.array(sorted(codes))
    code_arr = np.array([codes[s][0] for s in alphabet], dtype=np.uint64)
    len_arr = np.array([codes[s][1] for s in alphabet], dtype=np.int64)
    pos = np.searchsorted(alphabet, symbols)
    if np.any(pos >= len(alphabet)) or np.any(alphabet[np.minimum(pos, len(alphabet) - 1)] != symbols):
        raise ValueError("symbol without a code")
    c, ln = code_arr[pos], len_arr[pos]
    nbits = int(ln.sum())
    start = np.cumsum(ln) - ln
    bits = np.zeros(nbits, np.uint8)
    for k in range(int(ln.max())):
        sel = ln > k
        shift = (ln[sel] - 1 - k).astype(np.uint64)
        bits[start[sel] + k] = ((c[sel] >> shift) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bits).tobytes(), nbits


def huffman_decode(data: bytes, nbits: int, codes: dict, count: int) -> np.ndarray:
    """Inverse of :func:`huffman_encode` (bit by bit; for checks)."""
    table = {(ln, code): s for s, (code, ln) in codes.items()}
    bits = np.unpackbits(np.frombuffer(data, np.uint8))[:nbits]
    out = []
    code = ln = 0
    for b in bits:
        code = (code << 1) | int(b)
        ln += 1
        s = table.get((ln, code))
        if s is not None:
            out.append(s)
            code = ln = 0
            if len(out) == count:
                break
    if len(out) != count:
        raise ValueError(f"Huffman stream ended after {len(out)} of {count} symbols")
    return np.asarray(out)


def huffman_bits(symbols: np.ndarray) -> tuple[int, dict]:
    """(encoded bits, codes) for a symbol stream: builds the code and actually encodes it."""
    symbols = np.asarray(symbols).ravel()
    if symbols.size == 0:
        return 0, {}
    vals, counts = np.unique(symbols, return_counts=True)
    codes = canonical_codes(huffman_lengths(dict(zip(vals.tolist(), counts.tolist()))))
    _, nbits = huffman_encode(symbols, codes)
    return nbits, codes


# ------------------------------------------------------------------------------- relative CSR

def relative_index_encode(flat: np.ndarray, index_bits: int):
    """Non-zeros of ``flat`` as (gaps, positions): ``gaps[k]-1`` is what is stored in ``index_bits``
    bits; filler entries (position of a zero, value 0) bridge gaps larger than 2^bits.
    Returns (stored gaps as int array in [0, 2^bits), entry positions, is_filler mask)."""
    m = 1 << index_bits
    nz = np.flatnonzero(flat)
    gaps = np.diff(np.concatenate([[-1], nz]))
    n_fill = (gaps - 1) // m
    reps = n_fill + 1
    total = int(reps.sum())
    # entry k of nonzero i: fillers first (gap m each), then the real entry with the remainder
    owner = np.repeat(np.arange(len(nz)), reps)
    first = np.cumsum(reps) - reps
    within = np.arange(total) - first[owner]
    is_filler = within < n_fill[owner]
    stored = np.where(is_filler, m, gaps[owner] - n_fill[owner] * m)
    positions = np.cumsum(stored) - 1
    return (stored - 1).astype(np.int64), positions, is_filler


def relative_index_decode(stored: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
    """Dense flat array from stored gaps (gap−1) and entry values (fillers carry 0)."""
    pos = np.cumsum(np.asarray(stored, np.int64) + 1) - 1
    out = np.zeros(size, dtype=np.asarray(values).dtype if len(values) else np.float32)
    out[pos] = values
    return out


# ------------------------------------------------------------------------------------- per layer

@dataclass
class LayerSize:
    layer: str
    kind: str  # conv | fc
    shape: list
    params: int
    nonzeros: int
    entries: int  # CSR entries including fillers
    fillers: int
    index_bits: int
    value_bits: int | None  # b (codebook index bits) or None when not shared
    codebook: int  # number of centroids (0 when not shared)
    bias_bytes: int
    dense_bytes: int
    csr_bytes: int
    shared_bytes: int
    huffman_bytes: int
    huffman_value_bits: int = 0
    huffman_index_bits: int = 0

    @property
    def density(self) -> float:
        return self.nonzeros / self.params if self.params else 0.0

    def to_json(self):
        d = asdict(self)
        d["density"] = self.density
        return d


@dataclass
class SizeReport:
    layers: list = field(default_factory=list)

    def totals(self) -> dict:
        t = {k: int(sum(getattr(l, k) for l in self.layers))
             for k in ("params", "nonzeros", "entries", "fillers", "bias_bytes", "dense_bytes", "csr_bytes",
                       "shared_bytes", "huffman_bytes")}
        for k in ("dense", "csr", "shared", "huffman"):
            t[f"{k}_total_bytes"] = t[f"{k}_bytes"] + t["bias_bytes"]
        t["density"] = t["nonzeros"] / t["params"] if t["params"] else 0.0
        t["compression"] = t["dense_total_bytes"] / t["huffman_total_bytes"] if t["huffman_total_bytes"] else 0.0
        return t

    def to_json(self):
        return {"layers": [l.to_json() for l in self.layers], "totals": self.totals(), "paper": PAPER,
                "units": "bytes; MiB = 2^20 bytes"}


def encode_layer(w: np.ndarray, kind: str = "conv", index_bits: int | None = None):
    """All streams of one layer's weight: a dict with the relative-index stream, the value symbols and
    codebook (or fp32 values when the layer has more than 256 distinct values), and their sizes."""
    if index_bits is None:
        index_bits = 5 if kind == "fc" else 8
    flat = np.ascontiguousarray(w, dtype=np.float32).ravel()
    stored, pos, filler = relative_index_encode(flat, index_bits)
    vals = flat[pos]  # fillers sit on zeros
    uniq = np.unique(flat if filler.any() or (flat == 0).any() else vals)
    shared = len(uniq) <= 256
    out = {"kind": kind, "index_bits": index_bits, "size": flat.size, "shape": list(w.shape),
           "stored_gaps": stored, "positions": pos, "fillers": filler, "values": vals}
    if shared:
        codebook = uniq.astype(np.float32)
        symbols = np.searchsorted(codebook, vals)
        bits = max(1, math.ceil(math.log2(len(codebook)))) if len(codebook) > 1 else 1
        out.update(codebook=codebook, symbols=symbols, value_bits=bits)
    else:
        out.update(codebook=None, symbols=None, value_bits=None)
    return out


def layer_size(name: str, w: np.ndarray, kind: str = "conv", bias_params: int = 0,
               index_bits: int | None = None) -> LayerSize:
    enc = encode_layer(w, kind, index_bits)
    ib = enc["index_bits"]
    n_entries = len(enc["stored_gaps"])
    params = int(w.size)
    csr_bits = n_entries * (32 + ib)
    hi_bits, _ = huffman_bits(enc["stored_gaps"])
    table = (1 << ib)  # one byte per index symbol: canonical code lengths
    if enc["codebook"] is not None:
        b = enc["value_bits"]
        k = len(enc["codebook"])
        shared_bytes = math.ceil(n_entries * (b + ib) / 8) + 4 * k
        hv_bits, _ = huffman_bits(enc["symbols"])
        huff = math.ceil(hv_bits / 8) + math.ceil(hi_bits / 8) + 4 * k + (1 << b) + table
    else:
        b, k = None, 0
        shared_bytes = math.ceil(csr_bits / 8)
        hv_bits = 32 * n_entries
        huff = math.ceil(hv_bits / 8) + math.ceil(hi_bits / 8) + table
    return LayerSize(name, kind, list(w.shape), params, int(np.count_nonzero(w)), n_entries,
                     int(enc["fillers"].sum()), ib, b, k, 4 * int(bias_params), 4 * params,
                     math.ceil(csr_bits / 8), shared_bytes, huff, hv_bits, hi_bits)


def size_report(mod) -> SizeReport:
    """Per-layer sizes of every conv/fc layer with inline constant weights in ``mod`` (a Relax module)."""
    from .layers import layers as layer_list, weight_arrays

    try:
        weights = weight_arrays(mod)
        info = {l.name: l for l in layer_list(mod)}
    except Exception as e:  # noqa: BLE001
        raise SqccError(f"size report: cannot read the model's weights ({one_line(e)})") from e
    rep = SizeReport()
    for name, w in weights.items():
        lay = info.get(name)
        op = lay.op if lay else "relax.nn.conv2d"
        kind = "fc" if op == "relax.matmul" else "conv"
        bias = max(0, (lay.params if lay else w.size) - int(w.size))
        rep.layers.append(layer_size(name, w, kind, bias))
    return rep


def format_size_report(d: dict) -> str:
    """A table of a size report's JSON (``SizeReport.to_json()``)."""
    rows = [f"{'layer':<12} {'kind':<4} {'params':>9} {'density':>7} {'bits':>4} {'dense':>10} {'csr':>10} "
            f"{'shared':>10} {'huffman':>10}"]
    for l in d["layers"]:
        rows.append(f"{l['layer']:<12} {l['kind']:<4} {l['params']:>9,} {l['density']:>7.3f} "
                    f"{(l['value_bits'] or 32):>4} {l['dense_bytes']:>10,} {l['csr_bytes']:>10,} "
                    f"{l['shared_bytes']:>10,} {l['huffman_bytes']:>10,}")
    t = d["totals"]
    rows.append(f"{'biases':<12} {'':<4} {'':>9} {'':>7} {'32':>4} " + " ".join(
        f"{t['bias_bytes']:>10,}" for _ in range(4)))
    rows.append(f"{'total':<12} {'':<4} {t['params']:>9,} {t['density']:>7.3f} {'':>4} "
                + " ".join(f"{t[k + '_total_bytes']:>10,}" for k in ("dense", "csr", "shared", "huffman")))
    rows.append(f"{'MiB':<12} {'':<4} {'':>9} {'':>7} {'':>4} "
                + " ".join(f"{t[k + '_total_bytes'] / MIB:>10.3f}" for k in ("dense", "csr", "shared", "huffman")))
    p = d.get("paper") or PAPER
    rows.append(f"compression {t['compression']:.1f}× (dense → Huffman); paper, {p['model']}: "
                f"{p['dense_mb']} MB → {p['8bit_mb']} MB (8-bit) → {p['6bit_mb']} MB (6-bit) at "
                f"{100 * p['density']:.0f}% density")
    return "\n".join(rows)
