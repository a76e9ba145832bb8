"""What did the compile cost? Run the compiled model and the reference (the *original* model in
onnxruntime or LiteRT) on the same inputs and compare: max abs / relative error, relative L2 error of
the outputs, top-1 agreement and top-5 overlap; top-1/top-5 accuracy when images carry labels.
Numbers come from running both models, never from estimates.
"""
from __future__ import annotations

import numpy as np

from .errors import SqccError
from .preprocess import list_images, load_image, load_labels


def output_errors(ours: np.ndarray, ref: np.ndarray) -> dict:
    ours = np.asarray(ours, np.float64)
    ref = np.asarray(ref, np.float64)
    diff = np.abs(ours - ref)
    scale = float(np.abs(ref).max()) or 1.0
    return {"max_abs": float(diff.max()), "max_rel": float(diff.max()) / scale,
            "rel_l2": float(np.linalg.norm(ours - ref) / (np.linalg.norm(ref) or 1.0))}


class Agreement:
    """Accumulates per-input comparisons of the first output (classification logits)."""

    def __init__(self, class_offset: int = 0):
        self.n = 0
        self.top1_agree = 0
        self.top5_overlap = 0.0
        self.max_abs = 0.0
        self.max_rel = 0.0
        self.sq_err = 0.0
        self.sq_ref = 0.0
        self.sq_ours = 0.0
        self.dot = 0.0  # Σ ours·ref, for the cosine similarity
        self.labelled = 0
        self.correct = {"ours_top1": 0, "ours_top5": 0, "ref_top1": 0, "ref_top5": 0}
        self.class_offset = class_offset

    def add(self, ours: np.ndarray, ref: np.ndarray, label: int | None = None):
        o = np.asarray(ours, np.float64).reshape(-1)
        r = np.asarray(ref, np.float64).reshape(-1)
        e = output_errors(o, r)
        self.max_abs = max(self.max_abs, e["max_abs"])
        self.max_rel = max(self.max_rel, e["max_rel"])
        self.sq_err += float(np.sum((o - r) ** 2))
        self.sq_ref += float(np.sum(r ** 2))
        self.sq_ours += float(np.sum(o ** 2))
        self.dot += float(o @ r)
        self.n += 1
        k = min(5, o.size)
        to, tr = np.argsort(-o, kind="stable")[:k], np.argsort(-r, kind="stable")[:k]
        self.top1_agree += int(to[0] == tr[0])
        self.top5_overlap += len(set(to) & set(tr)) / k
        if label is not None:
            lab = label + self.class_offset
            self.labelled += 1
            self.correct["ours_top1"] += int(to[0] == lab)
            self.correct["ours_top5"] += int(lab in to)
            self.correct["ref_top1"] += int(tr[0] == lab)
            self.correct["ref_top5"] += int(lab in tr)

    def summary(self) -> dict:
        d = {"inputs": self.n, "max_abs": self.max_abs, "max_rel": self.max_rel,
             "rel_l2": (self.sq_err / self.sq_ref) ** 0.5 if self.sq_ref else 0.0,
             "cosine": (self.dot / (self.sq_ours * self.sq_ref) ** 0.5 if self.sq_ours and self.sq_ref
                        else float(self.sq_ours == self.sq_ref)),
             "top1_agreement": self.top1_agree / self.n if self.n else None,
             "top1_agree_count": self.top1_agree,
             "top5_overlap": self.top5_overlap / self.n if self.n else None}
        if self.labelled:
            d["labelled"] = self.labelled
            for k, v in self.correct.items():
                d[f"{k}_count"] = v
                d[k] = v / self.labelled
        return d


FLOAT_TOLERANCE = 1e-4  # of each output's largest magnitude: what "unchanged numerics" means here
INT_TOLERANCE = 1  # quantisation steps: an int8 model's outputs may round differently by one step


def is_class_scores(shape) -> bool:
    """A class-score vector ([1, K] or [K], K ≥ 2): where top-1/top-5 agreement means something."""
    dims = [int(d) for d in shape]
    return (len(dims) == 1 and dims[0] >= 2) or (len(dims) == 2 and dims[0] == 1 and dims[1] >= 2)


def compare_on_inputs(run, ref, feeds: list[dict], outputs=None) -> dict:
    """``run(feed) -> outputs list`` vs the reference on each feed, every output compared.

    Returns the worst errors over all outputs at the top level (``max_abs``, ``max_rel``, ``rel_l2``),
    top-1/top-5 agreement of the first class-score output, and one entry per output in ``outputs``
    (name, shape, dtype, errors, cosine similarity, and agreement where it is a class-score vector)."""
    per = []
    for feed in feeds:
        ours, theirs = run(feed), ref.run(feed)
        if len(ours) != len(theirs):
            raise SqccError(f"the compiled model returns {len(ours)} output(s), the reference "
                            f"{len(theirs)}")
        per = per or [Agreement() for _ in ours]
        for k, (o, r) in enumerate(zip(ours, theirs)):
            o, r = np.asarray(o), np.asarray(r)
            if o.shape != r.shape:
                name = outputs[k].name if outputs else f"#{k}"
                raise SqccError(f"output '{name}': shape {list(o.shape)} compiled, "
                                f"{list(r.shape)} in the reference")
            per[k].add(o, r)
    rows = []
    for k, agg in enumerate(per):
        spec = outputs[k] if outputs and k < len(outputs) else None
        d = agg.summary()
        row = {"name": spec.name if spec else f"output_{k}", "shape": list(spec.shape) if spec else [],
               "dtype": spec.dtype if spec else "float32",
               **{key: d[key] for key in ("max_abs", "max_rel", "rel_l2", "cosine")}}
        if spec is None or is_class_scores(spec.shape):
            row.update({key: d[key] for key in ("top1_agreement", "top1_agree_count", "top5_overlap")})
        rows.append(row)
    return _summarise(rows, len(feeds))


def _summarise(rows, n_inputs) -> dict:
    d = {"inputs": n_inputs, "outputs": rows,
         "max_abs": max((r["max_abs"] for r in rows), default=0.0),
         "max_rel": max((r["max_rel"] for r in rows), default=0.0),
         "rel_l2": max((r["rel_l2"] for r in rows), default=0.0),
         "top1_agreement": None}
    cls = next((r for r in rows if "top1_agreement" in r), None)
    if cls is not None:
        d.update(top1_agreement=cls["top1_agreement"], top1_agree_count=cls["top1_agree_count"],
                 top5_overlap=cls["top5_overlap"])
    return d


def numerics_misses(fidelity: dict) -> list[str]:
    """The outputs whose error exceeds what an unchanged compile may have, one phrase each."""
    misses = []
    for r in fidelity.get("outputs", []):
        integer = not str(r["dtype"]).startswith("float")
        if integer and r["max_abs"] > INT_TOLERANCE:
            misses.append(f"'{r['name']}' differs by {r['max_abs']:.0f} quantisation steps "
                          f"(> {INT_TOLERANCE})")
        elif not integer and r["max_rel"] > FLOAT_TOLERANCE:
            misses.append(f"'{r['name']}' max rel err {r['max_rel']:.3g} (> {FLOAT_TOLERANCE:g} of its "
                          f"largest magnitude)")
    return misses


def evaluate_images(run, ref, folder, preprocess, input_spec, quant=None, limit=None,
                    progress=None) -> dict:
    """Accuracy and agreement on a folder of images (``labels.json`` optional)."""
    if preprocess is None:
        raise SqccError("the model has no preprocessing recipe (not a known model): give --preprocess "
                        "(e.g. size=224,resize=256,mean=...,std=...) to feed it images")
    files = list_images(folder)
    labels = load_labels(folder)
    if limit:
        files = files[:limit]
    agg = Agreement(class_offset=preprocess.class_offset)
    for k, f in enumerate(files):
        x = load_image(f, preprocess, input_spec.dtype, quant)
        if tuple(x.shape) != tuple(input_spec.shape):
            raise SqccError(f"{f}: preprocessed to shape {list(x.shape)}, the model input "
                            f"'{input_spec.name}' is {list(input_spec.shape)}")
        feed = {input_spec.name: x}
        label = labels.get(f.name) if labels else None
        agg.add(run(feed)[0], ref.run(feed)[0], label)
        if progress and (k + 1) % 20 == 0:
            progress(f"evaluated {k + 1}/{len(files)} images")
    d = agg.summary()
    d["folder"] = str(folder)
    return d


def format_fidelity(d: dict, ref_name: str = "reference") -> str:
    parts = [f"vs {ref_name} on {d['inputs']} input(s): max abs err {d['max_abs']:.3g}, "
             f"max rel err {d['max_rel']:.3g}, rel L2 {d['rel_l2']:.3g}"]
    if d.get("top1_agreement") is not None:
        parts.append(f"top-1 agreement {d['top1_agree_count']}/{d['inputs']} ({100 * d['top1_agreement']:.1f}%), "
                     f"top-5 overlap {100 * d['top5_overlap']:.1f}%")
    if d.get("labelled"):
        parts.append(f"top-1 accuracy: sqcc {d['ours_top1_count']}/{d['labelled']} = {d['ours_top1']:.3f}, "
                     f"{ref_name} {d['ref_top1_count']}/{d['labelled']} = {d['ref_top1']:.3f}; "
                     f"top-5: sqcc {d['ours_top5']:.3f}, {ref_name} {d['ref_top5']:.3f}")
    outs = d.get("outputs") or []
    if len(outs) > 1:
        for r in outs:
            parts.append(f"output {r['name']} {'x'.join(map(str, r['shape']))}: max abs err "
                         f"{r['max_abs']:.3g}, max rel err {r['max_rel']:.3g}, cosine {r['cosine']:.6f}")
    return "\n  ".join(parts)


def reference_for_package(pkg, threads: int | None = None, spinning: bool = True):
    """The reference runtime for a package's source model (onnxruntime for ONNX, LiteRT for TFLite)."""
    from types import SimpleNamespace

    from .reference import reference_session

    if pkg.source is None:
        raise SqccError("the package does not contain its source model; no reference to compare with")
    m = pkg.manifest
    model = SimpleNamespace(source=pkg.source, format=m["model"]["format"], name=m["model"]["name"],
                            inputs=pkg.inputs, outputs=pkg.outputs, quant=m.get("quant") or {})
    return reference_session(model, threads=threads, spinning=spinning)
