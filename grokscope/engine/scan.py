"""``grokscope scan``: an audit of the checkpoints under a path, run by run.

For each run: number of checkpoints, the steps present (compactly, :func:`compact_steps`), gaps in
the save schedule, duplicates (the same tensor contents at different steps; "the same file" when both
resolve to one file, as a hub cache's revisions sharing a blob do), steps written out of
order (file modification time against step), dtype/shape/key drift between consecutive checkpoints,
checkpoints holding NaN or Inf weights (each tensor named), unreadable files, files discovery could
not place, and steps that ``log.jsonl`` holds more than once (two trainers wrote the run). Every
checkpoint is read (safely, see :mod:`.loading`) to hash its tensors.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from grokscope.locations import is_url
from grokscope.sources import as_path

from .checkpoints import real_path
from .discovery import Problem, Run, find_runs
from grokscope.training.schedule import parse_schedule


STEPS_WIDTH = 40  # characters of the table's steps column; longer lists are shown in full below it


def compact_steps(steps: list[int]) -> str:
    """Sorted steps as comma-separated items: ``a..b`` (every step from a to b), ``a..b/k`` (every
    k-th step from a to b) or a single step; a run of equal increments becomes one item when it has
    at least 3 steps. ``[0, 1, 2, 3, 10, 20, 30, 45]`` → ``"0..3,10..30/10,45"``."""
    out, i, n = [], 0, len(steps)
    while i < n:
        if i + 2 < n and steps[i + 1] - steps[i] == steps[i + 2] - steps[i + 1] > 0:
            d, j = steps[i + 1] - steps[i], i + 2
            while j + 1 < n and steps[j + 1] - steps[j] == d:
                j += 1
            out.append(f"{steps[i]}..{steps[j]}" + (f"/{d}" if d > 1 else ""))
            i = j + 1
        else:
            out.append(str(steps[i]))
            i += 1
    return ",".join(out)


def _clip(text: str, width: int) -> str:
    """``text`` cut at the last comma before ``width`` characters, with ``,...`` when cut."""
    if len(text) <= width:
        return text
    cut = text.rfind(",", 0, width - 4)
    return (text[:cut] if cut > 0 else text[:width - 4]) + ",..."


def log_duplicates(run: Run) -> list[dict[str, int]]:
    """``[{"step", "count"}]`` of the steps that the run's ``log.jsonl`` holds more than once."""
    from grokscope import runs as runfmt

    counts: dict[int, int] = {}
    for rec in runfmt.read_log(run.path):
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            counts[rec["step"]] = counts.get(rec["step"], 0) + 1
    return [{"step": s, "count": c} for s, c in sorted(counts.items()) if c > 1]


def expected_steps(run: Run) -> list[int] | None:
    """The save schedule of a grokscope run (``train.save`` and ``train.steps`` of run.json), or None."""
    train = (run.spec or {}).get("train") or {}
    if "save" not in train or "steps" not in train:
        return None
    try:
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
    from .hashing import nonfinite_tensors, state_dict_hash
    from .loading import CheckpointError, read_state_dict

    rows = []
    unreadable = []
    for ck in run.checkpoints:
        files = [as_path(f) for f in ck.files]
        try:
            mtime = max(f.stat().st_mtime for f in files)
            size = sum(f.stat().st_size for f in files)
        except OSError:
            mtime, size = 0.0, 0
        if is_url(ck.path) and ck.kind == "safetensors":  # headers and ETags: no weights downloaded
            try:
                sig, digest = remote_signature(ck)
            except (OSError, ValueError) as e:
                unreadable.append({"step": ck.step, "file": ck.label, "reason": str(e)})
                continue
            rows.append({"step": ck.step, "file": ck.label, "hash": digest, "mtime": mtime,
                         "real": [str(f) for f in files], "bytes": size, "sig": sig, "nonfinite": []})
            continue
        try:
            sd = read_state_dict(ck)
        except CheckpointError as e:
            unreadable.append({"step": ck.step, "file": ck.label, "reason": str(e)})
            continue
        sig = {k: (str(v.dtype).replace("torch.", ""), list(v.shape)) for k, v in sd.items()}
        rows.append({"step": ck.step, "file": ck.label, "hash": state_dict_hash(sd), "mtime": mtime,
                     "real": sorted(str(real_path(f)) for f in files),
                     "bytes": size, "sig": sig, "nonfinite": nonfinite_tensors(sd)})
    steps = run.steps
    by_hash: dict[str, list[int]] = {}
    for r in rows:
        by_hash.setdefault(r["hash"], []).append(r["step"])
    duplicates = [{"hash": h, "steps": s} for h, s in by_hash.items() if len(s) > 1]
    for d in duplicates:  # the same file behind both (a hub cache's revisions sharing one blob)
        reals = {tuple(r["real"]) for r in rows if r["step"] in d["steps"]}
        if len(reals) == 1:
            d["same_file"] = list(next(iter(reals)))
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
        "steps": steps,
        "schedule": "run.json" if expected is not None else "inferred",
        "gaps": find_gaps(steps, expected), "duplicates": duplicates, "out_of_order": out_of_order,
        "drift": drift, "unreadable": unreadable, "log_duplicates": log_duplicates(run),
        "nonfinite": [{"step": r["step"], "file": r["file"], "tensors": r["nonfinite"]} for r in rows if r["nonfinite"]],
        "skipped": [{"file": p.path, "reason": p.reason} for p in run.problems],
        "bytes": sum(r["bytes"] for r in rows),
        "files": [{k: r[k] for k in ("step", "file", "hash", "bytes")} for r in rows],
        "remote": REMOTE_NOTE if is_url(str(run.path)) else None,
    }


# safetensors dtype names -> torch's (as the local audit names them)
_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
              "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
              "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "U16": "uint16", "U32": "uint32",
              "U64": "uint64"}
REMOTE_NOTE = ("remote series: audited from the listing, the safetensors headers and the server's ETags "
               "(no weights downloaded); duplicates are files with equal ETags and sizes, non-finite "
               "weights are not checked (grokscope probe reports them per step)")


def remote_signature(ck: Any) -> tuple[dict[str, tuple[str, list[int]]], str]:
    """``(signature, hash)`` of a remote safetensors checkpoint without its weights: each tensor's
    dtype and shape from the headers (two range reads per file), and the hash of the files' ETags and
    sizes as the server lists them (:func:`.checkpoints.listed_etag`: equal for equal single-part
    uploads; 'etag:' prefixed; the files' paths stand in when the server gives no ETag)."""
    import hashlib

    from .checkpoints import listed_etag, safetensors_header

    sig: dict[str, tuple[str, list[int]]] = {}
    paths = [as_path(f) for f in ck.files]
    for p in paths:
        for k, v in safetensors_header(p).items():
            if k != "__metadata__" and isinstance(v, dict):
                sig[k] = (_ST_DTYPES.get(str(v.get("dtype")), str(v.get("dtype")).lower()),
                          [int(n) for n in v.get("shape") or []])
    etag = listed_etag(paths) or hashlib.sha256("\n".join(map(str, paths)).encode()).hexdigest()
    return sig, "etag:" + etag


def _data_words(run: Run) -> str | None:
    """Which data and split run.json gives the probes (None without run.json)."""
    if run.spec is None:
        return None
    from grokscope.datasets import describe_data

    return describe_data(run.spec.get("dataset"))


def scan(path: Path, skipped: list[Problem] | None = None) -> list[dict[str, Any]]:
    """:func:`scan_run` of every run under ``path``; the folders left out (links leading outside
    ``path`` or into a loop) are appended to ``skipped``."""
    return [scan_run(r) for r in find_runs(path, skipped)]


def format_report(reports: list[dict[str, Any]]) -> str:
    """A table (one row per run) followed by the details of every finding."""
    head = ("run", "ckpts", "steps", "gaps", "dups", "order", "drift", "nonfinite", "unreadable", "skipped",
            "logdups")
    table = []
    listed: dict[str, str] = {}  # step lists too long for the table, shown in the details
    for r in reports:
        steps = compact_steps(r["steps"])
        if len(steps) > STEPS_WIDTH:
            listed[r["path"]] = steps
        table.append((r["run"], str(r["checkpoints"]), _clip(steps, STEPS_WIDTH) or "-", str(len(r["gaps"])),
                      str(len(r["duplicates"])), str(len(r["out_of_order"])), str(len(r["drift"])),
                      str(len(r["nonfinite"])), str(len(r["unreadable"])), str(len(r["skipped"])),
                      str(len(r.get("log_duplicates", [])))))
    widths = [max(len(x) for x in col) for col in zip(head, *table)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, *table]]
    for r in reports:
        details = [f"data: {r['data']}"] if r.get("data") else []
        if r.get("remote"):
            details.append(r["remote"])
        if r["path"] in listed:
            details.append(f"steps: {listed[r['path']]}")
        if r["run_json_error"]:
            details.append(f"run.json: {r['run_json_error']}")
        for g in r["gaps"]:
            miss = g["missing"]
            what = f"missing {', '.join(map(str, miss[:8]))}{' ...' if len(miss) > 8 else ''}" if miss else \
                "larger jump than the schedule's"
            details.append(f"gap {g['after']} -> {g['before']}: {what} ({r['schedule']} schedule)")
        for d in r["duplicates"]:
            same = (f"; the same file {', '.join(os.path.basename(f) for f in d['same_file'])}"
                    if d.get("same_file") else "")
            details.append(f"duplicate weights at steps {', '.join(map(str, d['steps']))} (hash {d['hash'][:12]}{same})")
        for o in r["out_of_order"]:
            details.append(f"step {o['step']} ({o['file']}) was written after step {o['written_after_step']}")
        for d in r["drift"]:
            details.append(f"drift {d['from_step']} -> {d['to_step']}: {'; '.join(d['changes'])}")
        for n in r["nonfinite"]:
            more = f" and {len(n['tensors']) - 8} more" if len(n["tensors"]) > 8 else ""
            details.append(f"non-finite weights at step {n['step']} ({n['file']}): "
                           f"{', '.join(n['tensors'][:8])}{more}")
        for u in r["unreadable"]:
            details.append(f"unreadable step {u['step']}: {u['reason']}")
        for s in r["skipped"]:
            details.append(f"skipped {s['file']}: {s['reason']}")
        dups = r.get("log_duplicates") or []
        if dups:
            details.append(f"log.jsonl: {len(dups)} step(s) logged more than once "
                           f"({compact_steps([d['step'] for d in dups])}): more than one trainer wrote "
                           "this run; its log and checkpoints may mix them")
        if details:
            lines.append("")
            lines.append(f"{r['run']} ({r['path']}):")
            lines.extend(f"  {d}" for d in details)
    return "\n".join(lines)
