"""Deep Compression: prune / share passes, the Huffman and relative-index CSR encoders (round trips),
the size report's consistency on SqueezeNet 1.1, the pruned+shared model running on real images,
and the errors for bad parameters."""
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
IMAGES = SHARED / "data" / "imagenet-sample"


@pytest.fixture(scope="module")
def squeezenet():
    from sqcc import frontend

    return frontend.load("squeezenet1.1")


@pytest.fixture(scope="module")
def pruned_shared(squeezenet):
    from sqcc import passes

    ctx = passes.PassContext()
    mod = passes.create("prune:sparsity=0.6,fit=weight", ctx)(squeezenet.mod)
    mod = passes.create("share:bits=6", ctx)(mod)
    return mod, ctx


# ------------------------------------------------------------------------------------- Huffman

@pytest.mark.parametrize("kind", ["skewed", "uniform", "single", "two"])
def test_huffman_round_trip(kind):
    from sqcc.size_report import canonical_codes, huffman_bits, huffman_decode, huffman_encode, huffman_lengths

    rng = np.random.default_rng(0)
    sym = {"skewed": rng.geometric(0.3, 5000) - 1, "uniform": rng.integers(0, 64, 3000),
           "single": np.full(100, 7), "two": rng.integers(0, 2, 333)}[kind]
    vals, counts = np.unique(sym, return_counts=True)
    lengths = huffman_lengths(dict(zip(vals.tolist(), counts.tolist())))
    # Kraft equality (a complete prefix code) unless there is a single symbol
    if len(vals) > 1:
        assert sum(2.0 ** -l for l in lengths.values()) == pytest.approx(1.0)
    codes = canonical_codes(lengths)
    data, nbits = huffman_encode(sym, codes)
    assert nbits == sum(lengths[s] for s in sym.tolist()) and len(data) == (nbits + 7) // 8
    assert np.array_equal(huffman_decode(data, nbits, codes, len(sym)), sym)
    # optimal: within one bit per symbol of the entropy
    p = counts / counts.sum()
    entropy = float(-(p * np.log2(p)).sum()) * len(sym)
    assert entropy <= nbits <= entropy + len(sym) + 1e-9
    assert huffman_bits(sym)[0] == nbits


def test_relative_index_csr_round_trip_with_fillers():
    from sqcc.size_report import relative_index_decode, relative_index_encode

    rng = np.random.default_rng(1)
    for bits in (8, 5, 2):
        w = np.zeros(5000, np.float32)
        pos = np.sort(rng.choice(5000, 300, replace=False))
        pos = np.unique(np.concatenate([pos, [0, 4999, 1200]]))
        w[pos] = rng.standard_normal(len(pos)).astype(np.float32)
        w[1300:2600] = 0  # a gap far beyond 2^bits: filler zeros
        stored, positions, filler = relative_index_encode(w, bits)
        assert stored.min() >= 0 and stored.max() < 2 ** bits
        assert filler.sum() > 0 and np.all(w[positions[filler]] == 0)
        assert np.count_nonzero(~filler) == np.count_nonzero(w)
        back = relative_index_decode(stored, w[positions], w.size)
        assert np.array_equal(back, w)


# ---------------------------------------------------------------------------------- the passes

def test_prune_scopes_and_sensitivity(squeezenet):
    from sqcc import passes
    from sqcc.layers import weight_arrays

    orig = weight_arrays(squeezenet.mod)
    total = sum(w.size for w in orig.values())
    for spec in ("prune:sparsity=0.6,fit=weight", "prune:sparsity=0.6,scope=global,fit=weight",
                 "prune:sparsity=0.6,sensitivity=true,fit=weight"):
        ctx = passes.PassContext()
        ws = weight_arrays(passes.create(spec, ctx)(squeezenet.mod))
        zeros = sum(int((w == 0).sum()) for w in ws.values())
        assert zeros / total == pytest.approx(0.6, abs=0.01), spec
        per = ctx.extra["deep_compression"]["prune"]["per_layer"]
        if "scope" in spec or "sensitivity" in spec:
            assert max(per.values()) - min(per.values()) > 0.05  # the layers differ
        else:
            assert all(abs(s - 0.6) < 0.001 for s in per.values())
        # magnitude pruning: every kept weight is at least as large as every removed one
        w0, w1 = orig["conv21"], ws["conv21"]
        assert np.abs(w0[w1 != 0]).min() >= np.abs(w0[w1 == 0]).max()
    ctx = passes.PassContext()
    ws = weight_arrays(passes.create("prune:sparsity=0", ctx)(squeezenet.mod))
    assert all(np.array_equal(ws[k], orig[k]) for k in orig)


def test_data_aware_prune_lowers_output_error(squeezenet):
    """With calibration activations the kept weights are refitted (and the bias corrected): the
    output error on those activations drops below plain magnitude pruning's."""
    from sqcc import passes

    rng = np.random.default_rng(0)
    acts = {"conv25": np.maximum(rng.standard_normal((2, 512, 13, 13)) + 0.5, 0).astype(np.float32)}
    errs = {}
    for fit in ("weight", "data"):
        ctx = passes.PassContext(activations=acts)
        passes.create(f"prune:sparsity=0.6,layers=conv25,fit={fit}", ctx)(squeezenet.mod)
        (rec,) = ctx.records
        errs[fit] = rec.output_error
    assert errs["data"] < errs["weight"]


def test_share_codebook(pruned_shared, squeezenet):
    from sqcc.layers import weight_arrays

    mod, ctx = pruned_shared
    ws = weight_arrays(mod)
    books = ctx.extra["deep_compression"]["share"]
    for name, w in ws.items():
        vals = np.unique(w)
        assert len(vals) <= 64 and 0.0 in vals  # 63 centroids + the pruned zero
        assert set(vals.tolist()) <= set(np.float32(books[name]["codebook"]).tolist())
    # zeros stay zeros, non-zeros stay non-zero
    assert all(np.count_nonzero(w) == np.count_nonzero(weight_arrays(mod)[n]) for n, w in ws.items())


def test_kmeans_linear_init_converges():
    from sqcc.passes.deep_compression import kmeans_1d

    rng = np.random.default_rng(0)
    v = np.concatenate([rng.normal(-1, 0.05, 500), rng.normal(0.5, 0.05, 300), rng.normal(2, 0.05, 200)])
    c, labels = kmeans_1d(v, 3)
    assert np.allclose(c, [-1, 0.5, 2], atol=0.02)
    assert np.array_equal(np.bincount(labels), [500, 300, 200])


# --------------------------------------------------------------------------------- size report

def test_size_report_is_consistent(pruned_shared):
    from sqcc.size_report import encode_layer, format_size_report, huffman_decode, relative_index_decode, \
        size_report
    from sqcc.layers import weight_arrays

    mod, _ = pruned_shared
    rep = size_report(mod)
    d = rep.to_json()
    t = d["totals"]
    ws = weight_arrays(mod)
    assert t["params"] == sum(w.size for w in ws.values()) == 1_231_552
    assert t["dense_bytes"] == 4 * t["params"] and t["bias_bytes"] == 4 * 3_944
    assert t["density"] == pytest.approx(0.4, abs=0.01)
    for l in rep.layers:
        # the codebook is what the layer uses: ≤ 2^6 values (zero and the centroids that got weights)
        assert l.value_bits <= 6 and l.codebook <= 64 and l.index_bits == 8
        assert l.entries == l.nonzeros + l.fillers
        assert l.csr_bytes == -(-l.entries * (32 + 8) // 8)
        assert l.shared_bytes == -(-l.entries * (l.value_bits + 8) // 8) + 4 * l.codebook
        assert l.huffman_bytes < l.shared_bytes < l.csr_bytes < l.dense_bytes
    for k in ("dense", "csr", "shared", "huffman"):
        assert t[f"{k}_total_bytes"] == sum(getattr(l, f"{k}_bytes") for l in rep.layers) + t["bias_bytes"]
    # the encoded streams decode back to the pruned+shared weights (CSR and Huffman both lossless)
    for name in ("conv0", "conv21", "conv25"):
        w = ws[name]
        enc = encode_layer(w, "conv")
        values = enc["codebook"][enc["symbols"]]
        assert np.array_equal(relative_index_decode(enc["stored_gaps"], values, w.size).reshape(w.shape), w)
        if name != "conv25":  # the bit-by-bit decoder is slow; two layers suffice
            from sqcc.size_report import canonical_codes, huffman_encode, huffman_lengths

            for stream in (enc["symbols"], enc["stored_gaps"]):
                vals, counts = np.unique(stream, return_counts=True)
                codes = canonical_codes(huffman_lengths(dict(zip(vals.tolist(), counts.tolist()))))
                data, nbits = huffman_encode(stream, codes)
                assert np.array_equal(huffman_decode(data, nbits, codes, len(stream)), stream)
    table = format_size_report(d)
    assert "total" in table and "0.47 MB (6-bit)" in table
    # 6-bit, 40% density: about a tenth of the dense model (the paper: 4.8 MB → 0.47 MB at 33%)
    assert 0.05 < t["huffman_total_bytes"] / t["dense_total_bytes"] < 0.15


def test_size_report_fc_index_bits():
    from sqcc.size_report import layer_size

    w = np.zeros((10, 100), np.float32)
    w[:, ::40] = 1.5
    s = layer_size("fc", w, "fc")
    assert s.index_bits == 5 and s.fillers > 0  # gaps of 40 > 2^5 need fillers
    assert s.entries == s.nonzeros + s.fillers


# ------------------------------------------------------------------------------- runs on images

def test_pruned_shared_squeezenet_runs_and_reports_agreement(pruned_shared, squeezenet):
    import tvm
    from tvm import relax

    from sqcc.build import build
    from sqcc.preprocess import list_images, load_image
    from sqcc.reference import reference_session

    mod, _ = pruned_shared
    files = list_images(IMAGES)[::25][:8]
    xs = [load_image(f, squeezenet.preprocess) for f in files]
    vm = relax.VirtualMachine(build(mod, "host"), tvm.cpu())
    sess = reference_session(squeezenet)
    agree = 0
    for x in xs:
        ours = vm["main"](tvm.runtime.tensor(x, tvm.cpu())).numpy().ravel()
        ref = sess.run({squeezenet.inputs[0].name: x})[0].ravel()
        assert np.isfinite(ours).all() and ours.shape == ref.shape
        agree += int(ours.argmax() == ref.argmax())
    print(f"\nprune 0.6 (magnitude, no retraining) + share 6 bits: top-1 agreement {agree}/{len(xs)}")


# ------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("spec,msg", [
    ("prune:sparsity=1", r"sparsity=1.* must be in \[0, 1\)"),
    ("prune:sparsity=1.5", r"must be in \[0, 1\)"),
    ("prune:sparsity=-0.1", r"must be in \[0, 1\)"),
    ("prune:sparsity=abc", "expected a number"),
    ("prune:sparsity=0.5,scope=tree", "expected one of"),
    ("share:bits=0", r"bits=0 out of range: must be 1..8"),
    ("share:bits=9", r"bits=9 out of range: must be 1..8"),
    ("share:bits=x", "expected an integer"),
])
def test_bad_parameters(spec, msg):
    from sqcc import passes
    from sqcc.errors import SqccError

    with pytest.raises(SqccError, match=msg):
        passes.create(spec)


def test_unknown_layer(squeezenet):
    from sqcc import passes
    from sqcc.errors import SqccError

    with pytest.raises(SqccError, match="no conv/fc layer"):
        passes.create("prune:sparsity=0.5,layers=nope")(squeezenet.mod)
