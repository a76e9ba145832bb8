"""The module pass that applies sqcc's default CPU schedules to every fused PrimFunc.

Runs after LegalizeOps / AnnotateTIROpPattern / FuseOps / FuseTIR (and after MetaSchedule's
database, whose functions carry ``tirx.is_scheduled`` and are skipped). Each function is classified
by its reduction blocks and handed to one rule:

* one multiply-accumulate reduction  -> :func:`sqcc.schedules.conv2d.schedule_conv`
  (conv2d of every kind, dense, matmul)
* one reduction without weights      -> :func:`sqcc.schedules.pool.schedule_pool`
* no reduction                        -> :func:`sqcc.schedules.injective.schedule_injective`
* anything else, or a rule that fails -> :func:`sqcc.schedules.fallback.schedule_fallback`, and if
  even that fails the function stays as legalized. A rule never makes a model unbuildable.
"""
from __future__ import annotations

import logging

import tvm
from tvm import tirx
from tvm.s_tir import Schedule
from tvm.target import Target

from .common import is_reduction, root_blocks
from .conv2d import schedule_conv
from .cpu import CpuInfo, cpu_info
from .fallback import schedule_fallback
from .injective import schedule_injective
from .pool import schedule_pool

log = logging.getLogger(__name__)

SCHEDULED_ATTR = "tirx.is_scheduled"
# Marks which rule scheduled a function, so tests and reports can tell scheduled kernels apart.
RULE_ATTR = "sqcc.schedule_rule"


def classify(sch: Schedule):
    """(kind, main block) for the function in ``sch``."""
    blocks = root_blocks(sch)
    reds = [b for b in blocks if is_reduction(sch, b)]
    if not reds:
        return "injective", None
    if len(reds) == 1:
        main = reds[0]
        if len(sch.get(main).reads) >= 2:
            return "conv", main
        return "pool", main
    return "other", None


def schedule_primfunc(func: tirx.PrimFunc, info: CpuInfo) -> tuple[tirx.PrimFunc, str]:
    """Return (scheduled function, rule name); ("unscheduled") when every rule failed."""
    try:
        from .int8 import schedule_int8  # int8 convs with the CPU's dot-product instructions

        fast = schedule_int8(func, info)
    except Exception as err:  # noqa: BLE001 -- never let a fast path break a build
        log.debug("int8 rule failed: %s", err)
        fast = None
    if fast is not None:
        rule = "int8-" + str(fast.attrs["sqcc.int8_isa"])
        return fast.with_attr(SCHEDULED_ATTR, True).with_attr(RULE_ATTR, rule), rule
    sch, name = default_schedule(func, info)
    if sch is None:
        return func, "unscheduled"
    return sch.mod["main"].with_attr(SCHEDULED_ATTR, True).with_attr(RULE_ATTR, name), name


def default_schedule(func: tirx.PrimFunc, info: CpuInfo) -> tuple[Schedule | None, str]:
    """(Schedule with its trace, rule name) for ``func``; (None, "unscheduled") if all rules fail.

    The trace is what :mod:`.tuning` stores as the baseline record of a task, so tuning can only
    improve on the default.
    """
    for attempt in ("rule", "fallback"):
        sch = Schedule(func)
        try:
            if attempt == "rule":
                kind, main = classify(sch)
                if kind == "conv":
                    sch = schedule_conv(func, info)
                elif kind == "pool":
                    schedule_pool(sch, main, info)
                elif kind == "injective":
                    schedule_injective(sch, info)
                else:
                    continue
                return sch, kind
            schedule_fallback(sch)
            return sch, "fallback"
        except Exception as err:  # noqa: BLE001 -- any schedule error means "try the next rule"
            log.debug("schedule %s failed for a function: %s", attempt, err)
    return None, "unscheduled"


@tvm.transform.module_pass(opt_level=0, name="SqccDefaultSchedules")
class DefaultSchedules:
    """Apply the default CPU schedules to every not-yet-scheduled PrimFunc of an IRModule."""

    def __init__(self, target: Target):
        self.target = target
        self.info = cpu_info(target)
        self.applied: dict[str, str] = {}  # function name -> rule, for reports and tests

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        updates = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            if func.attrs is not None and SCHEDULED_ATTR in func.attrs and \
                    int(func.attrs[SCHEDULED_ATTR]) == 1:
                self.applied[gv.name_hint] = "database"
                if RULE_ATTR not in func.attrs:
                    updates[gv] = func.with_attr(RULE_ATTR, "database")
                continue
            new, name = schedule_primfunc(func, self.info)
            self.applied[gv.name_hint] = name
            if name != "unscheduled":
                updates[gv] = new
        for gv, func in updates.items():
            mod[gv] = func
        return mod
