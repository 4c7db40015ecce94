"""``grokscope scan``: an audit of the checkpoints under a path, run by run.

For each run: number of checkpoints, step range, gaps in the save schedule, duplicates (the same
tensor contents at different steps), steps written out of order (file modification time against
step), dtype/shape/key drift between consecutive checkpoints, unreadable files, and files discovery
could not place. Every checkpoint is read (safely, see :mod:`.loading`) to hash its tensors.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .discovery import Run, find_runs


def expected_steps(run: Run) -> list[int] | None:
    """The save schedule of a grokscope run (``train.save`` and ``train.steps`` of run.json), or None."""
    train = (run.spec or {}).get("train") or {}
    if "save" not in train or "steps" not in train:
        return None
    try:
        from grokscope.training.schedule import parse_schedule

        return parse_schedule(train["save"], int(train["steps"]))
    except Exception:  # noqa: BLE001 - an unknown schedule spec falls back to the heuristic
        return None


def find_gaps(steps: list[int], expected: list[int] | None = None) -> list[dict[str, Any]]:
    """Gaps in a sorted step list: ``[{"after", "before", "missing"}]``.

    With the run's own schedule (``expected``), every expected step up to the last present one that
    is absent is missing. Otherwise the schedule is inferred: linear when most increments are equal
    (a gap is an increment larger than that), else geometric (a gap is a ratio between consecutive
    steps ≥ 10 larger than the typical ratio to the power 1.5). Fewer than 4 steps: no verdict.
    """
    if expected is not None:
        have = set(steps)
        last = max(steps) if steps else -1
        miss = [s for s in expected if s <= last and s not in have]
        out = []
        for m in miss:
            after = max((s for s in steps if s < m), default=None)
            before = min((s for s in steps if s > m), default=None)
            if out and out[-1]["after"] == after:
                out[-1]["missing"].append(m)
            else:
                out.append({"after": after, "before": before, "missing": [m]})
        return out
    if len(steps) < 4:
        return []
    diffs = [b - a for a, b in zip(steps, steps[1:])]
    common = max(set(diffs), key=diffs.count)
    if diffs.count(common) >= 0.6 * len(diffs):
        return [{"after": a, "before": b, "missing": list(range(a + common, b, common))}
                for a, b in zip(steps, steps[1:]) if b - a > common]
    pairs = [(a, b) for a, b in zip(steps, steps[1:]) if a >= 10]
    if len(pairs) < 3:
        return []
    ratios = sorted(b / a for a, b in pairs)
    typical = ratios[len(ratios) // 2]
    limit = typical ** 1.5 if typical > 1 else math.inf
    return [{"after": a, "before": b, "missing": None} for a, b in pairs if b / a > limit * 1.0001]


def scan_run(run: Run) -> dict[str, Any]:
    """The audit of one run as a JSON-friendly dict (see the module docstring)."""
    from .hashing import state_dict_hash
    from .loading import CheckpointError, read_state_dict

    rows = []
    unreadable = []
    for ck in run.checkpoints:
        files = [Path(f) for f in ck.files]
        try:
            mtime = max(f.stat().st_mtime for f in files)
            size = sum(f.stat().st_size for f in files)
        except OSError:
            mtime, size = 0.0, 0
        try:
            sd = read_state_dict(ck)
        except CheckpointError as e:
            unreadable.append({"step": ck.step, "file": ck.label, "reason": str(e)})
            continue
        sig = {k: (str(v.dtype).replace("torch.", ""), list(v.shape)) for k, v in sd.items()}
        rows.append({"step": ck.step, "file": ck.label, "hash": state_dict_hash(sd), "mtime": mtime,
                     "bytes": size, "sig": sig})
    steps = run.steps
    by_hash: dict[str, list[int]] = {}
    for r in rows:
        by_hash.setdefault(r["hash"], []).append(r["step"])
    duplicates = [{"hash": h, "steps": s} for h, s in by_hash.items() if len(s) > 1]
    order = sorted(rows, key=lambda r: (r["mtime"], r["step"]))
    out_of_order = []
    top = None
    for r in order:
        if top is not None and r["step"] < top["step"] and r["mtime"] > top["mtime"]:
            out_of_order.append({"step": r["step"], "written_after_step": top["step"], "file": r["file"]})
        if top is None or r["step"] > top["step"]:
            top = r
    drift = []
    for a, b in zip(rows, rows[1:]):
        sa, sb = a["sig"], b["sig"]
        changes = []
        gone, new = sorted(set(sa) - set(sb)), sorted(set(sb) - set(sa))
        if gone:
            changes.append(f"keys removed: {', '.join(gone[:5])}{' ...' if len(gone) > 5 else ''}")
        if new:
            changes.append(f"keys added: {', '.join(new[:5])}{' ...' if len(new) > 5 else ''}")
        for k in sorted(set(sa) & set(sb)):
            if sa[k][0] != sb[k][0]:
                changes.append(f"{k} dtype {sa[k][0]} -> {sb[k][0]}")
            if sa[k][1] != sb[k][1]:
                changes.append(f"{k} shape {tuple(sa[k][1])} -> {tuple(sb[k][1])}")
        if changes:
            drift.append({"from_step": a["step"], "to_step": b["step"], "changes": changes[:10]})
    expected = expected_steps(run)
    return {
        "run": run.name, "path": str(run.path), "has_run_json": run.spec is not None,
        "run_json_error": run.spec_error, "data": _data_words(run),
        "checkpoints": len(run.checkpoints), "readable": len(rows),
        "first_step": steps[0] if steps else None, "last_step": steps[-1] if steps else None,
        "schedule": "run.json" if expected is not None else "inferred",
        "gaps": find_gaps(steps, expected), "duplicates": duplicates, "out_of_order": out_of_order,
        "drift": drift, "unreadable": unreadable,
        "skipped": [{"file": p.path, "reason": p.reason} for p in run.problems],
        "bytes": sum(r["bytes"] for r in rows),
        "files": [{k: r[k] for k in ("step", "file", "hash", "bytes")} for r in rows],
    }


def _data_words(run: Run) -> str | None:
    """Which data and split run.json gives the probes (None without run.json)."""
    if run.spec is None:
        return None
    from grokscope.datasets import describe_data

    return describe_data(run.spec.get("dataset"))


def scan(path: Path) -> list[dict[str, Any]]:
    """:func:`scan_run` of every run under ``path``."""
    return [scan_run(r) for r in find_runs(Path(path))]


def format_report(reports: list[dict[str, Any]]) -> str:
    """A table (one row per run) followed by the details of every finding."""
    head = ("run", "ckpts", "steps", "gaps", "dups", "order", "drift", "unreadable", "skipped")
    table = []
    for r in reports:
        rng = f"{r['first_step']}..{r['last_step']}" if r["checkpoints"] else "-"
        table.append((r["run"], str(r["checkpoints"]), rng, str(len(r["gaps"])), str(len(r["duplicates"])),
                      str(len(r["out_of_order"])), str(len(r["drift"])), str(len(r["unreadable"])),
                      str(len(r["skipped"]))))
    widths = [max(len(x) for x in col) for col in zip(head, *table)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, *table]]
    for r in reports:
        details = [f"data: {r['data']}"] if r.get("data") else []
        if r["run_json_error"]:
            details.append(f"run.json: {r['run_json_error']}")
        for g in r["gaps"]:
            miss = g["missing"]
            what = f"missing {', '.join(map(str, miss[:8]))}{' ...' if len(miss) > 8 else ''}" if miss else \
                "larger jump than the schedule's"
            details.append(f"gap {g['after']} -> {g['before']}: {what} ({r['schedule']} schedule)")
        for d in r["duplicates"]:
            details.append(f"duplicate weights at steps {', '.join(map(str, d['steps']))} (hash {d['hash'][:12]})")
        for o in r["out_of_order"]:
            details.append(f"step {o['step']} ({o['file']}) was written after step {o['written_after_step']}")
        for d in r["drift"]:
            details.append(f"drift {d['from_step']} -> {d['to_step']}: {'; '.join(d['changes'])}")
        for u in r["unreadable"]:
            details.append(f"unreadable step {u['step']}: {u['reason']}")
        for s in r["skipped"]:
            details.append(f"skipped {s['file']}: {s['reason']}")
        if details:
            lines.append("")
            lines.append(f"{r['run']} ({r['path']}):")
            lines.extend(f"  {d}" for d in details)
    return "\n".join(lines)
