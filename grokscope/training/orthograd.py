"""⊥Grad (Prieto et al., *Grokking at the Edge of Numerical Stability*, ICLR 2025).

Before the base optimiser's step, each parameter tensor's gradient is replaced by its component
orthogonal to the tensor itself, rescaled to the original gradient's norm::

    g_⊥ = g − (⟨w, g⟩ / (⟨w, w⟩ + 1e-30)) · w,        g ← g_⊥ · ‖g‖ / (‖g_⊥‖ + 1e-30)

(tensors flattened, in their own dtype; the 1e-30 guards are the authors' ``eps``). The step then
cannot grow the weights along themselves, the "naive loss minimisation" direction that scales the
logits of a homogeneous network. The trainer's ``--optimizer orthograd`` is ⊥AdamW,
``orthograd-sgd`` ⊥SGD; the base optimiser's state (and the resume state) is unchanged.
"""

from __future__ import annotations

from typing import Iterable

import torch

EPS = 1e-30


@torch.no_grad()
def orthogonalise_grads_(params: Iterable[torch.Tensor], eps: float = EPS) -> None:
    """Project every ``p.grad`` orthogonal to ``p`` (per tensor) and rescale it to its old norm, in place."""
    for p in params:
        if p.grad is None:
            continue
        w, g = p.detach().reshape(-1), p.grad.reshape(-1)
        proj = torch.dot(w, g) / (torch.dot(w, w) + eps)
        g_orth = g - proj * w
        g_orth = g_orth * (g.norm() / (g_orth.norm() + eps))
        p.grad.copy_(g_orth.view_as(p.grad))
