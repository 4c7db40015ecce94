"""Save and evaluation schedules: which steps get a checkpoint, which get an evaluation.

A *step* counts optimiser updates: the checkpoint of step ``s`` holds the weights after ``s`` updates,
so step 0 is the initialisation and step ``steps`` the end of training.

Schedule specs (``--save`` and ``--eval-every``):

* ``log:N`` — about ``N`` log-spaced steps from 0 to the end (deduplicated integers; grokking is a
  log-time phenomenon, so this is the default for saving);
* ``every:K`` (or a bare integer ``K``) — ``0, K, 2K, ...``;
* ``1,10,100`` — an explicit comma-separated list.

Every schedule includes step 0 and the last step.
"""

from __future__ import annotations

import math

from grokscope.errors import GrokscopeError

DEFAULT_SAVE = "log:100"


class ScheduleError(GrokscopeError, ValueError):
    """A schedule spec could not be parsed or names steps outside ``[0, steps]``."""


def log_steps(n: int, steps: int) -> list[int]:
    """About ``n`` distinct integers from 0 to ``steps``, log-spaced, always including 0 and ``steps``.

    Rounding collapses the dense early points, so the number of log-spaced points is raised until
    ``n`` distinct steps result (or every step is taken when ``n > steps``). Sorted ascending.
    """
    if n < 2:
        raise ScheduleError(f"log:N needs N >= 2 (0 and the last step), got {n}")
    if steps < 0:
        raise ScheduleError(f"steps must be >= 0, got {steps}")
    if steps == 0:
        return [0]
    if n > steps:
        return list(range(steps + 1))
    k = n - 1  # number of log-spaced points in [1, steps]; 0 is added separately
    while True:
        out = {0, steps}
        for i in range(k):
            out.add(int(round(math.exp(math.log(steps) * i / max(k - 1, 1)))))
        if len(out) >= n or k > 4 * steps:
            return sorted(s for s in out if 0 <= s <= steps)
        k += max(1, (n - len(out)) // 2)


def every_steps(k: int, steps: int) -> list[int]:
    """``0, k, 2k, ...`` up to ``steps``, plus ``steps`` itself."""
    if k < 1:
        raise ScheduleError(f"every:K needs K >= 1, got {k}")
    return sorted(set(range(0, steps + 1, k)) | {steps})


def parse_schedule(spec: str | int | list[int] | tuple[int, ...], steps: int) -> list[int]:
    """The sorted, deduplicated steps named by ``spec`` (see the module docstring), incl. 0 and ``steps``.

    Raises :class:`ScheduleError` naming the spec for bad syntax or steps outside ``[0, steps]``.
    """
    if isinstance(spec, bool):
        raise ScheduleError(f"bad schedule {spec!r}")
    if isinstance(spec, int):
        return every_steps(spec, steps)
    if isinstance(spec, (list, tuple)):
        items = list(spec)
    else:
        text = str(spec).strip()
        kind, sep, arg = text.partition(":")
        if sep:
            try:
                value = int(arg)
            except ValueError:
                raise ScheduleError(f"bad schedule {text!r}: {arg!r} is not an integer") from None
            if kind == "log":
                return log_steps(value, steps)
            if kind == "every":
                return every_steps(value, steps)
            raise ScheduleError(f"bad schedule {text!r}: expected 'log:N', 'every:K' or '1,10,100'")
        parts = [t for t in text.replace(" ", "").split(",") if t]
        if len(parts) == 1 and parts[0].isdigit() and "," not in text:
            return every_steps(int(parts[0]), steps)
        items = parts
    try:
        chosen = {int(s) for s in items}
    except ValueError:
        raise ScheduleError(f"bad schedule {spec!r}: expected 'log:N', 'every:K' or a list of "
                            "integers like '1,10,100'") from None
    bad = sorted(s for s in chosen if s < 0 or s > steps)
    if bad:
        raise ScheduleError(f"schedule {spec!r} names steps outside [0, {steps}]: {bad[:5]}")
    return sorted(chosen | {0, steps})


def eval_schedule(save_steps: list[int], eval_every: str | int | None, steps: int) -> list[int]:
    """Evaluation steps: every save step, plus the steps of ``eval_every`` (a schedule spec or None)."""
    out = set(save_steps) | {0, steps}
    if eval_every not in (None, 0, "", "none"):
        out |= set(parse_schedule(eval_every, steps))
    return sorted(out)
