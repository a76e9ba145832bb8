"""``summary.md`` from a campaign's records: outcome totals, the outcome × generator table, the
distinct non-clean findings (grouped by outcome and a normalised first stderr line), and per
non-clean outcome up to five reproducers (the command, and how to regenerate its input)."""
from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

from .case import _quote
from .classify import CLEAN, OUTCOMES, first_line  # noqa: F401 (first_line: re-exported for callers)

ALL_OUTCOMES = OUTCOMES + ["harness_error"]


def signature(rec: dict) -> str:
    """The sqcc error line (else the first stderr line) with paths, numbers and quoted values blanked:
    one cause, one key."""
    s = rec.get("error_line") or rec.get("stderr_first") or f"(exit {rec.get('exit_code')}, signal {rec.get('signal')}, no stderr)"
    s = re.sub(r"(/[^\s:'\"]+)+", "PATH", s)
    s = re.sub(r"'[^']*'", "'…'", s)
    s = re.sub(r"\b\d[\d,.]*\b", "N", s)
    return s[:160]


def command(rec: dict) -> str:
    if rec.get("argv") is not None:
        return "sqcc " + " ".join(_quote(a) for a in rec["argv"])
    return f"python API {json.dumps(rec.get('api'))[:200]}"


def _table(recs) -> list:
    gens = sorted({r["generator"] for r in recs})
    used = [o for o in ALL_OUTCOMES if any(r["outcome"] == o for r in recs)]
    counts = Counter((r["generator"], r["outcome"]) for r in recs)
    lines = ["| generator | " + " | ".join(used) + " | total |", "|---" * (len(used) + 2) + "|"]
    for g in gens:
        row = [str(counts[(g, o)] or "") for o in used]
        lines.append(f"| {g} | " + " | ".join(row) + f" | {sum(counts[(g, o)] for o in used)} |")
    tot = Counter(r["outcome"] for r in recs)
    lines.append("| **total** | " + " | ".join(f"**{tot[o]}**" for o in used) + f" | **{len(recs)}** |")
    return lines


def _findings(recs) -> list:
    groups = defaultdict(list)
    for r in recs:
        if r["outcome"] not in CLEAN:
            groups[(r["outcome"], signature(r))].append(r)
    lines = ["| outcome | sqcc / first stderr line (normalised) | cases | example |", "|---|---|---|---|"]
    for (o, sig), rs in sorted(groups.items(), key=lambda kv: (ALL_OUTCOMES.index(kv[0][0]), -len(kv[1]))):
        lines.append(f"| {o} | `{sig.replace('|', '/')}` | {len(rs)} | {rs[0]['id']} ({rs[0]['generator']}) |")
    return lines


def _reproducers(recs, out: Path) -> list:
    lines = []
    for o in ALL_OUTCOMES:
        rs = [r for r in recs if r["outcome"] == o and o not in CLEAN]
        if not rs:
            continue
        lines += [f"### {o} ({len(rs)})", ""]
        seen, shown = set(), 0
        for r in rs:  # one per distinct cause first
            if shown >= 5 or signature(r) in seen:
                continue
            seen.add(signature(r))
            shown += 1
            lines += [f"- **{r['id']}** `{r['generator']}` — {r.get('mutation', '')}",
                      f"  - `{command(r)}`",
                      f"  - stderr: `{(r.get('error_line') or r.get('stderr_first') or '').replace('`', chr(39))[:300]}`",
                      f"  - exit {r.get('exit_code')}, signal {r.get('signal')}, {r.get('duration_s')} s, "
                      f"flags {r.get('flags')}" + (f", left {r.get('new_files') + r.get('tmp_left')}"
                                                   if o == "left_behind" else ""),
                      f"  - regenerate: `python -m benchmarks.fuzz materialize {out} {r['id']} --into /tmp/{r['id']}`;"
                      f" replay: `python -m benchmarks.fuzz replay {out} {r['id']}`"]
        lines.append("")
    return lines


def _header(recs, meta) -> list:
    runs = meta.get("runs", [])
    ran = sum(r.get("cases_run", 0) for r in runs)
    wall = sum(r.get("cases_wall_s", 0) for r in runs)
    modes = sorted({r.get("mode") for r in runs})
    st = next((r["selftest"] for r in runs if r.get("selftest")), {})
    lines = [f"seed {meta.get('seed')}, {len(recs)} cases, time limit {meta.get('time_limit_s')} s, RLIMIT_AS "
             f"{meta.get('mem_bytes', 0) / 2**30:.1f} GiB, mode {'/'.join(map(str, modes))}, jobs "
             f"{'/'.join(str(r.get('jobs')) for r in runs)}.",
             f"Throughput: {ran} cases in {wall:.0f} s = **{ran / wall:.2f} cases/s** (generation, runs and "
             f"time-limit kills included; child time alone {sum(r.get('duration_s', 0) for r in recs):.0f} s)."
             if wall else ""]
    if st:
        lines.append(f"Fork self-test: fork_ok={st.get('fork_ok')}, {st.get('threads_at_fork')} threads in the fork "
                     f"server at fork; a trivial case (`inspect mnist-8`) takes {st.get('fork_inspect_s')} s forked "
                     f"vs {st.get('subprocess_inspect_s')} s in a fresh interpreter.")
    for r in runs:
        t, e = r.get("tree") or {}, r.get("tree_end") or {}
        if t:
            lines.append(f"Code ({r.get('started')}): HEAD {t.get('head', '')[:12]}, uncommitted changes "
                         f"{t.get('uncommitted_sha256')} in {t.get('modified') + t.get('untracked') or 'none'}"
                         + ("" if e.get("uncommitted_sha256") == t.get("uncommitted_sha256")
                            and e.get("head") == t.get("head") else
                            f"; changed during the run (at the end: HEAD {e.get('head', '')[:12]}, "
                            f"{e.get('uncommitted_sha256')})"))
    clean = sum(r["outcome"] in CLEAN for r in recs)
    lines.append(f"Clean (clean_error or success): {clean}/{len(recs)}; non-clean: {len(recs) - clean}.")
    return lines


def write_summary(out: Path) -> Path:
    from .campaign import read_records

    out = Path(out)
    recs = sorted(read_records(out / "cases.jsonl"), key=lambda r: r["index"])
    meta = json.loads((out / "meta.json").read_text()) if (out / "meta.json").exists() else {}
    lines = ["# sqcc fuzz campaign", ""] + _header(recs, meta) + [""]
    lines += ["## Outcomes by generator", ""] + _table(recs) + [""]
    lines += ["## Distinct non-clean findings", "", "Grouped by outcome and the sqcc error line (else the first "
              "stderr line), with paths, numbers and quoted names blanked.", ""] + _findings(recs) + [""]
    lines += ["## Reproducers (up to 5 per outcome, one per distinct cause first)", ""] + _reproducers(recs, out)
    lines += ["Outcome meanings: see benchmarks/fuzz/README.md (and benchmarks/fuzz/classify.py)."]
    path = out / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path
