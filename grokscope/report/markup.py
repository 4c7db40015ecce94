"""The report's HTML pieces: the inline CSS, escaped tables of onsets, LC phases, lead/lag and
region migration, the settings, embedded images and notes."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from .words import (PHASE_COLUMNS, PHASE_FLAGS, SPLIT_WORDS, _acc, _chance_words, _missing, describe_change,
                    fmt_num, fmt_step)

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
                     (fmt_num(r.get("lag_decades")).replace("-", "−"), "num"), (order, "")])
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


