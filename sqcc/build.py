"""Build a Relax module for a CPU target: layout, fusion, schedules (tuned or default), codegen.

``build(mod, target, tuning_records)`` is the one entry point the rest of sqcc calls. The pipeline:

1. NHWC layout with HWIO weights, folded into the constants (:mod:`sqcc.schedules.layout`) --
   only for llvm targets, where sqcc's schedules expect it;
2. TVM's zero pipeline: LegalizeOps, AnnotateTIROpPattern, FoldConstant, FuseOps, FuseTIR;
3. MetaSchedule records, when ``tuning_records`` names a database: tuned kernels replace the
   legalized ones (``MetaScheduleApplyDatabase``);
4. sqcc's default schedules for every kernel still unscheduled (:class:`DefaultSchedules`);
5. concat elimination (:mod:`sqcc.schedules.concat`): the producers of a concatenate write straight
   into their slices of its output (llvm targets; ``SQCC_CONCAT_ELIMINATION=0`` turns it off);
6. ``relax.build`` (the default VM lowering + LLVM).
"""
from __future__ import annotations

import os

from pathlib import Path

import tvm
from tvm import relax

from .errors import SqccError, one_line


def host_target(num_cores: int | None = None) -> tvm.target.Target:
    """llvm target for this machine: ``mcpu`` detected by LLVM at run time, ``num-cores`` = CPUs.

    Never hard-codes a CPU: CI machines alternate between AVX2-only and AVX-512 hosts.
    """
    mcpu = tvm.target.codegen.llvm_get_system_cpu()
    n = int(num_cores or os.cpu_count() or 1)
    if n < 1:
        raise SqccError(f"num_cores must be positive, got {num_cores}")
    cfg = {"kind": "llvm", "num-cores": n}
    if mcpu and mcpu != "generic":
        cfg["mcpu"] = mcpu
    return tvm.target.Target(cfg)


def as_target(target) -> tvm.target.Target:
    """Target from a Target, a dict, "host", or a plain kind string; SqccError when it is not one."""
    if isinstance(target, tvm.target.Target):
        return target
    if target is None or target == "host":
        return host_target()
    try:
        return tvm.target.Target(target)
    except Exception as err:  # TVM raises assorted errors for a bad target
        msg = one_line(err)
        raise SqccError(f"invalid target {target!r}: {msg}") from err


# Tiles that do not divide an extent are guarded by predicates; partitioning constant loops moves
# the guard out of the steady-state loop so only the last tile runs predicated code.
PASS_CONFIG = {"s_tir.LoopPartition": {"partition_const_loop": True}}


def _is_cpu(target: tvm.target.Target) -> bool:
    return target.kind.name in ("llvm", "c")


def lower_to_tir(mod: tvm.IRModule, target: tvm.target.Target,
                 layout: bool = True, notes: list | None = None) -> tvm.IRModule:
    """Layout + TVM's zero pipeline (without applying any database): the fused, unscheduled module.

    This is also what MetaSchedule extracts its tasks from, so tuning and building agree on the
    kernels. Where sqcc's NHWC layout conversion cannot handle the graph (TVM's ConvertLayout
    rejects e.g. some 5-D reshape/transpose chains), the model is lowered in its own layout with
    TVM's generic legalization instead -- slower, never different numerics -- and ``notes`` says so.
    """
    if layout and _is_cpu(target):
        try:
            return _lower(mod, target, layout=True)
        except SqccError:
            raise
        except Exception as err:  # noqa: BLE001 -- fall back, and say so
            if notes is not None:
                notes.append(f"layout: sqcc's NHWC conversion does not apply to this graph "
                             f"({one_line(err)[:160]}); built in the model's own layout")
    return _lower(mod, target, layout=False)


def _module_fn(fn):
    """A plain IRModule → IRModule function as a pass of a Sequential."""
    return tvm.transform.module_pass(lambda mod, _ctx: fn(mod), opt_level=0, name=fn.__name__)


def _lower(mod: tvm.IRModule, target: tvm.target.Target, layout: bool) -> tvm.IRModule:
    from sqcc.schedules.layout import nchw_conv_transpose

    seq = [relax.transform.DecomposeOpsForInference(), relax.transform.CanonicalizeBindings()]
    if layout and _is_cpu(target):
        from sqcc.schedules.cpu import cpu_info
        from sqcc.schedules.layout import pad_output_channels, split_depthwise_multiplier, to_nhwc
        from sqcc.schedules.fold import fold_constants_numpy
        from sqcc.passes.shuffle_canon import gather_to_nhwc
        seq += [split_depthwise_multiplier(), to_nhwc(), gather_to_nhwc(),
                pad_output_channels(cpu_info(target).lanes), fold_constants_numpy()]
    seq += [
        # after the layout passes: ConvertLayout may leave an NHWC conv2d_transpose, as TFLite does
        _module_fn(nchw_conv_transpose),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]
    with target:
        mod = tvm.transform.Sequential(seq)(mod)
    if _is_cpu(target):
        from sqcc.schedules.int8 import annotate_weight_range

        # int8 kernels learn their weights' range (vpmaddubsw needs |w| <= 64); done here so that
        # tuning tasks and built kernels are the same functions
        mod = annotate_weight_range(mod)
    return mod


def schedule(mod: tvm.IRModule, target, tuning_records: str | None = None,
             default_schedules: bool = True, notes: list | None = None) -> tvm.IRModule:
    """Fused module with every kernel scheduled: database records first, default rules for the rest."""
    target = as_target(target)
    mod = lower_to_tir(mod, target, notes=notes)
    with target:
        if tuning_records:
            from sqcc.schedules.records import open_database, pinned_paths
            pinned = pinned_paths(tuning_records)[0]
            # the re-measured winners (sqcc tune --revalidate) when they are newer than the records
            if pinned.exists() and pinned.stat().st_mtime >= Path(tuning_records).stat().st_mtime:
                tuning_records = str(pinned)
            db = open_database(tuning_records, target, create=False)
            with db:
                mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
        if default_schedules and _is_cpu(target):
            from sqcc.schedules import DefaultSchedules
            mod = DefaultSchedules(target)(mod)
    return mod


def build(mod: tvm.IRModule, target, tuning_records: str | None = None, notes: list | None = None):
    """Build a Relax module (ONNX frontend output, weights inline, a ``main`` function).

    Returns the executable that ``relax.VirtualMachine(ex, tvm.cpu())`` runs. ``tuning_records``
    is a MetaSchedule JSON database written by :func:`sqcc.schedules.tuning.tune`; kernels without
    a record get sqcc's default schedules.
    """
    if not isinstance(mod, tvm.IRModule) or "main" not in [gv.name_hint for gv in mod.get_global_vars()]:
        raise SqccError("build: expected a Relax IRModule with a 'main' function")
    target = as_target(target)
    scheduled = schedule(mod, target, tuning_records, notes=notes)
    from .schedules.int8 import prepack_weights

    # int8 VNNI kernels read weights in a blocked layout: pack them once here, not on every call.
    scheduled = prepack_weights(scheduled, target)
    if target.kind.name == "llvm" and os.environ.get("SQCC_CONCAT_ELIMINATION", "1") != "0":
        from .schedules.concat import EliminateConcat
        scheduled = EliminateConcat()(scheduled)
    try:
        with tvm.transform.PassContext(opt_level=3, config=PASS_CONFIG):
            return relax.build(scheduled, target)
    except SqccError:
        raise
    except Exception as err:  # TVM 0.27 raises plain RuntimeError/ValueError (no tvm.TVMError)
        raise SqccError(f"build for {target.kind.name} failed: {one_line(err)}") from err
