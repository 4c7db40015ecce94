"""``grokscope forecast``: when will this run generalise? The grokking-delay law of Khanh et al.
(arXiv 2605.18845), applied to a run's weight-norm series as its checkpoints arrive.

The law treats the delay as the first passage of the squared weight norm ``V_t = ‖θ_t‖²`` through a
threshold ``V*`` while weight decay contracts it at the rate ``2κηλ``:

    T_grok − T_mem = log(V_mem / V*) / (2 κ η λ)

with ``η`` the learning rate and ``λ`` the weight decay (run.json), ``T_mem`` the first logged step
with training accuracy ≥ 0.99 (:data:`grokscope.analysis.MEM_THRESHOLD`) and ``V_mem`` the norm there.
``κ`` (AdamW's correction to the rate ``2ηλ`` of plain SGD) and ``V*`` depend on the architecture
and are calibrated on runs that generalised (:func:`calibrate`): each is one observed first passage,
``V*_i`` its norm at generalisation and ``κ_i`` the rate its norm fell at in between.

Forecasts, at every checkpoint ``t`` from memorisation on, using only what was known at ``t``:

* at ``T_mem``: ``T_mem + log(V_mem / V*) / (2κηλ)`` — the paper's forecast;
* later: the same first passage started from the current norm, ``t + log(V_t / V*) / (2κηλ)``: a norm
  that falls faster or slower than the law's rate moves the forecast. Once ``V_t ≤ V*`` without
  generalisation the forecast is ``t`` and flagged overdue.

The interval is the 10th–90th percentile of the calibration runs' ratios observed / fitted delay,
applied to the forecast's remaining delay. Generalisation is the first logged step with test accuracy
at the dataset's threshold (:func:`grokscope.analysis.grok_threshold_for`: 0.99 for modular
arithmetic); ``observed`` and each forecast's error are given where the log shows it.

``V_t`` is the sum of squares of every floating tensor of the checkpoint (weights, biases and any
floating buffers), read from the files: no probe is needed.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from grokscope.errors import GrokscopeError

INTERVAL = (0.1, 0.9)  # quantiles of observed / fitted delay that make the interval


class ForecastError(GrokscopeError, ValueError):
    """A run that cannot be forecast (no η or λ, no log, no checkpoints); the message names it."""


@dataclass
class RunSeries:
    """What the law needs of one run: checkpoint steps and ``V_t``, η, λ, the logged accuracies."""

    name: str
    path: str
    steps: np.ndarray
    v: np.ndarray
    eta: float
    lam: float
    log_steps: np.ndarray
    train_acc: np.ndarray
    test_acc: np.ndarray
    grok_threshold: float
    mem_threshold: float
    model: dict[str, Any] = field(default_factory=dict)

    def first(self, acc: np.ndarray, threshold: float, upto: float = math.inf) -> int | None:
        """The first logged step ``<= upto`` with ``acc >= threshold``; None if none."""
        ok = np.flatnonzero((acc >= threshold) & (self.log_steps <= upto))
        return int(self.log_steps[ok[0]]) if len(ok) else None

    @property
    def t_mem(self) -> int | None:
        return self.first(self.train_acc, self.mem_threshold)

    @property
    def t_grok(self) -> int | None:
        return self.first(self.test_acc, self.grok_threshold)

    def v_at(self, step: float) -> float:
        """``V`` at ``step``, log-linear between the checkpoints around it (the nearest one outside)."""
        return float(np.exp(np.interp(step, self.steps, np.log(self.v))))


_V_CACHE: dict[tuple[str, float, int], float] = {}


def _sum_squares(ckpt: Any) -> float:
    """``‖θ‖²`` of a checkpoint: the sum of squares of its floating tensors (cached per file version)."""
    import os

    from grokscope.engine.loading import read_state_dict

    st = os.stat(ckpt.path)
    key = (str(ckpt.path), st.st_mtime, st.st_size)
    if key in _V_CACHE:
        return _V_CACHE[key]

    sd = read_state_dict(ckpt)
    _V_CACHE[key] = float(sum(float((t.double() ** 2).sum()) for t in sd.values()
                              if hasattr(t, "is_floating_point") and t.is_floating_point()))
    return _V_CACHE[key]


def read_run(run: Any) -> RunSeries:
    """The :class:`RunSeries` of a discovered run (:class:`grokscope.engine.discovery.Run` with its
    run.json). :class:`ForecastError` (one line, naming the file) when η, λ, the log or the
    checkpoints are missing."""
    from grokscope import runs as runfmt
    from grokscope.analysis import MEM_THRESHOLD, grok_threshold_for

    spec = run.spec
    where = Path(run.path) / runfmt.RUN_JSON
    if spec is None:
        raise ForecastError(f"{where}: {run.spec_error or 'no run.json'}; the law needs the run's lr and weight_decay")
    train = spec.get("train") or {}
    eta, lam = train.get("lr"), train.get("weight_decay")
    if not isinstance(eta, (int, float)) or not isinstance(lam, (int, float)) or eta <= 0 or lam <= 0:
        raise ForecastError(f"{where}: train.lr={eta!r} and train.weight_decay={lam!r}; the law needs both > 0")
    records = runfmt.read_log(Path(run.path))
    rec = [r for r in records if "train_acc" in r and "test_acc" in r]
    if not rec:
        raise ForecastError(f"{Path(run.path) / runfmt.LOG_JSONL}: no train_acc/test_acc records")
    cks = [c for c in run.checkpoints if c.step is not None]
    if not cks:
        raise ForecastError(f"{run.checkpoint_dir}: no checkpoints with a step")
    steps = np.array([c.step for c in cks], dtype=np.int64)
    v = np.array([_sum_squares(c) for c in cks])
    order = np.argsort(steps)
    rec.sort(key=lambda r: r["step"])
    return RunSeries(name=run.name, path=str(run.path), steps=steps[order], v=v[order], eta=float(eta), lam=float(lam),
                     log_steps=np.array([r["step"] for r in rec], dtype=np.int64),
                     train_acc=np.array([float(r["train_acc"]) for r in rec]),
                     test_acc=np.array([float(r["test_acc"]) for r in rec]),
                     grok_threshold=grok_threshold_for(spec.get("dataset")), mem_threshold=MEM_THRESHOLD,
                     model=spec.get("model") or {})


def read_runs(path: Path) -> list[Any]:
    """The runs under ``path``: a run folder, a folder of runs, or a probe store (its runs' folders,
    as recorded in the store). Discovered runs (:func:`grokscope.engine.discovery.find_runs`)."""
    from grokscope.engine.discovery import find_runs

    path = Path(path)
    if (path / "zarr.json").exists():
        from grokscope.reading import open_store

        tree = open_store(path)
        out = []
        for name, node in sorted(tree.children.items()):
            folder = node.attrs.get("path")
            if not folder or not Path(folder).is_dir():
                raise ForecastError(f"{path}: run {name!r} names the folder {folder!r}, which is not here")
            found = find_runs(Path(folder))
            for r in found:
                r.name = name
            out += found
        return out
    return find_runs(path)


# ============================================================================ calibration
@dataclass
class Calibration:
    """The law's constants: ``κ``, ``log V*``; ``form`` ``"law"``; the interval's log-ratio quantiles;
    the runs it was fitted on (names, model spec of the first)."""

    kappa: float
    log_vstar: float
    q_lo: float
    q_hi: float
    n_runs: int
    runs: list[str] = field(default_factory=list)
    model: dict[str, Any] = field(default_factory=dict)
    form: str = "law"

    def delay(self, v: float, eta: float, lam: float) -> float:
        """The law's remaining delay from a norm ``v``: ``max(0, log(v / V*)) / (2κηλ)``."""
        return max(0.0, math.log(v) - self.log_vstar) / (2 * self.kappa * eta * lam)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "Calibration":
        """A calibration written by :meth:`save`; :class:`ForecastError` naming the file otherwise."""
        try:
            d = json.loads(Path(path).read_text())
            return cls(**{k: d[k] for k in ("kappa", "log_vstar", "q_lo", "q_hi", "n_runs")},
                       runs=list(d.get("runs", [])), model=dict(d.get("model", {})), form=d.get("form", "law"))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ForecastError(f"{path}: not a forecast calibration ({type(e).__name__}: {e})") from None


def calibrate(series: Iterable[RunSeries]) -> Calibration:
    """Fit ``κ`` and ``V*`` on the runs that memorised and then generalised with their norm falling in
    between (``V_mem > V_grok``): each such run is one observed first passage, with its own
    ``V*_i = V_grok`` and ``κ_i = log(V_mem / V_grok) / (2ηλ (T_grok − T_mem))``; ``log V*`` is the mean of
    ``log V*_i`` and ``κ`` the geometric mean of the ``κ_i``. :class:`ForecastError` when fewer than 2
    runs qualify."""
    kappas, log_vs, ys, names = [], [], [], []
    model: dict[str, Any] = {}
    for s in series:
        t_mem, t_grok = s.t_mem, s.t_grok
        if t_mem is None or t_grok is None or t_grok <= t_mem:
            continue
        v_mem, v_grok = s.v_at(t_mem), s.v_at(t_grok)
        if not v_mem > v_grok:
            continue
        y = 2 * s.eta * s.lam * (t_grok - t_mem)
        kappas.append(math.log(v_mem / v_grok) / y)
        log_vs.append(math.log(v_grok))
        ys.append((math.log(v_mem), y))
        names.append(s.name)
        model = model or s.model
    if len(kappas) < 2:
        raise ForecastError(f"calibration needs at least 2 runs that memorised and then generalised with a falling "
                            f"norm, got {len(kappas)}")
    kappa = float(np.exp(np.mean(np.log(kappas))))
    log_vstar = float(np.mean(log_vs))
    fitted = np.array([max(x - log_vstar, 1e-12) / kappa for x, _ in ys])
    ratio = np.log(np.array([y for _, y in ys]) / fitted)
    q_lo, q_hi = np.quantile(ratio, INTERVAL)
    return Calibration(kappa=kappa, log_vstar=log_vstar, q_lo=float(q_lo), q_hi=float(q_hi),
                       n_runs=len(kappas), runs=names, model=model)


# The constants fitted on the 25 runs of the 27-run sweep that generalised (examples/forecast_sweep.py
# --out runs/forecast, then grokscope forecast runs/forecast --calibrate FILE; docs/spectral.md): the
# demo's architecture (modadd-mlp) under AdamW.
BUILTIN = {"kappa": 0.042858, "log_vstar": 7.579989, "q_lo": -0.946748, "q_hi": 1.17703, "n_runs": 25,
           "model": {"arch": "mlp", "kwargs": {"depth": 2, "in_dim": 118, "out_dim": 59, "width": 128}}}


def builtin_calibration() -> Calibration:
    """The built-in calibration (:data:`BUILTIN`): the demo's 2×128 MLP on ``a + b mod 59`` under AdamW."""
    return Calibration(**{k: v for k, v in BUILTIN.items() if k != "model"}, model=dict(BUILTIN["model"]),
                       runs=["examples/forecast_sweep.py grid"])


def model_warning(s: RunSeries, cal: Calibration) -> str:
    """A line when ``s``'s model is not the one ``cal`` was fitted on (``κ`` and ``V*`` are per
    architecture), else ""."""
    if not cal.model or s.model == cal.model:
        return ""
    return (f"{s.name}: its model {json.dumps(s.model, sort_keys=True)} is not the calibration's "
            f"{json.dumps(cal.model, sort_keys=True)}; κ and V* are per architecture: fit them on runs of this "
            "model with `grokscope forecast RUNS --calibrate FILE` and pass --calibration FILE")


# ============================================================================ forecasts
@dataclass
class Forecast:
    """The forecast made at checkpoint ``step`` (knowing only what was logged by then)."""

    step: int
    v: float
    predicted: float
    low: float
    high: float
    overdue: bool = False


def forecasts(s: RunSeries, cal: Calibration) -> list[Forecast]:
    """One :class:`Forecast` per checkpoint from memorisation on (the first one at ``T_mem`` itself,
    with ``V_mem``), up to and including the first checkpoint at or after the observed
    generalisation (none before memorisation)."""
    out: list[Forecast] = []
    t_mem, t_grok = s.t_mem, s.t_grok
    if t_mem is None:
        return out
    points = [(t_mem, s.v_at(t_mem))] + [(int(t), float(v)) for t, v in zip(s.steps, s.v) if t > t_mem]
    for t, v in points:
        rest = cal.delay(v, s.eta, s.lam)
        out.append(Forecast(step=t, v=v, predicted=t + rest, low=t + rest * math.exp(cal.q_lo),
                            high=t + rest * math.exp(cal.q_hi), overdue=rest == 0))
        if t_grok is not None and t >= t_grok:
            break
    return out


def live_line(run_dir: Path, cal: Calibration | None = None) -> str:
    """One line for a run being trained: the latest forecast of its generalisation step (the demo prints
    it while it probes), or "" before memorisation or when the run cannot be forecast."""
    from grokscope.engine.discovery import find_runs

    try:
        (run,) = find_runs(Path(run_dir))
        s = read_run(run)
    except (ForecastError, ValueError, GrokscopeError, OSError):
        return ""
    if s.t_grok is not None and s.t_mem is not None and s.t_grok <= s.t_mem:
        return ""
    fs = forecasts(s, cal or builtin_calibration())
    if not fs:
        return ""
    f = fs[-1]
    seen = f" (generalised at step {s.t_grok})" if s.t_grok is not None else ""
    return (f"forecast at step {f.step}: generalises at step {f.predicted:.0f} [{f.low:.0f}, {f.high:.0f}]"
            f" (memorised at {s.t_mem}, ‖θ‖² = {f.v:.4g}){seen}")


def describe(s: RunSeries, cal: Calibration, every: bool = False) -> list[str]:
    """The forecast of one run in words: the one at memorisation, the latest, and what was observed;
    with ``every`` one line per checkpoint's forecast."""
    t_mem, t_grok = s.t_mem, s.t_grok
    head = f"{s.name}: η={s.eta:g}, λ={s.lam:g}"
    if t_mem is None:
        last = int(s.log_steps[-1])
        return [f"{head}: not memorised yet (train accuracy < {s.mem_threshold:g} up to step {last}); "
                "the law forecasts from memorisation on"]
    if t_grok is not None and t_grok <= t_mem:
        return [f"{head}: generalised (test accuracy ≥ {s.grok_threshold:g}) at step {t_grok}, not after memorising "
                f"(step {t_mem}): no grokking delay, nothing for the law to forecast"]
    fs = forecasts(s, cal)
    lines = [f"{head}: memorised at step {t_mem} (‖θ‖² = {fs[0].v:.4g}); forecast then: generalises at step "
             f"{fs[0].predicted:.0f} [{fs[0].low:.0f}, {fs[0].high:.0f}]"]
    if every:
        for f in fs[1:]:
            lines.append(f"  at step {f.step}: ‖θ‖² = {f.v:.4g} → step {f.predicted:.0f} [{f.low:.0f}, {f.high:.0f}]"
                         + (" (overdue: ‖θ‖² ≤ V*)" if f.overdue else ""))
    elif len(fs) > 1:
        f = fs[-1]
        lines.append(f"  latest (step {f.step}): step {f.predicted:.0f} [{f.low:.0f}, {f.high:.0f}]"
                     + (" (overdue: ‖θ‖² ≤ V*)" if f.overdue else ""))
    if t_grok is not None:
        err = (fs[0].predicted - t_grok) / t_grok
        held = "inside" if fs[0].low <= t_grok <= fs[0].high else "outside"
        lines.append(f"  observed: generalised (test accuracy ≥ {s.grok_threshold:g}) at step {t_grok}; the forecast "
                     f"at memorisation was off by {err:+.0%} ({held} its interval)")
    else:
        lines.append(f"  not generalised yet (test accuracy < {s.grok_threshold:g} up to step {int(s.log_steps[-1])})")
    return lines


# ============================================================================ the sweep's table
def sweep_table(run_dirs: Iterable[Path]) -> str:
    """Leave-one-out errors of the law over ``run_dirs`` (each a run folder): for each run that
    memorised, the law calibrated on the other runs that generalised forecasts its generalisation step
    at memorisation and at the checkpoint halfway (in steps) to it; a markdown table, then the median and
    worst errors of the delay ``T_grok − T_mem``, the same for the 1/(ηλ) scaling alone (no norm), and
    where the law fails."""
    from grokscope.engine.discovery import find_runs

    series = []
    for d in run_dirs:
        for r in find_runs(Path(d)):
            series.append(read_run(r))
    rows = ["| run | η | λ | train frac | T_mem | T_grok | forecast at T_mem [80 %] | delay error | "
            "forecast halfway | delay error | 1/(ηλ) only: error |", "|" + " --- |" * 11]
    errs_mem, errs_mid, errs_base, inside, fails = [], [], [], 0, []
    for i, s in enumerate(series):
        others = [o for j, o in enumerate(series) if j != i]
        try:
            cal = calibrate(others)
        except ForecastError as e:
            fails.append(f"{s.name}: {e}")
            continue
        t_mem, t_grok = s.t_mem, s.t_grok
        frac = _train_fraction(s)
        if t_mem is None:
            fails.append(f"{s.name}: never memorised (train accuracy < {s.mem_threshold:g}); no forecast")
            continue
        if t_grok is not None and t_grok <= t_mem:
            fails.append(f"{s.name}: generalised at {t_grok}, not after memorising ({t_mem}): no delay to forecast")
            continue
        fs = forecasts(s, cal)
        f0 = fs[0]
        if t_grok is None:
            fails.append(f"{s.name}: memorised at {t_mem}, forecast {f0.predicted:.0f} [{f0.low:.0f}, {f0.high:.0f}], "
                         f"never generalised within {int(s.log_steps[-1])} steps")
            rows.append(f"| {s.name} | {s.eta:g} | {s.lam:g} | {frac} | {t_mem} | — | {f0.predicted:.0f} "
                        f"[{f0.low:.0f}, {f0.high:.0f}] | — | — | — | — |")
            continue
        delay = t_grok - t_mem
        c = _scaling_constant(others)
        eb = (c / (2 * s.eta * s.lam) - delay) / delay
        errs_base.append(abs(eb))
        e0 = (f0.predicted - t_grok) / delay
        errs_mem.append(abs(e0))
        inside += f0.low <= t_grok <= f0.high
        mid = t_mem + delay / 2
        later = [f for f in fs if f.step <= mid]
        fm = later[-1]
        em = (fm.predicted - t_grok) / (t_grok - fm.step) if t_grok > fm.step else float("nan")
        if fm is not f0 and math.isfinite(em):
            errs_mid.append(abs(em))
        mid_txt = (f"{fm.predicted:.0f} (at {fm.step}) | {em:+.0%}" if fm is not f0 else "— (no checkpoint) | —")
        rows.append(f"| {s.name} | {s.eta:g} | {s.lam:g} | {frac} | {t_mem} | {t_grok} | {f0.predicted:.0f} "
                    f"[{f0.low:.0f}, {f0.high:.0f}] | {e0:+.0%} | {mid_txt} | {eb:+.0%} |")
    out = rows + [""]
    if errs_mem:
        out.append(f"Delay error of the forecast at memorisation (leave-one-out, {len(errs_mem)} runs): median "
                   f"{np.median(errs_mem):.1%}, mean {np.mean(errs_mem):.1%}, worst {max(errs_mem):.1%}; "
                   f"observed step inside the 80 % interval in {inside}/{len(errs_mem)}.")
    if errs_base:
        out.append(f"Baseline without the norm, delay = c/(2ηλ) with c the geometric mean of 2ηλ·delay over the "
                   f"other runs: median {np.median(errs_base):.1%}, worst {max(errs_base):.1%}.")
    if errs_mid:
        out.append(f"Remaining-delay error of the forecast halfway ({len(errs_mid)} runs): median "
                   f"{np.median(errs_mid):.1%}, worst {max(errs_mid):.1%}.")
    if fails:
        out.append("")
        out.append("Where the law gives no forecast or the run never generalised:")
        out += [f"- {f}" for f in fails]
    return "\n".join(out)


def _scaling_constant(series: list[RunSeries]) -> float:
    """The geometric mean of ``2ηλ (T_grok − T_mem)`` over the runs that generalised (the 1/(ηλ) scaling
    alone, no norm: the baseline of :func:`sweep_table`)."""
    ys = [2 * o.eta * o.lam * (o.t_grok - o.t_mem) for o in series
          if o.t_mem is not None and o.t_grok is not None and o.t_grok > o.t_mem]
    return float(np.exp(np.mean(np.log(ys)))) if ys else float("nan")


def _train_fraction(s: RunSeries) -> str:
    try:
        spec = json.loads((Path(s.path) / "run.json").read_text())
        return f"{spec['dataset']['kwargs']['train_fraction']:g}"
    except (OSError, ValueError, KeyError, TypeError):
        return "?"
