"""Calibration: real input activations of every conv/matmul layer, for data-aware fitting.

:func:`collect_activations` builds a variant of the model whose ``main`` also returns the input of
each conv2d/matmul with a constant weight, runs it on calibration inputs and returns
``{layer name: activations}`` (N×C×H×W for conv, N×K for matmul, N = number of inputs).
:func:`patch_covariance` turns a conv's input activations into the second-moment matrix of its
im2col patches, Σ = E[p pᵀ] (per group), from which every factorisation pass computes its data-aware
fit and the output error ‖(W − Ŵ)P‖/‖WP‖ = sqrt(tr(DΣDᵀ)/tr(WΣWᵀ)) exactly, without running convs.

Images come through the model's own preprocessing (:func:`sqcc.preprocess.load_image`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import SqccError
from .frontend import check_feed, read_tensor_file


# ------------------------------------------------------------------------------------------- images

def load_calibration_images(folder, preprocess, n: int | None = None, input_spec=None,
                            quant: dict | None = None, views: int = 1) -> list[np.ndarray]:
    """Up to ``n`` images of ``folder`` as batch-1 input tensors (sorted by file name, spread evenly
    over the folder when there are more than ``n``). ``input_spec`` (a TensorSpec) checks the shape.
    ``views`` > 1 adds the next views of each image from ``preprocess.VIEWS`` (its mirror, then
    corner crops: more calibration data from the same images), *view-major*: all images' first
    view, then all images' second, and so on. With an even number of images every even/odd split of
    the result (the held-out halves of ``sqcc.planning``) is then a split of the images, so no image
    is on both sides; an odd number of images loses its last one when ``views`` > 1."""
    from .preprocess import VIEWS, list_images, load_image

    folder = Path(folder)
    if not folder.exists():
        raise SqccError(f"calibration folder {folder}: does not exist")
    if not folder.is_dir():
        raise SqccError(f"calibration folder {folder}: not a directory")
    try:
        files = list_images(folder)
    except SqccError:
        raise SqccError(f"calibration folder {folder}: contains no images") from None
    if preprocess is None:
        raise SqccError(f"calibration folder {folder}: the model has no image preprocessing recipe "
                        "(not a known model); calibrate with input arrays through the API instead")
    if n is not None and n < len(files):
        idx = np.linspace(0, len(files) - 1, n).round().astype(int)
        files = [files[i] for i in idx]
    if not 1 <= int(views) <= len(VIEWS):
        raise SqccError(f"calibration views={views} out of range: 1 to {len(VIEWS)} (the ten-crop views)")
    if views > 1 and len(files) % 2 and len(files) > 1:
        files = files[:-1]
    dtype = input_spec.dtype if input_spec is not None else "float32"
    out = []
    for view in VIEWS[:int(views)]:
        for f in files:
            x = load_image(f, preprocess, dtype=dtype, quant=quant, view=view)
            if input_spec is not None and tuple(x.shape) != tuple(input_spec.shape):
                raise SqccError(f"calibration image {f.name} becomes a {list(x.shape)} tensor, but the "
                                f"model's input '{input_spec.name}' is {list(input_spec.shape)}: "
                                f"calibration folder and model do not match")
            out.append(x)
    return out


TENSOR_SUFFIXES = (".npy", ".npz", ".pb")


def tensor_files(folder) -> list:
    """The .npy / .npz / TensorProto .pb files of a folder (sorted), or [] (then it holds images)."""
    d = Path(folder)
    if not d.is_dir():
        return []
    return sorted(f for f in d.iterdir() if f.suffix in TENSOR_SUFFIXES and f.is_file())


def calibration_feeds(model, source, limit: int = 32, views: int = 1) -> list[dict]:
    """Calibration inputs for ``model`` (a frontend.Model): ``[{input name: array}]``.

    ``source``: a folder of images (``limit`` of them, spread over the folder, ``views`` views of
    each: :func:`load_calibration_images`), a folder of tensor feeds (one feed per file: ``.npz``
    with one array per input name, or ``.npy`` / TensorProto ``.pb`` for a one-input model), or any
    Python iterable of feed dicts (the first ``limit`` are taken, so a generator is not exhausted).
    Only ``limit`` feeds are ever held in memory."""
    if not isinstance(source, (str, Path)):
        return [check_feed(model.inputs, f, f"calibration feed #{k}") for k, f in
                zip(range(limit), source)]
    files = tensor_files(source)
    if files:
        step = max(1, len(files) // max(1, limit))
        return [check_feed(model.inputs, read_feed(f, model), str(f)) for f in files[::step][:limit]]
    return _image_feeds(model, source, limit, views)


def read_feed(path: Path, model) -> dict:
    """One feed from a .npz (arrays by input name), .npy or TensorProto .pb file (a one-input model)."""
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as e:  # noqa: BLE001 -- a corrupt file is the user's to fix: name it
            raise SqccError(f"{path}: cannot read a tensor ({type(e).__name__})") from None
        if len(arrays) == 1 and len(model.inputs) == 1:
            return {model.inputs[0].name: next(iter(arrays.values()))}
        return arrays
    if len(model.inputs) != 1:
        raise SqccError(f"{path}: {model.name} has {len(model.inputs)} inputs; give one .npz per feed "
                        f"with arrays named {', '.join(s.name for s in model.inputs)}")
    return {model.inputs[0].name: read_tensor_file(path)}


def _image_feeds(model, folder, limit: int, views: int) -> list[dict]:
    if len(model.inputs) != 1:
        raise SqccError(f"calibration from an image folder needs a model with one input; "
                        f"{model.name} has {len(model.inputs)}")
    spec = model.inputs[0]
    q = (model.quant or {}).get("inputs", [None])[0] if model.quant else None
    xs = load_calibration_images(folder, model.preprocess, limit, spec, q, views)
    return [{spec.name: x} for x in xs]


# -------------------------------------------------------------------------------------- activations

def _weighted_bindings(func, layers=None):
    """[(name, data expr)] of conv2d / matmul bindings with constant weights, in order; with ``layers``,
    also the channel gathers (``take``) named there, which feed a rewritten chain (dwsep with per-channel
    multipliers): their input is the chain's input."""
    from tvm import relax

    from .layers import is_const, op_name

    out = []
    for block in func.body.blocks:
        for b in block.bindings:
            op = op_name(b.value)
            gather = op == "relax.take" and layers is not None and b.var.name in layers
            if gather or op in ("relax.nn.conv2d", "relax.matmul") and len(b.value.args) > 1 \
                    and is_const(b.value.args[1]):
                if layers is not None and b.var.name not in layers:
                    continue
                data = b.value.args[0]
                if isinstance(data, relax.Var):
                    out.append((b.var.name, data))
    return out


def instrument(mod, layers=None):
    """``mod`` with ``main`` returning ``(original output, input of layer 1, input of layer 2, ...)``
    (dataflow blocks flattened so the taps can leave them); also the list of layer names in order."""
    from tvm import relax

    from .layers import tvm_ir_update

    mod = relax.transform.ToNonDataflow()(mod)
    func = mod["main"]
    taps = _weighted_bindings(func, layers)
    names = [n for n, _ in taps]
    outs = [func.body.body] + [d for _, d in taps]
    seq = relax.SeqExpr(list(func.body.blocks), relax.Tuple(outs))
    new_func = relax.Function(func.params, seq, relax.TupleType([o.ty for o in outs]), attrs=func.attrs)
    new_mod = tvm_ir_update(mod, "main", new_func)
    return relax.transform.Normalize()(new_mod), names


def _build(mod):
    from .build import build

    return build(mod, "host")  # the detected CPU, sqcc's default schedules


def collect_activations(model_mod, inputs: list, layers=None, max_samples: int = 64,
                        progress=None) -> dict:
    """Run ``model_mod`` on ``inputs`` (``[{input name: array}]``, at most ``max_samples`` of them) and
    return ``{layer name: stacked input activations}`` for every conv2d/matmul with a constant weight
    (or only ``layers``). Arrays are float32, N×C×H×W (conv) or N×K (matmul)."""
    import tvm
    from tvm import relax

    if not inputs:
        raise SqccError("calibration: no calibration inputs")
    inputs = list(inputs)[:max_samples]
    main = model_mod["main"]
    params = [p.name for p in main.params]
    batches = []
    for k, feed in enumerate(inputs):  # validate every input before paying for a build
        missing = [p for p in params if p not in feed]
        if missing:
            raise SqccError(f"calibration input {k} lacks model input(s) {', '.join(missing)}")
        args = []
        for p, pv in zip(params, main.params):
            x = np.asarray(feed[p])
            want = tuple(int(d) for d in pv.ty.shape)
            if tuple(x.shape) != want:
                raise SqccError(f"calibration input {k}: '{p}' has shape {list(x.shape)}, the model "
                                f"expects {list(want)}")
            args.append(np.ascontiguousarray(x.astype(str(pv.ty.dtype))))
        batches.append(args)
    mod, names = instrument(model_mod, set(layers) if layers is not None else None)
    if not names:
        return {}
    ex = _build(mod)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    acts: dict[str, list] = {n: [] for n in names}
    for k, args in enumerate(batches):
        res = vm["main"](*[tvm.runtime.tensor(a, tvm.cpu()) for a in args])
        for j, n in enumerate(names):
            acts[n].append(res[j + 1].numpy())
        if progress and (k + 1) % 8 == 0:
            progress(f"calibration {k + 1}/{len(inputs)}")
    return {n: np.concatenate(v, axis=0) for n, v in acts.items()}


# ---------------------------------------------------------------------------------- patch statistics

def conv_out_hw(h, w, kernel, strides, padding, dilation):
    """Output height and width of a conv (padding: top, left, bottom, right)."""
    kh, kw = kernel
    pt, pl, pb, pr = padding
    ho = (h + pt + pb - dilation[0] * (kh - 1) - 1) // strides[0] + 1
    wo = (w + pl + pr - dilation[1] * (kw - 1) - 1) // strides[1] + 1
    return ho, wo


def patch_covariance(x: np.ndarray, kernel=(1, 1), strides=(1, 1), padding=(0, 0, 0, 0),
                     dilation=(1, 1), groups: int = 1, max_positions: int = 20000,
                     seed: int = 0, return_mean: bool = False):
    """Second moments Σ = E[p pᵀ] of the conv's im2col patches, per group: shape (groups, d, d) with
    d = (C/groups)·Kh·Kw ordered (c, y, x) like a row of the OIHW weight. ``x``: N×C×H×W
    activations (or N×K for a matmul: kernel/strides ignored). At most ``max_positions`` output
    positions (sampled uniformly over images and pixels) are used. float64. With ``return_mean``
    also the patch means μ = E[p], shape (groups, d)."""
    x = np.asarray(x)
    if x.ndim == 2:
        p = x.astype(np.float64)
        if len(p) > max_positions:
            p = p[np.random.default_rng(seed).choice(len(p), max_positions, replace=False)]
        cov = (p.T @ p / max(len(p), 1))[None]
        return (cov, p.mean(0)[None]) if return_mean else cov
    p = _patches(x, kernel, strides, padding, dilation, groups, max_positions, seed)
    m = max(len(p), 1)
    if p.shape[1] == 1:
        cov = (p[:, 0].T @ p[:, 0])[None]
    else:
        cov = np.einsum("mgd,mge->gde", p, p, optimize=True)
    cov = cov / m
    return (cov, p.mean(0)) if return_mean else cov


def _patches(x, kernel, strides, padding, dilation, groups, max_positions, seed):
    """im2col patches at up to ``max_positions`` sampled output positions: (M, groups, d) float64.
    The sample depends only on the shapes and the seed, so two tensors of one shape share it."""
    n, c, h, w = x.shape
    kh, kw = kernel
    pt, pl, pb, pr = padding
    ho, wo = conv_out_hw(h, w, kernel, strides, padding, dilation)
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    total = n * ho * wo
    rng = np.random.default_rng(seed)
    if total > max_positions:
        flat = np.sort(rng.choice(total, max_positions, replace=False))
    else:
        flat = np.arange(total)
    img, rem = np.divmod(flat, ho * wo)
    i, j = np.divmod(rem, wo)
    cols = np.empty((len(flat), c, kh, kw), np.result_type(x.dtype, np.float32))
    for y in range(kh):
        for xx in range(kw):
            cols[:, :, y, xx] = xp[img, :, i * strides[0] + y * dilation[0], j * strides[1] + xx * dilation[1]]
    g = groups
    return cols.reshape(len(flat), g, (c // g) * kh * kw).astype(np.float64)


def patch_cross_moments(x, x_hat, kernel=(1, 1), strides=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1),
                        groups: int = 1, max_positions: int = 20000, seed: int = 0):
    """Moments between the patches p of the original model's activations ``x`` and p̂ of a rewritten
    model's activations ``x_hat`` at the same positions: (E[p̂p̂ᵀ], E[pp̂ᵀ], E[p̂]), per group."""
    if np.asarray(x).ndim == 2:
        p = np.asarray(x, np.float64)[:, None]
        ph = np.asarray(x_hat, np.float64)[:, None]
        if len(p) > max_positions:
            idx = np.random.default_rng(seed).choice(len(p), max_positions, replace=False)
            p, ph = p[idx], ph[idx]
    else:
        p = _patches(np.asarray(x), kernel, strides, padding, dilation, groups, max_positions, seed)
        ph = _patches(np.asarray(x_hat), kernel, strides, padding, dilation, groups, max_positions, seed)
    m = max(len(p), 1)
    hh = np.einsum("mgd,mge->gde", ph, ph, optimize=True) / m
    xh = np.einsum("mgd,mge->gde", p, ph, optimize=True) / m
    return hh, xh, ph.mean(0)
