"""Which checkpoints of a run a probe visits (``grokscope probe --steps``).

A selection spec, in the trainer's schedule grammar (:mod:`grokscope.training.schedule`):

* ``all`` (or nothing) — every checkpoint;
* ``0,10,100`` — exactly the checkpoints at these steps (listed steps without a checkpoint are
  reported, not guessed);
* ``log:N`` — about ``N`` checkpoints log-spaced in step: for each step ``first + t`` with ``t`` in
  ``log_steps(N, last - first)`` (``first``/``last``: the run's first and last checkpoint steps) the
  checkpoint nearest to it in ``log(1 + step - first)``, duplicates dropped (so fewer than ``N``
  where checkpoints are sparse); always the first and the last checkpoint;
* ``every:K`` — for each of ``0, K, 2K, ..., last`` the checkpoint nearest to it in step, duplicates
  dropped (with checkpoints every ``K`` steps: exactly those).

``log:N`` and ``every:K`` depend on the run's last checkpoint: while a run is still being written,
pass an explicit list (see :func:`select_steps` on the planned save steps) for a stable choice.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from grokscope.errors import GrokscopeError
from grokscope.training.schedule import every_steps, log_steps


class SelectionError(GrokscopeError, ValueError):
    """A ``--steps`` spec that cannot be parsed."""


@dataclass(frozen=True)
class Selection:
    """A parsed spec: ``kind`` is ``all``, ``list`` (``steps``), ``log`` or ``every`` (``n``)."""

    kind: str
    n: int = 0
    steps: tuple[int, ...] = ()
    text: str = "all"


def parse_selection(spec: str | None) -> Selection:
    """Parse a ``--steps`` spec (see the module docstring); raises :class:`SelectionError` naming it."""
    text = "all" if spec is None else str(spec).strip()
    if text in ("", "all"):
        return Selection("all")
    kind, sep, arg = text.partition(":")
    if sep:
        if kind not in ("log", "every"):
            raise SelectionError(f"--steps {text!r}: expected 'all', 'log:N', 'every:K' or a list "
                                 "of steps like '0,10,100'")
        try:
            n = int(arg)
        except ValueError:
            raise SelectionError(f"--steps {text!r}: {arg!r} is not an integer") from None
        if n < (2 if kind == "log" else 1):
            raise SelectionError(f"--steps {text!r}: {kind}:N needs N >= {2 if kind == 'log' else 1}")
        return Selection(kind, n=n, text=text)
    try:
        steps = tuple(sorted({int(s) for s in text.replace(" ", "").split(",") if s}))
    except ValueError:
        raise SelectionError(f"--steps {text!r}: expected 'all', 'log:N', 'every:K' or a list of "
                             "steps like '0,10,100'") from None
    if not steps or steps[0] < 0:
        raise SelectionError(f"--steps {text!r}: steps must be integers >= 0")
    return Selection("list", steps=steps, text=text)


def _nearest(sorted_steps: list[int], targets: list[int], key) -> list[int]:
    """For each target the element of ``sorted_steps`` nearest to it under ``key``; sorted, unique."""
    keys = [key(s) for s in sorted_steps]
    out = set()
    for t in targets:
        kt = key(t)
        i = bisect.bisect_left(keys, kt)
        best = min((j for j in (i - 1, i) if 0 <= j < len(keys)), key=lambda j: (abs(keys[j] - kt), j))
        out.add(sorted_steps[best])
    return sorted(out)


def select_steps(spec: str | Selection | None, steps: list[int]) -> tuple[list[int], list[int]]:
    """``(chosen, missing)``: the steps of ``steps`` (a run's checkpoint steps) that ``spec`` selects,
    sorted, and — for an explicit list — the listed steps that have no checkpoint."""
    sel = spec if isinstance(spec, Selection) else parse_selection(spec)
    avail = sorted(set(int(s) for s in steps))
    if sel.kind == "all" or not avail:
        return avail, (list(sel.steps) if sel.kind == "list" else [])
    if sel.kind == "list":
        have = set(avail)
        return [s for s in sel.steps if s in have], [s for s in sel.steps if s not in have]

    first, last = avail[0], avail[-1]
    if sel.kind == "log":
        targets = [first + t for t in log_steps(sel.n, last - first)]
        return _nearest(avail, targets, lambda s: math.log1p(s - first)), []
    return _nearest(avail, every_steps(sel.n, last), float), []
