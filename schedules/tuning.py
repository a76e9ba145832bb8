"""MetaSchedule tuning into a durable JSON database, and opening that database at build time.

``tune(mod, target, trials, records_path)`` tunes the kernels sqcc's own build produces (same
layout and fusion passes as :func:`sqcc.build.build`, so every record matches a kernel that is
really built) and appends each measured candidate to the database as soon as it is measured.

The database is TVM's ``JSONDatabase``: two JSON-lines files, ``records_path`` (tuning records)
and ``<records_path minus .json>.workloads.json`` (the kernels they belong to). Both are only ever
appended to, one line per record, so a run killed at any point loses at most the candidate being
written; the next ``tune`` on the same path resumes, counting the records already there against
each task's budget. On open, sqcc checks every line: a file that is not MetaSchedule JSON lines,
or whose records were tuned for another CPU/target, is refused with a one-line ``SqccError`` and
left untouched. The one repair it makes is dropping a torn (unterminated) last line left by a kill.

Tasks are tuned one after another (largest estimated cost first) so that the budget per task is
exact and resumable. The budget is shared out by measured time, not evenly: each kernel's default
schedule is measured first, and a kernel gets trials in proportion to its latency times its calls
per model run (task weighting by call count). A rich progress bar shows task, trials, best latency
and ETA.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
import types
from pathlib import Path

import tvm

from sqcc import interrupts
from sqcc.errors import SqccError, one_line

from .records import (  # noqa: F401  (re-exported: the database is tuning's)
    database_paths, open_database, pinned_paths, tuning_lock)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- light intrinsics

_PKG = "tvm.s_tir.tensor_intrin"


def light_tensor_intrin() -> None:
    """Register only the CPU tensor intrinsics instead of all of ``tvm.s_tir.tensor_intrin``.

    MetaSchedule imports the whole package in TuneContext and in every builder worker: 25-55 s on
    these machines, almost all of it CUDA intrinsics a CPU target never uses. A stand-in package
    module (same ``__path__``) makes that import a no-op; x86 and Arm intrinsics (VNNI, dot
    products: ~1 s) are registered for real. Also the builder workers' initializer.
    """
    if _PKG in sys.modules:
        return
    import tvm.s_tir

    stub = types.ModuleType(_PKG)
    stub.__path__ = [os.path.join(os.path.dirname(tvm.s_tir.__file__), "tensor_intrin")]
    stub.__sqcc_light__ = True
    sys.modules[_PKG] = stub
    from tvm.runtime import enabled

    if enabled("llvm"):
        import tvm.s_tir.tensor_intrin.arm_cpu  # noqa: F401
        import tvm.s_tir.tensor_intrin.x86  # noqa: F401


@contextlib.contextmanager
def _light_intrinsics(target):
    """Use :func:`light_tensor_intrin` for CPU targets, and take the stand-in away afterwards so a
    later import by other code (a CUDA build) gets the real package."""
    installed = False
    if target.kind.name in ("llvm", "c") and _PKG not in sys.modules:
        light_tensor_intrin()
        installed = True
    try:
        yield
    finally:
        if installed and getattr(sys.modules.get(_PKG), "__sqcc_light__", False):
            del sys.modules[_PKG]


# --------------------------------------------------------------------------- tuning


def _task_cost(task) -> float:
    """Rough cost to order tasks: FLOPs x how often the kernel runs."""
    try:
        from tvm.s_tir.analysis import estimate_tir_flops
        return float(estimate_tir_flops(task.dispatched[0])) * task.weight
    except Exception:  # noqa: BLE001
        return float(task.weight)


def _count_records(db, mod) -> tuple[int, float | None]:
    """(records for this workload, best measured seconds)."""
    if not db.has_workload(mod):
        return 0, None
    wl = db.commit_workload(mod)
    recs = [r for r in db.get_all_tuning_records() if r.workload.same_as(wl)]
    best = db.get_top_k(wl, 1)
    secs = None
    if best:
        rs = [float(x) for x in best[0].run_secs]
        secs = sum(rs) / len(rs) if rs else None
    return len(recs), secs


def tune(mod: tvm.IRModule, target, trials: int, records_path: str,
         max_trials_per_task: int | None = None, runner=None, *, builder=None,
         num_trials_per_iter: int = 16, task_names: list[str] | None = None,
         progress: bool = True, seed: int | None = None,
         search_strategy="evolutionary", cost_model="xgb") -> str:
    """Tune ``mod``'s kernels for ``target`` with MetaSchedule; records go to ``records_path``.

    ``trials`` is the total number of measured candidates wanted in the database for this model
    (records already there count: re-running resumes, and a finished database is a no-op).
    ``max_trials_per_task`` caps each kernel; the trials are shared out by :func:`allocate_trials`
    (in proportion to each kernel's share of the model's run time). ``runner`` is
    any MetaSchedule runner (``ms.runner.RPCRunner`` for a device farm); default LocalRunner.
    ``task_names`` restricts tuning to kernels whose name contains one of the strings.
    ``search_strategy``/``cost_model`` are MetaSchedule's (``"replay-trace"``/``"random"`` make
    a quick smoke run without the evolutionary search's seconds of model-guided sampling).
    Returns the records path, which :func:`sqcc.build.build` accepts as ``tuning_records``.

    Ctrl-C (or SIGTERM) stops it with ``KeyboardInterrupt`` even where TVM's FFI turned the
    interrupt into an error; the records measured so far stay, and a re-run resumes.
    """
    from tvm.s_tir import meta_schedule as ms

    from sqcc.build import lower_to_tir

    if not isinstance(trials, int) or trials < 1:
        raise SqccError(f"tune: trials must be a positive integer, got {trials!r}")
    if max_trials_per_task is not None and max_trials_per_task < 1:
        raise SqccError(f"tune: max_trials_per_task must be positive, got {max_trials_per_task}")
    target = _with_cores(target)
    lowered = lower_to_tir(mod, target)
    with interrupts.handling(), tuning_lock(records_path), _light_intrinsics(target):
        db = open_database(records_path, target, create=True)
        try:
            plan = _tuning_plan(ms.relax_integration.extract_tasks(lowered, target), db, task_names)
            left = max(0, trials - sum(have for _, have, _ in plan))
            if builder is None:
                builder = ms.builder.LocalBuilder(max_workers=os.cpu_count() or 1, initializer=_worker_init)
            if runner is None:
                runner = ms.runner.LocalRunner(initializer=_worker_init)
            left = _commit_defaults(plan, db, target, builder, runner, left)
            budgets = allocate_trials(plan, left, max_trials_per_task, num_trials_per_iter)
            work_dir = str(database_paths(records_path)[0].parent / "ms_logs")
            with _Progress(plan, budgets, enabled=progress) as bar:
                for i, (task, _, _) in enumerate(plan):
                    interrupts.check()
                    if budgets[i] <= 0:
                        bar.skip(i)
                        continue
                    bar.start(i, budgets[i])
                    ms.tune.tune_tasks(
                        tasks=[ms.TuneContext(mod=task.dispatched[0], target=target,
                                              space_generator="post-order-apply",
                                              search_strategy=search_strategy, task_name=task.task_name,
                                              rand_state=-1 if seed is None else seed + i,
                                              num_threads=os.cpu_count() or 1).clone()],
                        task_weights=[1.0], work_dir=work_dir,
                        max_trials_global=budgets[i], max_trials_per_task=budgets[i],
                        num_trials_per_iter=min(num_trials_per_iter, budgets[i]),
                        builder=builder, runner=runner, database=db,
                        measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"),
                                           _progress_callback(bar, i, runner)],
                        cost_model=cost_model)
                    bar.finish(i, *_count_records(db, task.dispatched[0]))
        except Exception:
            interrupts.check()  # an interrupt TVM's FFI turned into an error is still an interrupt
            raise
    return str(records_path)


def _worker_init() -> None:
    """Initializer of MetaSchedule's builder and runner worker processes."""
    interrupts.die_with_parent()
    light_tensor_intrin()


def _with_cores(target) -> tvm.target.Target:
    """The target, with ``num-cores`` set for a CPU (MetaSchedule's thread count for candidates)."""
    from sqcc.build import as_target

    target = as_target(target)
    if target.kind.name == "llvm" and not target.attrs.get("num-cores"):
        cfg = dict(target.export())
        cfg["num-cores"] = os.cpu_count() or 1
        target = tvm.target.Target(cfg)
    return target


def _tuning_plan(tasks, db, task_names) -> list[list]:
    """[task, records it has, best seconds] for each kernel still to schedule, costliest first."""
    if task_names:
        tasks = [t for t in tasks if any(n in t.task_name for n in task_names)]
    tasks = [t for t in tasks if not t.dispatched[0].attrs.get("tirx.is_scheduled", False)]
    if not tasks:
        raise SqccError("tune: no kernels to tune" + (f" matching {task_names}" if task_names else ""))
    tasks.sort(key=_task_cost, reverse=True)
    return [[t, *_count_records(db, t.dispatched[0])] for t in tasks]


def _commit_defaults(plan, db, target, builder, runner, left: int) -> int:
    """Baseline: sqcc's default schedule of each untuned task, measured like any candidate and
    stored first, so the database's best is never worse than an untuned sqcc build. Returns the
    trials left."""
    for entry in plan:
        if entry[1] == 0 and left > 0 and _commit_default(db, entry[0], target, builder, runner):
            entry[1] = 1
            entry[2] = _count_records(db, entry[0].dispatched[0])[1]
            left -= 1
        _check_runner(runner)
    return left


def _check_runner(runner) -> None:
    """Stop tuning with the runner's SqccError when it has one: sqcc's farm runner
    (:func:`sqcc.remote.rpc_runner`) when no node of its key is left."""
    check = getattr(runner, "check", None)
    if callable(check):
        check()


def allocate_trials(plan, left: int, cap: int | None = None, step: int = 16) -> list[int]:
    """Trials for each task of ``plan`` ([task, records so far, best seconds]) out of ``left``.

    In proportion to the time the kernel takes in one run of the model -- its best latency so far
    (sqcc's default schedule, measured first) times how often the model calls it -- because that
    is what a trial can win back; a task nobody measured yet counts its FLOPs. A share below one
    search iteration (``step`` candidates) goes to the tasks above it. ``cap``: most records per task.
    """
    if left <= 0 or not plan:
        return [0] * len(plan)
    flops = [_task_cost(t) for t, _, _ in plan]
    # seconds per model run; unmeasured tasks: FLOPs at the measured tasks' FLOP rate
    rate = [f / (b * t.weight) for (t, _, b), f in zip(plan, flops) if b]
    rate = sorted(rate)[len(rate) // 2] if rate else 1.0
    share = [(b * t.weight) if b else f / rate for (t, _, b), f in zip(plan, flops)]
    room = [max(0, cap - have) if cap else left for _, have, _ in plan]
    budgets = [0] * len(plan)
    active = [i for i in range(len(plan)) if room[i] > 0]
    while left > 0 and active:
        tot = sum(share[i] for i in active) or 1.0
        want = {i: min(room[i] - budgets[i], int(left * share[i] / tot)) for i in active}
        small = [i for i in active if want[i] < min(step, room[i] - budgets[i]) and len(active) > 1]
        if small:  # too small for one iteration: drop the smallest share and re-divide
            active.remove(min(small, key=lambda i: share[i]))
            continue
        for i, n in want.items():
            budgets[i] += n
        left -= sum(want.values())
        active = [i for i in active if budgets[i] < room[i]]
        if left > 0 and active:  # rounding remainder: to the biggest share
            i = max(active, key=lambda i: share[i])
            n = min(left, room[i] - budgets[i])
            budgets[i] += n
            left -= n
            active = [i for i in active if budgets[i] < room[i]]
    return budgets


def _commit_default(db, task, target, builder, runner) -> bool:
    """Measure sqcc's default schedule for ``task`` and commit it as a tuning record."""
    from tvm.s_tir import meta_schedule as ms

    from .apply import default_schedule
    from .cpu import cpu_info

    func = task.dispatched[0]["main"]
    sch, _ = default_schedule(func, cpu_info(target))
    if sch is None:
        return False
    try:
        built = builder.build([ms.builder.BuilderInput(sch.mod, target)])[0]
        if built.error_msg:
            log.warning("default schedule of %s does not build: %s", task.task_name,
                        (built.error_msg.strip().splitlines() or ["?"])[-1])
            return False
        args = ms.arg_info.ArgInfo.from_prim_func(func)
        res = runner.run([ms.runner.RunnerInput(built.artifact_path, target.kind.default_device
                                                if hasattr(target.kind, "default_device")
                                                else "cpu", args)])[0].result()
        if res.error_msg or not res.run_secs:
            return False
        wl = db.commit_workload(task.dispatched[0])
        db.commit_tuning_record(ms.database.TuningRecord(
            trace=sch.trace, workload=wl, run_secs=res.run_secs, target=target,
            args_info=args))
        return True
    except Exception as err:  # noqa: BLE001 -- the baseline is an optimisation, never fatal
        interrupts.check()
        log.warning("could not measure the default schedule of %s: %s", task.task_name, err)
        return False


class _Progress:
    """rich progress: one line per task (trials, best latency) and an overall bar with ETA."""

    def __init__(self, plan, budgets, enabled=True):
        self.enabled = enabled
        self.plan = plan
        self.budgets = budgets
        self.p = None
        self.rows = {}

    def __enter__(self):
        if not self.enabled:
            return self
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)
        self.p = Progress(TextColumn("{task.description:<44}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("best {task.fields[best]:>10}"), TimeElapsedColumn(),
                          TextColumn("ETA"), TimeRemainingColumn())
        self.p.__enter__()
        total = sum(self.budgets)
        self.overall = self.p.add_task(f"all {len(self.plan)} tasks", total=max(total, 1),
                                       best="")
        return self

    def __exit__(self, *exc):
        if self.p is not None:
            self.p.__exit__(*exc)

    @staticmethod
    def _fmt(secs):
        return "-" if secs is None else f"{secs * 1e6:.1f} us"

    def start(self, i, budget):
        if self.p is None:
            return
        task, have, best = self.plan[i]
        self.rows[i] = self.p.add_task(task.task_name[:44], total=have + budget, completed=have,
                                       best=self._fmt(best))
        self.best = {i: best}

    def skip(self, i):
        if self.p is None:
            return
        task, have, best = self.plan[i]
        self.p.add_task(task.task_name[:44], total=max(have, 1), completed=have,
                        best=self._fmt(best))

    def advance(self, i, n, secs):
        if self.p is None:
            return
        cur = self.best.get(i)
        if secs is not None and (cur is None or secs < cur):
            self.best[i] = cur = secs
        self.p.update(self.rows[i], advance=n, best=self._fmt(cur))
        self.p.update(self.overall, advance=n)

    def finish(self, i, n, best):
        if self.p is None:
            return
        self.p.update(self.rows[i], completed=n, best=self._fmt(best))


def _progress_callback(bar: _Progress, i: int, runner=None):
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class _Cb(PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results,
                  runner_results):
            interrupts.check()  # raised into the task scheduler, it ends tune_tasks
            best = None
            for r in runner_results:
                if r.run_secs is not None and r.error_msg is None:
                    rs = [float(x) for x in r.run_secs]
                    if rs:
                        s = sum(rs) / len(rs)
                        best = s if best is None else min(best, s)
            bar.advance(i, len(runner_results), best)
            _check_runner(runner)  # after AddToDatabase: this batch's records are in the database

    return _Cb()


def _main(argv=None) -> int:  # python -m sqcc.schedules.tuning MODEL.onnx RECORDS TRIALS
    import argparse

    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    from sqcc.build import host_target

    ap = argparse.ArgumentParser(description="Tune an ONNX model's kernels for this host.")
    ap.add_argument("model")
    ap.add_argument("records")
    ap.add_argument("trials", type=int)
    ap.add_argument("--per-task", type=int, default=None)
    ap.add_argument("--task", action="append", default=None, help="only kernels containing this")
    a = ap.parse_args(argv)
    m = onnx.load(a.model)
    inp = m.graph.input[0]
    shape = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]
    mod = from_onnx(m, {inp.name: shape}, keep_params_in_input=False)
    t0 = time.time()
    try:
        tune(mod, host_target(), a.trials, a.records, a.per_task, task_names=a.task)
    except SqccError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"tuned in {time.time() - t0:.0f} s -> {a.records}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())


# --------------------------------------------------------------------------- re-measuring the winners

def revalidate(mod: tvm.IRModule, target, records_path: str, top_k: int = 4, rounds: int = 7,
               progress: bool = True) -> str:
    """Re-measure, per kernel, the ``top_k`` best tuned candidates and sqcc's default schedule
    against each other -- same process, alternating rounds, median -- and write the winner of each
    kernel to the pinned database ``<records>.pinned.json``, which :func:`sqcc.build.build` then uses
    instead of the raw records.

    Why: MetaSchedule measures each candidate once (one average over >= 100 ms) while it tunes; on a
    shared machine a candidate measured in a quiet moment beats a better one measured under load,
    and the database's "best" is then a lucky draw. Measured here under load: 1000 trials whose
    per-kernel bests summed to 0.45x the default schedules' time built a model 1.17x *slower* than
    the untuned default. Run this on a quiet machine; the raw records are not touched, the pinned
    files are replaced atomically.
    """
    from tvm.s_tir import meta_schedule as ms

    from sqcc.build import lower_to_tir

    target = _with_cores(target)
    db = open_database(records_path, target)
    lowered = lower_to_tir(mod, target)
    out_rec, out_wl = pinned_paths(records_path)
    tmp = Path(tempfile.mkdtemp(dir=out_rec.parent, prefix=".pinned."))
    tmp_rec, tmp_wl = tmp / "r.json", tmp / "w.json"
    pinned = ms.database.JSONDatabase(str(tmp_wl), str(tmp_rec), allow_missing=True)
    with interrupts.handling(), _light_intrinsics(target):
        for task in ms.relax_integration.extract_tasks(lowered, target):
            fmod = task.dispatched[0]
            if fmod["main"].attrs is not None and fmod["main"].attrs.get("tirx.is_scheduled", False):
                continue
            cands = _tuned_candidates(db, fmod, top_k)
            if not cands:
                continue  # nothing tuned: the default rules schedule it at build time anyway
            result = _race(task.task_name, fmod, cands + _default_candidate(fmod, target), target, rounds)
            if result is None:
                continue
            (kind, sch, secs), dflt = result
            pinned.commit_tuning_record(ms.database.TuningRecord(
                trace=sch.trace, workload=pinned.commit_workload(fmod), run_secs=[secs], target=target,
                args_info=ms.arg_info.ArgInfo.from_prim_func(fmod["main"])))
            if progress:
                d = f", default {dflt * 1e6:.1f} us" if dflt is not None else ""
                print(f"{task.task_name[:44]:<44} {kind:<7} {secs * 1e6:8.1f} us{d}", file=sys.stderr)
    # records last: until they are in place the build uses the raw records, never a mismatched pair
    out_rec.unlink(missing_ok=True)
    if tmp_rec.exists():
        os.replace(tmp_wl, out_wl)
        os.replace(tmp_rec, out_rec)
    for p in tmp.iterdir():
        p.unlink()
    tmp.rmdir()
    return str(out_rec)


def _tuned_candidates(db, fmod, top_k: int) -> list:
    """("tuned", schedule) for the database's ``top_k`` best records of this kernel that still replay."""
    from tvm.s_tir import Schedule

    if not db.has_workload(fmod):
        return []
    wl = db.commit_workload(fmod)  # already there: nothing is written
    out = []
    for rec in db.get_top_k(wl, top_k):
        sch = Schedule(wl.mod)
        try:
            rec.trace.apply_to_schedule(sch, remove_postproc=False)
        except Exception:  # noqa: BLE001 -- a record that no longer replays
            continue
        out.append(("tuned", sch))
    return out


def _default_candidate(fmod, target) -> list:
    from .apply import default_schedule
    from .cpu import cpu_info

    sch, _ = default_schedule(fmod["main"], cpu_info(target))
    return [] if sch is None else [("default", sch)]


def _race(name: str, fmod, cands, target, rounds: int):
    """Build every candidate and time them in alternating rounds on the same inputs: ((kind,
    schedule, median seconds) of the fastest, the default's median or None); None if none builds."""
    import numpy as np
    from tvm.s_tir import meta_schedule as ms

    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    arrs = [tvm.runtime.tensor((rng.random([int(d) for d in a.shape]) * 4).astype(a.dtype), dev)
            for a in ms.arg_info.ArgInfo.from_prim_func(fmod["main"])]
    timers = []
    for kind, sch in cands:
        try:
            with target:
                lib = tvm.compile(sch.mod, target=target)
            timers.append((kind, sch, lib.mod.time_evaluator("main", dev, number=10, repeat=1, min_repeat_ms=20)))
        except Exception as err:  # noqa: BLE001
            log.debug("candidate of %s does not build: %s", name, one_line(err))
    if not timers:
        return None
    times = [[] for _ in timers]
    for _ in range(rounds):
        for i, (_, _, f) in enumerate(timers):
            times[i].append(float(f(*arrs).mean))
    med = [float(np.median(t)) for t in times]
    best = int(np.argmin(med))
    dflt = [m for (k, _, _), m in zip(timers, med) if k == "default"]
    return (timers[best][0], timers[best][1], med[best]), (dflt[0] if dflt else None)
