"""The report's plain words: numbers as text (steps, values, ratios) and the sentences that say what
a run shows (:func:`describe_run`, from :func:`grokscope.analysis.run_summary`'s result)."""

from __future__ import annotations

import math
from typing import Any

# how the LC point sets read in sentences
SPLIT_WORDS = {"train": "training points", "test": "test points", "random": "random points",
               "boundary": "points near the decision boundary"}
# LC phase columns, in order, with their headers
PHASE_COLUMNS = {"t_min1": "first descent ends", "t_peak": "peak (migration starts)",
                 "t_fall_half": "second descent half-way", "t_min2": "second descent ends",
                 "descent1": "first descent size", "rise": "ascent size", "depth": "second descent size"}
# the has_* flag that says whether the phase of each step column was found
PHASE_FLAGS = {"t_min1": "has_first_descent", "t_peak": "has_ascent", "t_fall_half": "has_second_descent",
               "t_min2": "has_second_descent"}
# grid points per side of the region picture (regions' default is 400; the report keeps it quick)


# -- numbers as text ---------------------------------------------------------------------------------

def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def fmt_step(v: Any) -> str:
    """A step as text with a space every three digits (``2 400``); ``never`` for None/NaN."""
    if _missing(v):
        return "never"
    return f"{int(round(float(v))):,}".replace(",", " ")


def fmt_num(v: Any) -> str:
    """A value for a table cell: 3 significant digits for floats, ``—`` for None/NaN."""
    if _missing(v):
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isinf(v) or abs(v) < 1000:
            return f"{v:.0f}" if math.isfinite(v) and v == int(v) and abs(v) >= 1 else f"{v:.3g}"
        return f"{v:,.0f}".replace(",", " ")
    if isinstance(v, dict):
        return ", ".join(f"{k}={fmt_num(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(fmt_num(x) for x in v) + "]"
    return str(v)


def _ratio_text(later: float, earlier: float, what: str, say_what: bool = False) -> str:
    """``13× later`` (``… than <what>`` if ``say_what``), ``2 400 steps after <what>`` (from step 0),
    ``at the same checkpoint as <what>`` or ``before <what>``."""
    if later == earlier:
        return f"at the same checkpoint as {what}"
    if later < earlier:
        return f"before {what}"
    if earlier <= 0:
        return f"{fmt_step(later - earlier)} steps after {what}"
    r = later / earlier
    return (f"{r:.0f}× later" if r >= 10 else f"{r:.1f}× later") + (f" than {what}" if say_what else "")


# -- plain words -------------------------------------------------------------------------------------

# how the onsets of run_summary read in sentences (change points carry their probe's own words)
EVENT_WORDS = {"memorisation": "memorisation", "generalisation": "generalisation"}


def _event_words(name: str, onset: dict | None = None) -> str:
    if name.startswith("robustness@"):
        return f"robustness at ε={_eps_of(name, onset or {})}"
    return (onset or {}).get("words") or EVENT_WORDS.get(name, name.replace("_", " "))


def _eps_of(name: str, onset: dict) -> str:
    eps = (onset.get("sel") or {}).get("eps")
    return fmt_num(float(eps)) if eps is not None else name.split("@", 1)[-1]


def _threshold_words(onset: dict, measure: str) -> str:
    sign = "≥" if onset.get("above", True) else "≤"
    return f"{measure} {sign} {fmt_num(onset.get('threshold'))}"


def _step_of(onset: dict | None) -> float | None:
    return None if onset is None or _missing(onset.get("step")) else float(onset["step"])


def describe_run(summary: dict[str, Any]) -> list[str]:
    """Plain-words sentences about one run from its :func:`~grokscope.analysis.run_summary`.

    In order, for what the summary holds: memorisation; generalisation (how many times later than
    memorisation) and the grokking phase (test accuracy 0.2 → threshold); the LC phases on the training
    and test points and the region migration; robustness per ε; which measures moved before
    generalisation (lead/lag of the change points); the final accuracies. Missing steps read "never".
    """
    onsets = summary.get("onsets") or {}
    final = summary.get("final") or {}
    lines: list[str] = []
    if "task" in summary:
        lines.append(describe_task(summary))
    source = summary.get("accuracy_from")
    if source and source != "acc":
        lines.append(f"accuracies from the run's own log ({source}): acc was not probed")
    elif not source and "accuracy_from" in summary:
        lines.append("no accuracy curve (acc was not probed and the run folder has no log.jsonl with "
                     "train_acc/test_acc): add acc to --metrics for memorisation and generalisation")
    mem, gen = onsets.get("memorisation"), onsets.get("generalisation")
    t_mem, t_gen = _step_of(mem), _step_of(gen)
    if mem is not None:
        if t_mem is not None:
            lines.append(f"memorised ({_threshold_words(mem, 'train accuracy')}) at step {fmt_step(t_mem)}")
        else:
            tail = "" if _missing(final.get("train_acc")) else f" (final {_acc(final['train_acc'])})"
            lines.append(f"never memorised: train accuracy never reached {fmt_num(mem.get('threshold'))}{tail}")
    if gen is not None:
        if t_gen is not None:
            s = f"generalised ({_threshold_words(gen, 'test accuracy')}) at step {fmt_step(t_gen)}"
            if t_mem is not None:
                s += f" ({_ratio_text(t_gen, t_mem, 'memorisation')})"
            lines.append(s)
            phase = summary.get("grok_phase") or {}
            if not _missing(phase.get("t_start")) and phase["t_start"] < t_gen:
                before = ("" if _missing(phase.get("t_before")) else
                          f"; {_acc(phase['v_before'])} at the checkpoint before, step {fmt_step(phase['t_before'])}")
                chance = (summary.get("task") or {}).get("chance")
                frac = (summary.get("params") or {}).get("grok_start")
                how = ("" if _missing(chance) or _missing(frac) else
                       f" ({_fraction_words(frac)} of the way from chance {fmt_num(chance)} to 1)")
                lines.append(f"test accuracy first reached {fmt_num(phase.get('start_threshold'))}{how} at step "
                             f"{fmt_step(phase['t_start'])} ({_acc(phase['v_start'])} there{before}) and "
                             f"{fmt_num(gen.get('threshold'))} at step {fmt_step(t_gen)}")
        else:
            tail = "" if _missing(final.get("test_acc")) else f" (final {_acc(final['test_acc'])})"
            lines.append(f"never generalised: test accuracy never reached {fmt_num(gen.get('threshold'))}"
                         f"{_chance_words(gen)}{tail}")
    lines += _describe_lc(summary.get("lc_phases") or {}, summary.get("migration") or {})
    lines += _describe_robustness(onsets, t_gen)
    lead = {(r.get("a"), r.get("b")): r for r in summary.get("lead_lag") or []}
    for name, o in onsets.items():
        if o.get("kind") != "change":
            continue
        params = summary.get("params") or {}
        text = describe_change(name, o, params.get("change_tol"), params.get("noise_k"))
        order = order_words(lead.get((name, "generalisation"))) if _step_of(o) is not None else None
        lines.append(text + (f", {order}" if order else ""))
    acc = [f"{k.split('_')[0]} {_acc(final[k])}" for k in ("train_acc", "test_acc") if not _missing(final.get(k))]
    if acc:
        lines.append("final accuracy: " + ", ".join(acc))
    return lines


def _acc(v: float) -> str:
    return f"{float(v):.3f}"


def _chance_words(o: dict[str, Any]) -> str:
    """`` (0.5 asked, raised to clear chance 0.5)`` when the threshold was raised above the one asked for."""
    d = o.get("detail") or {}
    asked, chance = d.get("asked"), d.get("chance")
    if _missing(asked) or _missing(chance) or _missing(o.get("threshold")) or o["threshold"] <= asked:
        return ""
    return f" ({fmt_num(asked)} asked, raised to clear chance {fmt_num(chance)})"


def _fraction_words(f: float) -> str:
    return {0.2: "a fifth", 0.25: "a quarter", 0.5: "half"}.get(round(float(f), 4), f"{fmt_num(float(f))}")


def describe_task(summary: dict[str, Any]) -> str:
    """The sentence that says what the run's accuracies are measured against: the number of classes
    (and where it came from), the chance level, and how every accuracy threshold clears chance."""
    task = summary.get("task") or {}
    params = summary.get("params") or {}
    n, chance = task.get("n_classes"), task.get("chance")
    if _missing(chance) and n:
        return f"{int(n)} class in the data: no chance level to clear; accuracy thresholds are used as asked"
    if _missing(chance) or not n:
        return ("chance level unknown (the store does not record this run's task: probe it again with "
                "this grokscope to record it); accuracy thresholds are used as asked")
    origin = {"stated": "stated by the dataset", "labels": "read from the labels",
              "name": "known for this built-in dataset"}.get(task.get("classes_from"), "")
    margin = params.get("chance_margin")
    floor = "" if _missing(margin) else (
        f"; every accuracy threshold is at least chance + {fmt_num(margin)} × (1 − chance) = "
        f"{fmt_num(chance + margin * (1 - chance))}")
    thr, asked = task.get("grok_threshold"), params.get("grok")
    origin_thr = ("asked for" if not _missing(asked) else "stated by the dataset"
                  if task.get("threshold_from") in ("stated", "name") else "the default: the dataset states none")
    thr = asked if not _missing(asked) else thr
    gen = "" if _missing(thr) else f"; generalised means test accuracy ≥ {fmt_num(thr)} ({origin_thr})"
    return f"{int(n)} classes ({origin}), chance level {fmt_num(chance)}{floor}{gen}"


def describe_change(name: str, o: dict[str, Any], tol: float | None = None, noise_k: float | None = None) -> str:
    """A change point (:func:`grokscope.analysis.largest_change`) in words: the move with its values
    and steps when it is clear of the noise, else "no clear change" with the sizes that decided it
    (``tol`` and ``noise_k``: the rule's parameters, as in the summary's ``params``)."""
    from grokscope.analysis import CHANGE_TOL, NOISE_K

    tol = CHANGE_TOL if tol is None else tol
    noise_k = NOISE_K if noise_k is None else noise_k
    what = _event_words(name, o)  # the probe's own words: "the fall of ‖θ‖²"
    d = o.get("detail") or {}
    if _step_of(o) is not None:
        return (f"{what} went from {fmt_num(d.get('v_start'))} (step {fmt_step(d.get('t_start'))}) to "
                f"{fmt_num(d.get('v_end'))} (step {fmt_step(d.get('t_end'))}), half of it by step "
                f"{fmt_step(o.get('step'))}")
    if _missing(d.get("needed")):
        return f"{what}: no clear change"
    move = "rise" if o.get("above", True) else "fall"
    return (f"{what}: no clear change (its largest {move}, {fmt_num(d.get('size'))}, is not above the "
            f"{fmt_num(d.get('needed'))} a clear change needs: the larger of {100 * tol:.0f} % of its range "
            f"and {fmt_num(noise_k)} × its checkpoint-to-checkpoint noise {fmt_num(d.get('noise'))})")


def _describe_robustness(onsets: dict[str, dict], t_gen: float | None) -> list[str]:
    """One sentence per ε that reached the threshold; one for all the ε that never did."""
    lines, never = [], []
    for name, o in onsets.items():
        if not name.startswith("robustness@"):
            continue
        eps, t = _eps_of(name, o), _step_of(o)
        if t is None:
            never.append((eps, fmt_num(o.get("threshold")) + _chance_words(o)))
            continue
        s = f"robust accuracy at ε={eps} reached {fmt_num(o.get('threshold'))}{_chance_words(o)} at step {fmt_step(t)}"
        if t_gen is not None:
            s += f" ({_ratio_text(t, t_gen, 'generalisation', say_what=True)})"
        lines.append(s)
    for thr in dict.fromkeys(t for _, t in never):
        eps = [e for e, t in never if t == thr]
        lines.append(f"robust accuracy at ε={', '.join(eps)} never reached {thr}")
    return lines


def _describe_lc(phases: dict[str, dict], migration: dict[str, Any]) -> list[str]:
    """Sentences for the LC phases of the training and test points (all point sets are in the table)
    and for the region migration (LC near the boundary relative to LC near training points)."""
    shown = [s for s in ("train", "test") if s in phases] or list(phases)[:1]
    lines = []
    for split in shown:
        p = phases[split]
        where = f"LC around {SPLIT_WORDS.get(split, split + ' points')}"
        if _missing(p.get("t_peak")):
            lines.append(f"{where}: too few checkpoints for phases")
            continue
        parts = []
        if p.get("has_first_descent", True) and not _missing(p.get("t_min1")):
            parts.append(f"fell until step {fmt_step(p['t_min1'])}")
        second = p.get("has_second_descent", True) and not _missing(p.get("t_min2")) and p["t_min2"] != p["t_peak"]
        if p.get("has_ascent", True):
            parts.append(f"peaked at step {fmt_step(p['t_peak'])}" if second else
                         f"rose to its highest at step {fmt_step(p['t_peak'])} with no second descent after it")
        if second:
            parts.append(f"then fell again until step {fmt_step(p['t_min2'])}")
        lines.append(f"{where} " + (", ".join(parts) if parts else "stayed flat (no phase larger than the noise)"))
    if migration and not _missing(migration.get("ratio_first")) and not _missing(migration.get("ratio_last")):
        s = (f"region migration: LC near the decision boundary / LC near training points went from "
             f"{fmt_num(migration['ratio_first'])} to {fmt_num(migration['ratio_last'])}")
        if not _missing(migration.get("t_half_rise")):
            s += f" (half of its largest rise by step {fmt_step(migration['t_half_rise'])})"
        lines.append(s)
    return lines


def order_words(row: dict[str, Any] | None) -> str | None:
    """When event ``a`` of a lead/lag row (:func:`grokscope.analysis.lead_lag`) came relative to ``b``:
    ``"1.0 decades before generalisation (step 3 000)"``, ``"together with …"`` or ``"… after …"``;
    None when either step is missing."""
    if not row or _missing(row.get("t_a")) or _missing(row.get("t_b")):
        return None
    b, tb, dec = row.get("b"), row["t_b"], row.get("lag_decades")
    other = f"{_event_words(str(b))} (step {fmt_step(tb)})"
    if row.get("order") == "together" or row["t_a"] == tb or _missing(dec):
        return f"together with {other}"
    return f"{abs(dec):.1f} decades {'before' if row['t_a'] < tb else 'after'} {other}"


