"""sqcc.schedules: default CPU schedules, the NHWC layout pass, and MetaSchedule tuning.

``DefaultSchedules(target)`` is a module pass over fused PrimFuncs (one rule per op kind, see
:mod:`.apply`); ``to_nhwc()`` is the layout pass that makes those rules fast; :mod:`.tuning` tunes
with MetaSchedule into a durable JSON database that :func:`sqcc.build.build` applies.
"""
from .apply import RULE_ATTR, SCHEDULED_ATTR, DefaultSchedules, schedule_primfunc
from .cpu import CpuInfo, cpu_info, host_peak_gflops
from .layout import to_nhwc

__all__ = ["DefaultSchedules", "schedule_primfunc", "RULE_ATTR", "SCHEDULED_ATTR", "CpuInfo",
           "cpu_info", "host_peak_gflops", "to_nhwc"]
