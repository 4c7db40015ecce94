"""Which layer produced the tensor a probe counts at a hooked module (two names for one tensor).

Probes that count activation patterns (``lc``, the linear-region pictures) hook the activation
modules and count the tensor each one *receives*, so they name a layer after the activation
(``encoder.1``, ``act1``); the papers' code and most users name the same tensor after the layer that
*computed* it, the ``Linear``/``Conv`` right before (``encoder.0``). :func:`producing_modules` finds
the second name from the first by running the model once.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .modes import eval_mode


def producing_modules(model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor,
                      layers: Sequence[str], counts_output: bool = False) -> list[str]:
    """For each name of ``layers`` (modules of ``model``, or ``"output"`` for the logits), the leaf module
    whose output is the tensor that module receives as its first input, found by identity in one
    forward pass ``forward(z)`` (eval mode, no gradients; the mode is restored). ``""`` where that tensor
    is made by no module (a residual sum, a functional op) or the module did not run.

    ``counts_output=True`` (LC with explicit ``layers``: the modules' outputs are counted): each
    module produced its own counted tensor, so its own name is returned (``""`` if it did not run).
    """
    produced: dict[int, str] = {}
    keep: list[torch.Tensor] = []  # holds every output so that no id is reused during the pass
    received: dict[str, str] = {}
    wanted = set(layers)

    def after(name: str):
        def hook(module: nn.Module, args, out) -> None:
            if torch.is_tensor(out):
                produced[id(out)] = name
                keep.append(out)
        return hook

    def before(name: str):
        def hook(module: nn.Module, args) -> None:
            if counts_output:
                received.setdefault(name, name)
            elif args and torch.is_tensor(args[0]):
                received.setdefault(name, produced.get(id(args[0]), ""))
        return hook

    handles = []
    for name, module in model.named_modules():
        if name in wanted:
            handles.append(module.register_forward_pre_hook(before(name)))
        if name and not any(True for _ in module.children()):
            handles.append(module.register_forward_hook(after(name)))
    try:
        with eval_mode(model), torch.no_grad():
            out = forward(z)
    finally:
        for h in handles:
            h.remove()
    if "output" in wanted and "output" not in received:
        received["output"] = produced.get(id(out), "") if torch.is_tensor(out) else ""
    return [received.get(name, "") for name in layers]
