"""``lc``'s closed-form fast path for piecewise-linear models that are not an ``nn.Sequential``: the
forward is traced with ``torch.fx`` and the graph is run node by node on each point's centre and the
``P`` images of its frame while the network is linear on the point's polytope, as
:func:`.lc_counting.run_sequential_fast` does for a chain.

Supported graphs (anything else falls back to the hook path, with the reason logged):

* one input; ``nn.Linear`` (on flat features), ``nn.BatchNorm1d`` in eval mode (a fixed affine map per
  feature), ``nn.ReLU`` / ``nn.LeakyReLU`` (the counted kinks), ``nn.Identity`` / ``nn.Dropout``,
  ``nn.Flatten(1, -1)`` / ``torch.flatten(x, 1)``; residual additions ``a + b`` of two such values; one
  tensor output.
* Convolutions are not on this path (their direction images are whole feature maps): a model with
  one falls back.

A value of the graph is held for two sets of points: those still inside one linear region of every
activation so far (centre ``c (B_l, H)`` and images ``T (P, H)`` shared, or ``(B_l, P, H)``), and those
already expanded to their ``2P`` vertices (``(B_f, 2P, H)``). At an activation, points whose polytope
meets the kink (``|c| ≤ max_p |T_p|``) are counted and expanded in every live value at once, so a
residual addition always adds values over the same points. The counts are those of the hook path (the
tests check them equal).
"""

from __future__ import annotations

import logging
import operator
from typing import Any, Callable

import torch
from torch import fx, nn

from .kinks import count_crossings

log = logging.getLogger(__name__)

_PASS = (nn.Identity, nn.Dropout)
_ACT = (nn.ReLU, nn.LeakyReLU)


class _Unsupported(Exception):
    pass


def _is_flatten_call(node: fx.Node) -> bool:
    if node.op == "call_function" and node.target is torch.flatten:
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return start == 1 and end == -1
    return False


def _check_graph(gm: fx.GraphModule, input_flat: bool, counted: Callable[[nn.Module], bool]) -> None:
    """Raise :class:`_Unsupported` naming the first node the fast path cannot run."""
    flat: dict[fx.Node, bool] = {}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise _Unsupported(f"{len(placeholders)} inputs")
    for node in gm.graph.nodes:
        ins = [a for a in node.all_input_nodes]
        if node.op == "placeholder":
            flat[node] = input_flat
        elif node.op == "output":
            if not isinstance(node.args[0], fx.Node):
                raise _Unsupported("the output is not one tensor")
        elif node.op == "call_module":
            m = gm.get_submodule(str(node.target))
            if len(ins) != 1 or len(node.args) != 1 or node.kwargs:
                raise _Unsupported(f"module {node.target} called with several arguments")
            src = flat[ins[0]]
            if isinstance(m, nn.Flatten):
                if (m.start_dim, m.end_dim) != (1, -1):
                    raise _Unsupported(f"{node.target}: Flatten({m.start_dim}, {m.end_dim})")
                flat[node] = True
            elif isinstance(m, _PASS):
                flat[node] = src
            elif isinstance(m, (nn.Linear, nn.BatchNorm1d)):
                if not src:
                    raise _Unsupported(f"{node.target}: {type(m).__name__} on unflattened input")
                if isinstance(m, nn.BatchNorm1d) and (m.training or m.running_mean is None):
                    raise _Unsupported(f"{node.target}: BatchNorm1d without running statistics")
                flat[node] = True
            elif type(m) in _ACT:
                if not src:
                    raise _Unsupported(f"{node.target}: activation on unflattened input")
                if not counted(m):
                    raise _Unsupported(f"{node.target}: activation not counted")
                flat[node] = True
            else:
                raise _Unsupported(f"{node.target}: {type(m).__name__}")
        elif node.op == "call_function" and _is_flatten_call(node):
            flat[node] = True
        elif node.op == "call_function" and node.target in (operator.add, torch.add) and len(ins) == 2 \
                and len(node.args) == 2 and not node.kwargs:
            if not (flat[ins[0]] and flat[ins[1]]):
                raise _Unsupported(f"{node.name}: addition of unflattened values")
            flat[node] = True
        else:
            raise _Unsupported(f"{node.op} {getattr(node.target, '__name__', node.target)}")


class _Value:
    """One graph value for the linear points (``c``, ``t``) and the expanded ones (``full``)."""

    __slots__ = ("c", "t", "full")

    def __init__(self, c: torch.Tensor | None, t: torch.Tensor | None, full: torch.Tensor | None):
        self.c, self.t, self.full = c, t, full


def _vertices(c: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    t = t if t.dim() == 3 else t.unsqueeze(0)
    c = c.unsqueeze(1)
    return torch.cat([c + t, c - t], dim=1)


def _affine(m: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` of an eval-mode BatchNorm1d: ``y = scale·x + shift``."""
    scale = torch.rsqrt(m.running_var + m.eps)
    if m.weight is not None:
        scale = scale * m.weight
    shift = -m.running_mean * scale
    if m.bias is not None:
        shift = shift + m.bias
    return scale, shift


class GraphFastPath:
    """The traced graph of ``model`` and the node-by-node runner; build with :func:`graph_fast_path`."""

    def __init__(self, gm: fx.GraphModule):
        self.gm = gm
        self.nodes = list(gm.graph.nodes)
        last: dict[fx.Node, int] = {}
        for i, node in enumerate(self.nodes):
            for a in node.all_input_nodes:
                last[a] = i
        # values whose last use is node i: dropped after it (so an expansion only touches live values)
        self.dead: list[list[fx.Node]] = [[] for _ in self.nodes]
        for node, i in last.items():
            self.dead[i].append(node)

    def __call__(self, model: nn.Module, zc: torch.Tensor, rv: torch.Tensor, counter: Any,
                 include_output: bool) -> None:
        """Count one chunk ``zc (B, ...)`` with frame images ``rv (P, D)`` into ``counter`` (a
        :class:`.lc_counting.KinkHooks` in counting mode, its pass started), as the hook path would;
        ``model``: the traced model (unused: the graph holds its modules)."""
        b, p = zc.shape[0], rv.shape[0]
        lin_rows = torch.arange(b, device=zc.device)
        full_rows = lin_rows[:0]
        env: dict[fx.Node, _Value] = {}
        out_node = None
        for i, node in enumerate(self.nodes):
            for gone in self.dead[i - 1] if i else ():
                env.pop(gone, None)
            if node.op == "placeholder":
                env[node] = _Value(zc.reshape(b, -1), rv, None)
                continue
            if node.op == "output":
                out_node = node.args[0]
                break
            if node.op == "call_function" and node.target in (operator.add, torch.add):
                a, c = env[node.args[0]], env[node.args[1]]
                env[node] = _Value(None if a.c is None else a.c + c.c, None if a.t is None else a.t + c.t,
                                   None if a.full is None else a.full + c.full)
                continue
            src = env[node.all_input_nodes[0]]
            m = self.gm.get_submodule(str(node.target)) if node.op == "call_module" else None
            if m is None or isinstance(m, (nn.Flatten,) + _PASS):
                env[node] = src
            elif isinstance(m, nn.Linear):
                f = torch.nn.functional.linear
                env[node] = _Value(None if src.c is None else f(src.c, m.weight, m.bias),
                                   None if src.t is None else f(src.t, m.weight),
                                   None if src.full is None else f(src.full, m.weight, m.bias))
            elif isinstance(m, nn.BatchNorm1d):
                scale, shift = _affine(m)
                env[node] = _Value(None if src.c is None else src.c * scale + shift,
                                   None if src.t is None else src.t * scale,
                                   None if src.full is None else src.full * scale + shift)
            else:  # a counted ReLU / LeakyReLU
                j = counter.next_layer(counter.module_key(m))
                slope = float(m.negative_slope) if isinstance(m, nn.LeakyReLU) else 0.0
                moving = None
                if src.c is not None:
                    reach = torch.maximum(src.t.amax(dim=-2), src.t.amin(dim=-2).neg())
                    cross = (src.c.abs() <= reach) & (reach > 0)
                    counter.store(j, cross.sum(dim=1), lin_rows)
                    moving = cross.any(dim=1)
                if src.full is not None:
                    counter.store(j, count_crossings(src.full.reshape(-1, src.full.shape[-1]), 2 * p),
                                  full_rows)
                if counter.done(j):
                    return
                if moving is not None and bool(moving.any()):  # expand these points in every live value
                    stay = ~moving
                    dying = set(self.dead[i])
                    for key, val in [(k, v) for k, v in env.items() if k not in dying] + [(node, src)]:
                        if val.c is None:
                            continue
                        shared = val.t.dim() == 2
                        new = _vertices(val.c[moving], val.t if shared else val.t[moving])
                        full = new if val.full is None else torch.cat([val.full, new])
                        kept = ((val.c[stay], val.t if shared else val.t[stay]) if bool(stay.any())
                                else (None, None))
                        moved = _Value(kept[0], kept[1], full)
                        if key is node:
                            src = moved
                        else:
                            env[key] = moved
                    full_rows = torch.cat([full_rows, lin_rows[moving]])
                    lin_rows = lin_rows[~moving]
                c = t = full = None
                if src.c is not None:
                    gain = torch.where(src.c > 0, 1.0, slope).to(src.c.dtype)
                    tt = src.t if src.t.dim() == 3 else src.t.unsqueeze(0)
                    c = torch.nn.functional.leaky_relu(src.c, slope) if slope else torch.relu(src.c)
                    t = tt * gain.unsqueeze(1)
                if src.full is not None:
                    full = torch.nn.functional.leaky_relu(src.full, slope) if slope else torch.relu(src.full)
                env[node] = _Value(c, t, full)
        if include_output and out_node is not None:
            val = env[out_node]
            parts, rows = [], []
            if val.c is not None:
                parts.append(_vertices(val.c, val.t))
                rows.append(lin_rows)
            if val.full is not None:
                parts.append(val.full)
                rows.append(full_rows)
            verts = torch.cat(parts)[torch.argsort(torch.cat(rows))]
            counter.record_output(verts.reshape(b * 2 * p, -1))


def graph_fast_path(model: nn.Module, forward: Callable, x: torch.Tensor,
                    counted: Callable[[nn.Module], bool]) -> GraphFastPath | None:
    """The fx fast path for ``model`` when ``forward`` is the model itself and its traced graph is
    supported (see the module docstring), every activation module in it being a counted layer
    (``counted(module)``); None otherwise, with the reason logged at INFO level. ``x``: example input (its
    dimensionality decides whether the input is already flat)."""
    name = type(model).__name__
    if forward is not model:
        log.info("lc fast path off for %s: a custom forward", name)
        return None
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure means: use the hooks
        log.info("lc fast path off for %s: torch.fx cannot trace it (%s)", name, str(e).splitlines()[0][:200])
        return None
    try:
        _check_graph(gm, x.dim() == 2, counted)
    except _Unsupported as e:
        log.info("lc fast path off for %s: %s", name, e)
        return None
    return GraphFastPath(gm)
