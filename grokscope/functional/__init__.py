"""Mechanics that every probe shares, so that a probe module is only its maths.

* :func:`eval_mode` — run a model in eval mode and give it back in the mode it came in.
"""

from __future__ import annotations

from .modes import eval_mode

__all__ = ["eval_mode"]
