"""Named components of a model — a layer, an attention head, the parameters under a prefix — as boolean
masks over its parameters (what the ``rllc`` probe restricts its chains to).

A component specification is a string:

* ``all`` — every parameter;
* ``layer:I`` — the parameters of block ``I`` of the model's stack of blocks: the first ``nn.ModuleList``
  (in ``named_modules`` order) whose children hold parameters (``transformer.h`` of GPT-2,
  ``gpt_neox.layers`` of GPT-NeoX);
* ``head:L.H`` — head ``H`` of attention module ``L`` (the recognised attention modules numbered in
  ``named_modules`` order; one per block in the usual transformer): its rows/columns of the query, key,
  value and output projections (and its slices of the query/key/value biases; an output bias is shared
  by all heads and belongs to no head);
* ``params:PREFIX`` — the parameters named ``PREFIX`` or under the module ``PREFIX`` (``PREFIX.…``);
* ``heads`` / ``layers`` — every head / every layer, expanded in order.

Attention layouts whose heads can be sliced (:data:`HEAD_LAYOUTS`):

* ``grokscope`` — :class:`grokscope.models.transformer.Attention` (and any module with ``nn.Linear``
  ``q``, ``k``, ``v``, ``o`` and ``n_heads``, ``d_head``): head ``h`` is rows ``h·d_head …`` of
  ``q/k/v.weight`` and the same columns of ``o.weight``;
* ``gpt2`` — Hugging Face GPT-2 self-attention (``c_attn``/``c_proj`` ``Conv1D``, weights stored
  ``(in, out)``): columns ``j·d_model + h·head_dim …`` (``j`` = q, k, v) of ``c_attn.weight`` and
  ``c_attn.bias``, rows ``h·head_dim …`` of ``c_proj.weight``;
* ``gpt_neox`` — Hugging Face GPT-NeoX (Pythia) ``query_key_value``/``dense``: the fused projection's
  output is laid out head by head (``(heads, 3·head_size)``), so head ``h`` is rows
  ``h·3·head_size …`` of ``query_key_value.weight``/``.bias`` and columns ``h·head_size …`` of
  ``dense.weight``.

Any other module whose class name contains ``Attention`` (GPT-2 cross-attention, LLaMA's separate
``q_proj``…, BERT) is refused with a one-line error when heads are asked for; ``layer:I`` and
``params:PREFIX`` work on every model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from grokscope.errors import GrokscopeError

HEAD_LAYOUTS = ("grokscope", "gpt2", "gpt_neox")
SPEC_FORMS = "all, heads, layers, layer:I, head:L.H, params:PREFIX"


class ComponentError(GrokscopeError, ValueError):
    """A component specification that is malformed or names nothing in this model."""


@dataclass(frozen=True)
class Component:
    """One component: its canonical ``name`` (``head:0.1``) and ``masks``, ``{parameter name: bool tensor
    of that parameter's shape}`` (True where the component's coordinates are; parameters it does not
    touch are absent)."""

    name: str
    masks: dict[str, torch.Tensor]

    @property
    def size(self) -> int:
        """The number of parameters in the component."""
        return int(sum(int(m.sum()) for m in self.masks.values()))


def check_specs(specs: Sequence[str]) -> None:
    """Raise :class:`ComponentError` for a specification that cannot name a component of any model."""
    if not specs:
        raise ComponentError(f"no components named; valid forms: {SPEC_FORMS}")
    for s in specs:
        _parse(s)


def _parse(spec: str) -> tuple[str, object]:
    s = str(spec).strip()
    if s in ("all", "heads", "layers"):
        return s, None
    kind, sep, arg = s.partition(":")
    if sep and kind == "layer" and arg.isdigit():
        return kind, int(arg)
    if sep and kind == "head":
        layer, dot, head = arg.partition(".")
        if dot and layer.isdigit() and head.isdigit():
            return kind, (int(layer), int(head))
    if sep and kind == "params" and arg:
        return kind, arg
    raise ComponentError(f"component {spec!r} is not understood; valid forms: {SPEC_FORMS}")


# ------------------------------------------------------------------------------ attention layouts
def head_layout(module: nn.Module) -> str | None:
    """The :data:`HEAD_LAYOUTS` entry whose head slicing fits ``module``, or None."""
    if all(isinstance(getattr(module, a, None), nn.Linear) for a in "qkvo") and hasattr(module, "n_heads") \
            and hasattr(module, "d_head"):
        return "grokscope"
    if hasattr(module, "c_attn") and hasattr(module, "c_proj") and hasattr(module, "head_dim") \
            and not getattr(module, "is_cross_attention", False):
        return "gpt2"
    if isinstance(getattr(module, "query_key_value", None), nn.Linear) and isinstance(
            getattr(module, "dense", None), nn.Linear) and hasattr(module, "head_size"):
        return "gpt_neox"
    return None


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """``[(name, module, layout)]`` of the attention modules whose heads can be sliced, in
    ``named_modules`` order. Raises :class:`ComponentError` naming a module that looks like attention
    (its class name contains ``Attention``) but has no supported layout and is not part of one that has."""
    found: list[tuple[str, nn.Module, str]] = []
    unknown: list[tuple[str, str]] = []
    for name, mod in model.named_modules():
        layout = head_layout(mod)
        if layout is not None:
            found.append((name, mod, layout))
        elif "attention" in type(mod).__name__.lower():
            unknown.append((name, type(mod).__name__))
    related = lambda a, b: a == b or a.startswith(b + ".") or b.startswith(a + ".") or not a or not b  # noqa: E731
    stray = [(n, c) for n, c in unknown if not any(related(n, f) for f, _, _ in found)]
    if stray:
        n, c = stray[0]
        raise ComponentError(f"attention module {n or '(the model)'} ({c}) has no head layout grokscope can "
                             f"slice (supported: {', '.join(HEAD_LAYOUTS)}); name it as layer:I or params:PREFIX")
    return found


def _n_heads(mod: nn.Module, layout: str) -> int:
    if layout == "grokscope":
        return int(mod.n_heads)
    if layout == "gpt2":
        return int(mod.c_proj.weight.shape[0]) // int(mod.head_dim)
    return int(mod.query_key_value.weight.shape[0]) // (3 * int(mod.head_size))


def _head_masks(prefix: str, mod: nn.Module, layout: str, h: int) -> dict[str, torch.Tensor]:
    """``{parameter name: mask}`` of head ``h`` of the attention module ``mod`` named ``prefix``."""
    out: dict[str, torch.Tensor] = {}
    p = prefix + "." if prefix else ""

    def mark(param_name: str, param: torch.Tensor | None, index) -> None:
        if param is None:
            return
        m = torch.zeros(param.shape, dtype=torch.bool, device=param.device)
        m[index] = True
        out[p + param_name] = m

    if layout == "grokscope":
        dh = int(mod.d_head)
        rows = slice(h * dh, (h + 1) * dh)
        for a in "qkv":
            lin = getattr(mod, a)
            mark(f"{a}.weight", lin.weight, (rows,))
            mark(f"{a}.bias", lin.bias, (rows,))
        mark("o.weight", mod.o.weight, (slice(None), rows))
    elif layout == "gpt2":
        dh, d = int(mod.head_dim), int(mod.c_proj.weight.shape[0])
        cols = torch.cat([torch.arange(j * d + h * dh, j * d + (h + 1) * dh) for j in range(3)])
        mark("c_attn.weight", mod.c_attn.weight, (slice(None), cols))
        mark("c_attn.bias", getattr(mod.c_attn, "bias", None), (cols,))
        mark("c_proj.weight", mod.c_proj.weight, (slice(h * dh, (h + 1) * dh),))
    else:  # gpt_neox
        hs = int(mod.head_size)
        rows = slice(h * 3 * hs, (h + 1) * 3 * hs)
        mark("query_key_value.weight", mod.query_key_value.weight, (rows,))
        mark("query_key_value.bias", mod.query_key_value.bias, (rows,))
        mark("dense.weight", mod.dense.weight, (slice(None), slice(h * hs, (h + 1) * hs)))
    return out


def block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(name, blocks)``: the first ``nn.ModuleList`` of ``model`` whose children hold parameters."""
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) and all(any(True for _ in c.parameters()) for c in mod):
            return name, mod
    raise ComponentError(f"{type(model).__name__} has no stack of blocks (an nn.ModuleList of modules with "
                         "parameters), so layer:I names nothing; name its parts as params:PREFIX")


def _prefix_masks(model: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {n: torch.ones(p.shape, dtype=torch.bool, device=p.device) for n, p in model.named_parameters()
            if not prefix or n == prefix or n.startswith(prefix + ".")}


def resolve_components(model: nn.Module, specs: Sequence[str]) -> list[Component]:
    """The components of ``model`` that ``specs`` name (``heads``/``layers`` expanded), in order, with
    duplicates removed. Raises :class:`ComponentError` (one line, naming the specification and what the
    model has) for a malformed specification, an index out of range, a prefix that names no parameter,
    or heads of an attention layout that cannot be sliced."""
    check_specs(specs)
    out: dict[str, Component] = {}
    for spec in specs:
        kind, arg = _parse(spec)
        if kind == "all":
            out["all"] = Component("all", _prefix_masks(model, ""))
        elif kind == "params":
            masks = _prefix_masks(model, str(arg))
            if not masks:
                raise ComponentError(f"component params:{arg} names no parameter of {type(model).__name__} "
                                     f"(its modules: {', '.join(n for n, _ in model.named_children())})")
            out[f"params:{arg}"] = Component(f"params:{arg}", masks)
        elif kind in ("layer", "layers"):
            name, blocks = block_list(model)
            index = range(len(blocks)) if kind == "layers" else [arg]
            for i in index:
                if not 0 <= int(i) < len(blocks):  # type: ignore[arg-type]
                    raise ComponentError(f"component layer:{i}: {name} has {len(blocks)} blocks; "
                                         f"valid: layer:0..layer:{len(blocks) - 1}")
                out[f"layer:{i}"] = Component(f"layer:{i}", _prefix_masks(model, f"{name}.{i}" if name else str(i)))
        else:  # head / heads
            attn = attention_modules(model)
            if not attn:
                raise ComponentError(f"{type(model).__name__} has no attention module whose heads grokscope "
                                     f"can slice (supported layouts: {', '.join(HEAD_LAYOUTS)})")
            if kind == "heads":
                pairs = [(li, h) for li, (_, mod, lay) in enumerate(attn) for h in range(_n_heads(mod, lay))]
            else:
                pairs = [arg]  # type: ignore[list-item]
            for li, h in pairs:  # type: ignore[misc]
                if not 0 <= li < len(attn):
                    raise ComponentError(f"component head:{li}.{h}: the model has {len(attn)} attention "
                                         f"module(s); valid layers 0..{len(attn) - 1}")
                name, mod, lay = attn[li]
                nh = _n_heads(mod, lay)
                if not 0 <= h < nh:
                    raise ComponentError(f"component head:{li}.{h}: attention {name} has {nh} heads; "
                                         f"valid heads 0..{nh - 1}")
                out[f"head:{li}.{h}"] = Component(f"head:{li}.{h}", _head_masks(name, mod, lay, h))
    return list(out.values())


def flat_masks(components: Sequence[Component], names: Sequence[str], shapes: Sequence[tuple[int, ...]],
               device: torch.device | str = "cpu") -> torch.Tensor:
    """The components as one bool matrix ``(components, d)`` over the flat parameter vector of the
    parameters ``names`` with ``shapes`` (concatenated in that order, each flattened row-major).
    A component's masks on parameters not in ``names`` (frozen ones) are left out."""
    rows = []
    for c in components:
        parts = [c.masks[n].reshape(-1).to(device) if n in c.masks else
                 torch.zeros(int(torch.Size(s).numel()), dtype=torch.bool, device=device)
                 for n, s in zip(names, shapes)]
        rows.append(torch.cat(parts))
    return torch.stack(rows)
