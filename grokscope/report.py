"""One self-contained HTML page per probe store (the ``grokscope report`` command is :mod:`grokscope.cli.report`).

Per run: its settings, the onset table, the LC phase table, the lead/lag table, the figures and a short
plain-words summary. Every number comes from :func:`grokscope.analysis.run_summary`; images are embedded
as base64 ``data:`` URIs and the CSS is inline, so the page opens anywhere (no scripts, no network).
"""

from __future__ import annotations

import base64
import datetime
import html
import math
import tempfile
from pathlib import Path
from collections.abc import Mapping, Sequence
from typing import Any

from grokscope.plots import PlotError, slug

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
                lines.append(f"test accuracy first reached {fmt_num(phase.get('start_threshold'))} at step "
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


# -- HTML pieces -------------------------------------------------------------------------------------

CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;max-width:1180px;
     color:#1b1b1b;line-height:1.45;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.3em;border-bottom:2px solid #ccc;margin-top:2em}
h3{font-size:1.05em;margin:1.3em 0 .4em}
.meta{color:#555;font-size:.9em}
table{border-collapse:collapse;margin:.3em 0 1em;font-size:.9em}
th,td{border:1px solid #d4d4d4;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f2f2f2} td.num{text-align:right;font-variant-numeric:tabular-nums}
td.never{color:#a33;font-style:italic}
ul.summary{background:#f7f9fc;border-left:4px solid #4a7bd0;padding:.6em 1em .6em 2em;font-size:1.02em}
.settings{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start} .settings table{margin:0}
figure{margin:1em 0} figure img{max-width:100%;border:1px solid #e0e0e0}
figcaption{color:#555;font-size:.85em}
.warning{color:#a00000;border-left:4px solid #a00000;padding-left:.5em}
.note{background:#fff8e1;border-left:4px solid #e0a800;padding:.4em .8em;font-size:.9em}
nav ul{columns:2}
"""


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _table(header: list[str], rows: list[list[tuple[str, str]]]) -> str:
    """An HTML table; each cell is ``(text, css class)``; text is escaped here."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="{c}">{_e(t)}</td>' if c else f"<td>{_e(t)}</td>"
                                    for t, c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _flatten(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if not isinstance(d, dict):
        return [(prefix or "value", d)]
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out += _flatten(v, key) if isinstance(v, dict) and v else [(key, v)]
    return out


def settings_html(settings: dict[str, Any]) -> str:
    """The model, dataset and training settings as three key/value tables side by side."""
    parts = []
    for what in ("model", "dataset", "train"):
        spec = settings.get(what)
        if not spec:
            parts.append(f"<p class='meta'>{what}: not recorded in the store</p>")
            continue
        rows = [[(k, ""), (v if isinstance(v, str) else fmt_num(v), "")] for k, v in _flatten(spec)]
        parts.append(_table([what, "value"], rows))
    return f"<div class='settings'>{''.join(parts)}</div>"


def _rule(o: dict[str, Any]) -> str:
    if o.get("kind") == "change":
        return f"{100 * float(o.get('threshold', 0.5)):.0f} % of largest {'rise' if o.get('above', True) else 'fall'}"
    rule = f"{'≥' if o.get('above', True) else '≤'} {fmt_num(o.get('threshold'))}"
    return rule + (f" for {o['patience']} checkpoints" if (o.get("patience") or 1) > 1 else "")


KEY_TRAIN_SETTINGS = ("optimizer", "lr", "weight_decay", "steps", "batch_size", "loss", "reg", "seed")


def settings_line(settings: dict[str, Any]) -> str:
    """The settings in one line: ``mlp(depth=2, width=128) · modular(p=59, op=add) · adamw lr=0.003 …``."""
    parts = []
    for what in ("model", "dataset"):
        spec = settings.get(what)
        if isinstance(spec, dict):
            name = spec.get("arch") or spec.get("factory") or spec.get("name") or what
            kw = ", ".join(f"{k}={fmt_num(v)}" for k, v in (spec.get("kwargs") or {}).items())
            seed = f" seed {spec['seed']}" if "seed" in spec and what == "dataset" else ""
            if what == "dataset":
                from grokscope.datasets import describe_split

                seed = f", {describe_split(spec)}"
            parts.append(f"{what} {name}({kw}){seed}")
    train = settings.get("train")
    if isinstance(train, dict):
        parts.append("train " + " ".join(f"{k}={fmt_num(train[k])}" for k in KEY_TRAIN_SETTINGS
                                         if k in train and train[k] is not None))
    return " · ".join(parts)


def onset_table_html(onsets: dict[str, dict]) -> str:
    """Name, measure (probe/variable [selection]), rule, smoothing window and step ("never") per onset
    or change point."""
    if not onsets:
        return "<p class='meta'>No onsets: the run has no <code>acc</code>, <code>pgd</code>, <code>lc</code>, " \
               "<code>fourier</code>, <code>align</code> or <code>norm</code> results.</p>"
    rows = []
    for name, o in onsets.items():
        sel = o.get("sel") or {}
        var = "/".join(str(x) for x in (o.get("probe"), o.get("var")) if x)
        var += f" [{', '.join(f'{k}={fmt_num(v)}' for k, v in sel.items())}]" if sel else ""
        never = _missing(o.get("step"))
        rows.append([(name, ""), (var, ""), (_rule(o), ""), (fmt_num(o.get("window", 1)), "num"),
                     (fmt_step(o.get("step")), "never" if never else "num")])
    return _table(["onset", "measure", "rule", "window", "step"], rows)


def phase_table_html(phases: dict[str, dict]) -> str:
    """One row per LC point set: the phase steps, the sizes of the smoothed LC moves and which phases
    are larger than the noise."""
    if not phases:
        return "<p class='meta'>No LC phases: the run has no <code>lc</code> probe.</p>"
    keys = [k for k in PHASE_COLUMNS if any(k in p for p in phases.values())]
    rows = []
    for split, p in phases.items():
        row = [(SPLIT_WORDS.get(split, split), "")]
        for k in keys:
            v = p.get(k)
            flag = PHASE_FLAGS.get(k)
            if k.startswith("t_") and flag and p.get(flag) is False:
                row.append(("none", "never"))  # the phase is not larger than the noise: no step to give
            else:
                row.append((fmt_step(v), "never") if k.startswith("t_") and _missing(v) else
                           (fmt_step(v) if k.startswith("t_") else fmt_num(v), "num"))
        found = [w for flag, w in (("has_first_descent", "first descent"), ("has_ascent", "ascent"),
                                   ("has_second_descent", "second descent")) if p.get(flag)]
        rows.append(row + [(", ".join(found) or "none", "")])
    first = next(iter(phases.values()))
    caption = ""
    if "window" in first:
        caption = (f"<p class='meta'>LC (mean over points, first radius) smoothed by a running median over "
                   f"{fmt_num(first['window'])} checkpoints; a phase counts when its size exceeds both "
                   f"{fmt_num(first.get('tol'))} × the curve's range and {fmt_num(first.get('noise_k'))} × its "
                   f"checkpoint-to-checkpoint noise (robust standard deviation of its second differences / √6); "
                   f"“none”: that phase is not larger than this.</p>")
    return _table(["points"] + [PHASE_COLUMNS[k] for k in keys] + ["phases found"], rows) + caption


def missing_reason(name: str, o: dict[str, Any] | None, tol: float | None = None,
                   noise_k: float | None = None) -> str:
    """Why event ``name`` has no step: a threshold never reached (with the curve's highest value) or a
    change not clear of the noise (:func:`describe_change`)."""
    if o is None:
        return f"{name}: not measured"
    if o.get("kind") == "change":
        return describe_change(name, o, tol, noise_k)
    d = o.get("detail") or {}
    top = "" if _missing(d.get("max")) else f" (highest {_acc(d['max'])})"
    return f"{name}: never reached {fmt_num(o.get('threshold'))}{_chance_words(o)}{top}"


def lead_lag_table_html(rows: list[dict[str, Any]], onsets: dict[str, dict] | None = None,
                        params: dict[str, Any] | None = None) -> str:
    """One row per pair of events: their steps, the lag in steps and in decades, the order and, for an
    undetermined order, why (:func:`missing_reason` of each missing event, from ``onsets``)."""
    if not rows:
        return "<p class='meta'>No lead/lag pairs: needs generalisation and at least one other event.</p>"
    onsets, params = onsets or {}, params or {}
    body = []
    for r in rows:
        steps = [(fmt_step(r.get(k)), "never" if _missing(r.get(k)) else "num") for k in ("t_a", "t_b")]
        lag = r.get("lag_steps")
        order = str(r.get("order", ""))
        if order == "undetermined":
            why = [missing_reason(str(r[e]), onsets.get(str(r[e])), params.get("change_tol"), params.get("noise_k"))
                   for e, t in (("a", "t_a"), ("b", "t_b")) if _missing(r.get(t))]
            order += ": " + "; ".join(why)
        body.append([(str(r.get("a")), ""), (str(r.get("b")), ""), *steps,
                     ("—" if _missing(lag) else ("−" if lag < 0 else "") + fmt_step(abs(lag)), "num"),
                     (fmt_num(r.get("lag_decades")), "num"), (order, "")])
    together = rows[0].get("together_decades")
    note = "" if _missing(together) else (f"<p class='meta'>lag = step(second) − step(first); decades = "
                                           f"log10((step₂+1)/(step₁+1)); “together” within {fmt_num(together)} "
                                           f"decades.</p>")
    header = ["first event", "second event", "step of first", "step of second", "lag (steps)", "lag (decades)",
              "order"]
    return _table(header, body) + note


def migration_table_html(migration: dict[str, Any]) -> str:
    """LC(boundary)/LC(train): first, last and largest value and the step half its rise was done."""
    names = {"ratio_first": "ratio at first step", "ratio_last": "ratio at last step",
             "ratio_max": "largest ratio", "t_half_rise": "half of largest rise at step"}
    keys = list(names) + [k for k in migration if k not in names]
    cells = [((fmt_step(v), "never" if _missing(v) else "num") if k.startswith("t_") else (fmt_num(v), "num"))
             for k, v in ((k, migration.get(k)) for k in keys)]
    return _table([names.get(k, k) for k in keys], [cells])


def img_html(png: Path, caption: str) -> str:
    """``png`` embedded as a base64 ``data:`` URI in a figure with a caption."""
    data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
    return (f"<figure><img alt='{_e(caption)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def note_html(text: str) -> str:
    return f"<p class='note'>{_e(text)}</p>"


# -- figures -----------------------------------------------------------------------------------------

# the run_summary thresholds that the plots' onset lines take too
PLOT_THRESHOLDS = ("mem", "grok", "robust", "window", "patience")


def figures(tree: Any, work: Path, thresholds: dict[str, Any], run: str | None = None,
            drawn: Mapping[str | None, Sequence[Path]] | None = None) -> list[tuple[Path, str]]:
    """``[(png, caption)]`` of :func:`grokscope.plots.plot_store` for one run (``run``) or for all runs
    overlaid (``run=None``: its overview only), written under ``work`` — or, when ``drawn`` has the
    key ``run``, the PNGs ``plot_store`` already wrote for it (nothing is drawn a second time)."""
    if drawn is not None and run in drawn:
        pngs = [Path(p) for p in drawn[run] if Path(p).suffix == ".png"]
    else:
        from grokscope.plots import plot_store

        onset_args = {k: v for k, v in thresholds.items() if k in PLOT_THRESHOLDS}
        out = work / ("all-runs" if run is None else slug(run))
        pngs = plot_store(tree, out, runs=None if run is None else [run], formats=["png"],
                          thresholds=onset_args)
    found = []
    for png in pngs:
        if png.stem == "overview":
            who = "every run overlaid" if run is None else run
            found.append((png, f"{who}: each measure over log step (0 at the left); dashed lines: onsets"))
        elif run is not None:
            found.append((png, f"{run}: Fourier norms of the embedding per frequency over steps"))
    return found


def figures_html(tree: Any, work: Path, thresholds: dict[str, Any], run: str | None = None,
                 drawn: Mapping[str | None, Sequence[Path]] | None = None) -> str:
    """:func:`figures` embedded, or a note saying why there are none."""
    try:
        return "".join(img_html(png, caption) for png, caption in figures(tree, work, thresholds, run, drawn))
    except Exception as e:  # the page still renders; the note says what failed
        return note_html(f"No figures for {run or 'the store'} ({type(e).__name__}: {e}).")


def region_steps(summary: dict[str, Any], available: list[int]) -> dict[int, list[str]]:
    """Checkpoints worth a region panel, each with why: the first, memorisation, generalisation and
    the last, snapped to the nearest available checkpoint; ``{step: [roles]}`` in step order."""
    available = sorted(available)
    if not available:
        return {}
    onsets = summary.get("onsets") or {}
    wanted = [("first", available[0])] + [(k, float(onsets[k]["step"])) for k in ("memorisation", "generalisation")
                                          if k in onsets and not _missing(onsets[k].get("step"))]
    wanted.append(("last", available[-1]))
    out: dict[int, list[str]] = {}
    for role, w in wanted:
        out.setdefault(min(available, key=lambda a: abs(a - w)), []).append(role)
    return dict(sorted(out.items()))


def region_html(node: Any, summary: dict[str, Any], path: str, work: Path) -> str:
    """The run's stored region pictures (probe ``regions``) at :func:`region_steps`, or a note saying
    why there are none. Drawn from the store only: the run folder is not needed."""
    from grokscope.regions import RegionsError, regions_figure

    if "regions" not in node.children or not node["regions"].ds.sizes.get("step", 0):
        return note_html(f"No region picture: the store has no finished regions results for {path} "
                         "(grokscope probe RUN --metrics regions, or grokscope regions RUN).")
    steps = region_steps(summary, [int(s) for s in node["regions"].ds.step.values])
    try:
        png = regions_figure(node.root, path, list(steps), work / f"{slug(path)}_regions.png")
    except RegionsError as e:
        return note_html(f"No region picture: {e}")
    at = ", ".join(f"{fmt_step(s)} ({', '.join(roles)})" for s, roles in steps.items())
    return img_html(png, f"{path}: linear regions (grey) and decision boundary (red) on the plane through three "
                         f"training points, at steps {at}")


# -- the page ----------------------------------------------------------------------------------------

def load_runs(store: Path) -> tuple[Any, list[tuple[str, Any]]]:
    """``(tree, [(run path, run node)])`` of a probe store; PlotError naming the store if it cannot
    be opened or has no runs with probe results."""
    from grokscope.plots import iter_runs, open_store

    tree = open_store(Path(store))
    runs = iter_runs(tree)
    if not runs:
        raise PlotError(f"{store}: no runs with probe results found (nothing to report)")
    return tree, runs


def summaries(store: Path, **thresholds: Any) -> dict[str, dict[str, Any]]:
    """``{run path: run_summary(run node, **thresholds)}`` for every run of ``store`` (JSON-safe)."""
    from grokscope.analysis import run_summary

    from grokscope.runlog import store_split_checks

    _, runs = load_runs(Path(store))
    out = {path: run_summary(node, **thresholds) for path, node in runs}
    for name, lines in store_split_checks(Path(store)).items():
        for path in out:
            if path.strip("/").split("/")[-1] == name:
                out[path]["split_check"] = lines
    return out


def run_section(tree: Any, path: str, node: Any, summary: dict[str, Any], work: Path,
                thresholds: dict[str, Any], regions: bool = True,
                drawn: Mapping[str | None, Sequence[Path]] | None = None) -> str:
    """The HTML section of one run: settings line, plain words, figures, tables, regions, all settings."""
    anchor = slug(path)
    settings = summary.get("settings") or {}
    parts = [f"<section id='{_e(anchor)}'><h2>Run {_e(path)}</h2>"]
    folder = settings.get("path") or node.attrs.get("path")
    parts.append(f"<p class='meta'>{_e(settings_line(settings))}<br>run folder: <code>{_e(folder)}</code>; "
                 f"probes: {_e(', '.join(sorted(node.children)))}</p>")
    lines = describe_run(summary)
    checks = summary.get("split_check") or []
    if checks:
        parts.append("".join(f"<p class='warning'><strong>{_e(c)}</strong></p>" for c in checks))
    parts.append("<h3>In plain words</h3>")
    parts.append("<ul class='summary'>" + "".join(f"<li>{_e(s)}</li>" for s in lines) + "</ul>" if lines
                 else "<p class='meta'>Nothing to say: no accuracy, LC, PGD or change-point results.</p>")
    parts.append("<h3>Figures</h3>" + figures_html(tree, work, thresholds, path, drawn))
    parts.append("<h3>Onsets</h3>" + onset_table_html(summary.get("onsets") or {}))
    parts.append("<h3>LC phases</h3>" + phase_table_html(summary.get("lc_phases") or {}))
    migration = summary.get("migration") or {}
    if migration:
        parts.append("<h3>Region migration (LC near the boundary / LC near training points)</h3>"
                     + migration_table_html(migration))
    parts.append("<h3>Lead / lag</h3>" + lead_lag_table_html(summary.get("lead_lag") or [], summary.get("onsets"),
                                                             summary.get("params")))
    if regions:
        parts.append("<h3>Linear regions</h3>" + region_html(node, summary, path, work))
    parts.append("<h3>Settings</h3>" + settings_html(settings))
    parts.append("</section>")
    return "\n".join(parts)


def render_html(store: Path, tree: Any, runs: list[tuple[str, Any]], sums: dict[str, dict],
                thresholds: dict[str, Any], work: Path, regions: bool = True,
                drawn: Mapping[str | None, Sequence[Path]] | None = None) -> str:
    """The whole page as a string: a header, all runs overlaid (if several), one section per run."""
    from grokscope import __version__

    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    th = ", ".join(f"{k}={'auto' if v is None else v}" for k, v in thresholds.items()) or "defaults"
    nav = ""
    if len(runs) > 1:
        nav = ("<nav><ul>" + "".join(f"<li><a href='#{_e(slug(p))}'>{_e(p)}</a></li>" for p, _ in runs)
               + "</ul></nav><h2>All runs</h2>" + figures_html(tree, work, thresholds, None, drawn))
    body = "\n".join(run_section(tree, p, n, sums[p], work, thresholds, regions, drawn)
                     for p, n in runs)
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>grokscope report: {_e(store.name)}</title><style>{CSS}</style></head><body>"
            f"<h1>grokscope report</h1><p class='meta'>store <code>{_e(store)}</code> · {len(runs)} run(s) · "
            f"thresholds {_e(th)} · grokscope {_e(__version__)} · {when}</p>{nav}\n{body}\n</body></html>\n")


def write_report(store: Path, out: Path | None = None, regions: bool = True,
                 summaries: dict[str, dict[str, Any]] | None = None,
                 drawn: Mapping[str | None, Sequence[Path]] | None = None, **thresholds: Any) -> Path:
    """Write the self-contained HTML report of ``store`` to ``out`` (default ``<store parent>/report.html``).

    ``thresholds`` go to :func:`grokscope.analysis.run_summary` (``mem``, ``grok``, ``robust``,
    ``window``); ``summaries`` (``{run path: run_summary(...)}`` computed with the same thresholds)
    saves computing them again; ``drawn`` (``{run path, or None for all runs overlaid: PNG paths of
    plot_store}``, drawn with the same thresholds) saves drawing those figures again. Raises
    ``PlotError`` naming the store if it holds no runs.
    """
    from grokscope.analysis import run_summary

    store = Path(store)
    out = Path(out) if out is not None else store.resolve().parent / "report.html"
    tree, runs = load_runs(store)
    sums = {path: (summaries or {}).get(path) or run_summary(node, **thresholds) for path, node in runs}
    with tempfile.TemporaryDirectory(prefix="grokscope-report-") as tmp:
        page = render_html(store, tree, runs, sums, thresholds, Path(tmp), regions, drawn)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
