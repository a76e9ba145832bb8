"""All generators, and the one function that turns (seed, index) into a case: known cases first,
then a family drawn by weight and a generator within it, each with its own deterministic RNG — so a
case is regenerated exactly from the campaign seed and its index."""
from __future__ import annotations

import shutil
from pathlib import Path

from . import gen_api, gen_cli, gen_feeds, gen_images, gen_onnx, gen_packages, gen_tflite
from .case import Case, Ctx, case_rng
from .known import KNOWN

FAMILIES = {  # family → (generators {name: (fn, weight)}, family weight)
    "onnx": (gen_onnx.GENERATORS, 5),
    "tflite": (gen_tflite.GENERATORS, 3),
    "feed": (gen_feeds.GENERATORS, 3),
    "image": (gen_images.GENERATORS, 3),
    "package": (gen_packages.GENERATORS, 4),
    "cli": (gen_cli.GENERATORS, 5),
    "api": (gen_api.GENERATORS, 2),
}
ALL = {name: fn for gens, _ in FAMILIES.values() for name, (fn, _) in gens.items()}


def case_id(index: int) -> str:
    return f"c{index:05d}"


def pick(rng, only=None) -> str:
    """A generator name: family by weight, then generator by weight (``only``: family or name prefixes)."""
    fams = {f: v for f, v in FAMILIES.items() if not only or any(f.startswith(o.split(".")[0]) for o in only)}
    fam = rng.choices(list(fams), weights=[w for _, w in fams.values()])[0]
    gens = {n: w for n, (_, w) in fams[fam][0].items() if not only or any(n.startswith(o) for o in only)}
    return rng.choices(list(gens), weights=list(gens.values()))[0]


def make_case(seed: int, index: int, scratch: Path, assets, known: bool = True, only=None, plan=None) -> Case:
    """Write case ``index`` of campaign ``seed`` into ``scratch`` (emptied first) and describe it.
    ``plan``: generator names to cycle through after the known cases, instead of drawing them."""
    scratch = Path(scratch)
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    rng = case_rng(seed, index)
    ctx = Ctx(rng=rng, dir=scratch, assets=assets, seed=seed, index=index)
    k = len(KNOWN) if known else 0
    if index < k:
        case = KNOWN[index](ctx)
    elif plan:
        case = ALL[plan[(index - k) % len(plan)]](ctx)
    else:
        case = ALL[pick(rng, only)](ctx)
    case.id, case.index, case.inputs = case_id(index), index, list(ctx.written)
    return case
