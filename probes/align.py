"""``align``: Jacobian and centroid alignment of input–output Jacobians with the data (Walker et al.,
*GrokAlign*; ``docs/algorithms.md#align--jacobian-and-centroid-alignment``).

For a network ``f: R^d → R^C`` (logits) and a point ``x`` (flattened), with ``J = ∂f/∂x ∈ R^{C×d}``:

* centroid ``μ_x = Jᵀ𝟏`` (one vector–Jacobian product); ``centroid_cos = ⟨μ,x⟩/max(‖μ‖‖x‖, 1e-8)``,
  ``centroid_inner = ⟨μ,x⟩``, ``centroid_norm = ‖μ‖``;
* ``row_cos[k] = ⟨J_k, x⟩/max(‖J_k‖‖x‖, 1e-8)`` per output row;
* ``jac_fro = ‖J‖_F`` (exact, or a Hutchinson estimate when the output is large);
* ``pc1 = σ₁²/Σσᵢ²`` of ``J`` (from ``eigvalsh`` of the small Gram matrix ``JJᵀ`` or ``JᵀJ``);
* ``jac_align = ‖Jx‖/max(‖J‖_F‖x‖, 1e-8)`` — 1 iff ``J = c xᵀ`` [grokscope's own scalar].

The functions here take any batched callable ``f`` mapping ``(n, *shape)`` to ``(n, C)`` that treats
samples independently (a model in eval mode); :func:`jacobian_alignment` is the notebook entry
point, :class:`AlignProbe` the engine's thin wrapper.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from grokscope.functional import eval_mode, pad_stack, subset_indices
from grokscope.functional.points import SELECTIONS

from .base import (EventSpec, PanelSpec, Probe, ProbeContext, ProbeError, check_choice, check_work,
                   template_dataset)

Fn = Callable[[torch.Tensor], torch.Tensor]

DEFAULT_N_PROJ = 64  # projections of the Hutchinson estimate when the output is too large for exact
SCALARS = ("centroid_cos", "centroid_inner", "centroid_norm", "jac_fro", "pc1", "jac_align")
EPS = 1e-8  # the authors' floor on the product of norms in a cosine


# ---------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------
def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def _outputs(f: Fn, x: torch.Tensor) -> torch.Tensor:
    out = f(x)
    if out.ndim != 2 or out.shape[0] != x.shape[0]:
        raise ValueError(f"align: f must map ({x.shape[0]}, ...) inputs to (n, C) outputs, "
                         f"got shape {tuple(out.shape)}")
    return out


def _leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clone().requires_grad_(True)


def jacobian_rev(f: Fn, x: torch.Tensor) -> torch.Tensor:
    """Jacobians ``(n, C, d)`` by reverse mode: one forward, ``C`` backward passes of the batch.

    Row ``k`` of every sample's Jacobian is ``∂(Σ_b f_k(x_b))/∂x_b`` — valid because ``f`` treats
    samples independently. ``d`` is the flattened input size.
    """
    with torch.enable_grad():
        xl = _leaf(x)
        out = _outputs(f, xl)
        n, c = out.shape
        rows = []
        for k in range(c):
            (g,) = torch.autograd.grad(out[:, k].sum(), xl, retain_graph=k < c - 1)
            rows.append(_flat(g))
    return torch.stack(rows, dim=1)


def jacobian_fwd(f: Fn, x: torch.Tensor) -> torch.Tensor:
    """Jacobians ``(n, C, d)`` column by column: ``d`` Jacobian–vector products of the batch
    (cheaper than :func:`jacobian_rev` when ``d < C``), see :func:`_jvp_fn`."""
    n, d = x.shape[0], x[0].numel()
    jvp = _jvp_fn(f, x)
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    cols = [jvp(eye[j].expand(n, d).reshape(x.shape), retain=j < d - 1) for j in range(d)]
    return torch.stack(cols, dim=2)


def _jvp_fn(f: Fn, x: torch.Tensor) -> Callable[..., torch.Tensor]:
    """``t ↦ J_x t`` per sample ``(n, C)`` by the double-backward trick: ``g(u) = J_xᵀu`` is linear in
    ``u``, so ``J_x t = ∂⟨g(u), t⟩/∂u``. (Plain autograd: no forward-mode support needed, and none
    of ``torch.func.jvp``'s first-call compilation.)"""
    with torch.enable_grad():
        xl = _leaf(x)
        out = _outputs(f, xl)
        u = torch.zeros_like(out, requires_grad=True)
        (g,) = torch.autograd.grad(out, xl, u, create_graph=True)

    def jvp(t: torch.Tensor, retain: bool = False) -> torch.Tensor:
        with torch.enable_grad():
            (col,) = torch.autograd.grad(g, u, t, retain_graph=retain)
        return col.detach()

    return jvp


def batched_jacobian(f: Fn, x: torch.Tensor, mode: str = "auto", memory_mb: float = 256.0) -> torch.Tensor:
    """Input–output Jacobians ``(n, C, d)`` of ``f`` at every row of ``x`` (``d`` = flattened input).

    ``mode``: ``"rev"`` (C backward passes), ``"fwd"`` (d Jacobian–vector products) or ``"auto"`` (the
    cheaper of the two, from one probe forward of a single sample). Samples are processed in chunks
    so that one chunk's Jacobians take about ``memory_mb``. A module is evaluated in eval mode.
    """
    with eval_mode(f, freeze=True):
        chunks = [j for _, _, j in _jacobian_chunks(f, x, mode, memory_mb)]
    return torch.cat(chunks, dim=0)


def _pick_mode(mode: str, c: int, d: int) -> str:
    if mode == "auto":
        return "rev" if c <= d else "fwd"
    if mode not in ("rev", "fwd"):
        raise ValueError(f"align: mode must be auto, rev or fwd, not {mode!r}")
    return mode


def _chunk_size(n: int, c: int, d: int, itemsize: int, memory_mb: float) -> int:
    per_sample = 3 * c * d * itemsize  # the Jacobian plus the rows/columns being stacked
    return max(1, min(n, int(memory_mb * 2**20 // max(per_sample, 1))))


def _jacobian_chunks(f: Fn, x: torch.Tensor, mode: str, memory_mb: float
                     ) -> Iterator[tuple[int, int, torch.Tensor]]:
    n, d = x.shape[0], x[0].numel()
    with torch.no_grad():
        c = _outputs(f, x[:1]).shape[1]
    mode = _pick_mode(mode, c, d)
    step = _chunk_size(n, c, d, x.element_size(), memory_mb)
    fn = jacobian_rev if mode == "rev" else jacobian_fwd
    for i in range(0, n, step):
        yield i, min(i + step, n), fn(f, x[i:i + step])


def centroid(f: Fn, x: torch.Tensor) -> torch.Tensor:
    """Centroids ``μ_x = J_xᵀ𝟏`` with the shape of ``x``: one vector–Jacobian product with a ones
    cotangent (``∂ Σ_{b,k} f_k(x_b) / ∂x_b``)."""
    with torch.enable_grad():
        xl = _leaf(x)
        (g,) = torch.autograd.grad(_outputs(f, xl).sum(), xl)
    return g


def random_directions(n_proj: int, n: int, c: int, kind: str = "sphere",
                      generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """``(n_proj, n, c)`` unit vectors: independent uniform on the sphere ``S^{c-1}`` (normalised
    Gaussians) or, with ``kind="orthogonal"``, ``n_proj ≤ c`` orthonormal vectors per sample (the
    first columns of a Haar-random orthogonal matrix; each still uniform on the sphere, and
    ``n_proj = c`` makes the Hutchinson estimate exact). Drawn on the CPU from ``generator`` (the
    global RNG if None), then moved to ``device``."""
    g = torch.randn(n_proj, n, c, generator=generator, dtype=torch.float64)
    if kind == "sphere":
        v = g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    elif kind == "orthogonal":
        if n_proj > c:
            raise ValueError(f"orthogonal directions need n_proj <= C ({n_proj} > {c})")
        q, r = torch.linalg.qr(g.permute(1, 2, 0))  # (n, c, n_proj)
        q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(1)
        v = q.permute(2, 0, 1)
    else:
        raise ValueError(f"directions must be 'sphere' or 'orthogonal', not {kind!r}")
    return v.to(dtype=dtype, device=device)


def jacobian_sq_norm_estimate(f: Fn, z: torch.Tensor, n_proj: int = 1, *, directions: str = "sphere",
                              generator: torch.Generator | None = None,
                              create_graph: bool = False) -> torch.Tensor:
    """Hutchinson estimate of ``‖J_z‖_F²`` per sample, shape ``(n,)``: ``C/n_proj Σ_i ‖J_zᵀ v_i‖²``
    with unit ``v_i`` (see :func:`random_directions`), one vector–Jacobian product each, on a fresh
    forward pass of ``f``. Unbiased: ``E[C‖Jᵀv‖²] = ‖J‖_F²`` for ``v`` uniform on the sphere.

    With ``create_graph=True`` the result is differentiable w.r.t. the parameters of ``f`` (and
    w.r.t. ``z`` itself when ``z`` is a non-leaf tensor, e.g. a token embedding): the GrokAlign penalty.
    """
    if n_proj < 1:
        raise ValueError(f"n_proj must be >= 1, got {n_proj}")
    with torch.enable_grad():
        zz = z if z.requires_grad else _leaf(z)
        return jacobian_sq_norm_from_outputs(_outputs(f, zz), zz, n_proj, directions=directions,
                                             generator=generator, create_graph=create_graph)


def jacobian_sq_norm_from_outputs(out: torch.Tensor, z: torch.Tensor, n_proj: int = 1, *,
                                  directions: str = "sphere", generator: torch.Generator | None = None,
                                  create_graph: bool = False) -> torch.Tensor:
    """:func:`jacobian_sq_norm_estimate` on a forward pass already done: ``out (n, C)`` computed from
    ``z`` (which requires grad), e.g. the logits of the task loss, whose graph is then shared. All
    ``n_proj`` projections go through one batched vector–Jacobian product (``is_grads_batched``).
    The same directions are drawn as by :func:`jacobian_sq_norm_estimate`. Shape ``(n,)``."""
    if n_proj < 1:
        raise ValueError(f"n_proj must be >= 1, got {n_proj}")
    n, c = out.shape
    v = random_directions(n_proj, n, c, directions, generator, out.dtype, out.device)
    with torch.enable_grad():
        if n_proj == 1:
            (g,) = torch.autograd.grad(out, z, grad_outputs=v[0], create_graph=create_graph,
                                       retain_graph=True)
            total = _flat(g).pow(2).sum(dim=1)
        else:
            (g,) = torch.autograd.grad(out, z, grad_outputs=v, create_graph=create_graph, retain_graph=True,
                                       is_grads_batched=True)
            total = g.reshape(n_proj, n, -1).pow(2).sum(dim=2).sum(dim=0)
    return total * (c / n_proj)


def _jvp(f: Fn, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``J_x t`` per sample ``(n, C)``."""
    return _jvp_fn(f, x)(t)


# ---------------------------------------------------------------------------------------------
# the alignment measures
# ---------------------------------------------------------------------------------------------
def _stats_from_jacobian(J: torch.Tensor, xf: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every measure from the Jacobians ``J (n, C, d)`` and flattened inputs ``xf (n, d)``."""
    c, d = J.shape[1:]
    jx = torch.bmm(J, xf.unsqueeze(2)).squeeze(2)
    gram = torch.bmm(J, J.transpose(1, 2)) if c <= d else torch.bmm(J.transpose(1, 2), J)
    row_sq = torch.diagonal(gram, dim1=1, dim2=2) if c <= d else (J * J).sum(dim=2)
    return _stats(jx, gram, row_sq, J.sum(dim=1), xf)


def _stats_from_factor(A: torch.Tensor, W: torch.Tensor, WWt: torch.Tensor, xf: torch.Tensor
                       ) -> dict[str, torch.Tensor]:
    """Every measure when ``J = A W``: ``A (n, C, h)`` is the Jacobian of the rest of the network
    w.r.t. the output of a leading linear layer with weight ``W (h, d)``, ``WWt = W Wᵀ``. Then
    ``Jx = A (Wx)``, ``JJᵀ = A (WWᵀ) Aᵀ`` and ``μ = (Aᵀ𝟏)ᵀ W`` — ``J`` itself is never formed."""
    jx = torch.bmm(A, (xf @ W.T).unsqueeze(2)).squeeze(2)
    gram = torch.bmm(A @ WWt, A.transpose(1, 2))
    return _stats(jx, gram, torch.diagonal(gram, dim1=1, dim2=2), A.sum(dim=1) @ W, xf)


def _stats(jx: torch.Tensor, gram: torch.Tensor, row_sq: torch.Tensor, mu: torch.Tensor,
           xf: torch.Tensor) -> dict[str, torch.Tensor]:
    """The measures from ``Jx (n, C)``, a Gram matrix of ``J`` (``JJᵀ`` or ``JᵀJ``), the squared row
    norms ``(n, C)``, the centroids ``μ (n, d)`` and the flattened inputs ``(n, d)``."""
    xn = xf.norm(dim=1)
    row_sq = row_sq.clamp_min(0)
    fro = row_sq.sum(dim=1).sqrt()
    ev = torch.linalg.eigvalsh(gram).clamp_min(0)
    tot = ev.sum(dim=1)
    pc1 = torch.where(tot > 0, ev[:, -1] / tot.clamp_min(torch.finfo(ev.dtype).tiny),
                      torch.full_like(tot, math.nan))
    out = _centroid_stats(mu, xf, xn)
    out.update(
        row_cos=jx / (row_sq.sqrt() * xn.unsqueeze(1)).clamp_min(EPS),
        jac_fro=fro,
        pc1=pc1,
        jac_align=jx.norm(dim=1) / (fro * xn).clamp_min(EPS),
    )
    return out


def leading_linear(f: Fn, x: torch.Tensor) -> tuple[torch.Tensor, Fn, torch.Tensor] | None:
    """``(W, rest, u)`` when ``f`` is an ``nn.Sequential`` whose first operation on the flattened input
    is an ``nn.Linear`` narrower than the input (``u = Wx + b`` its output, ``rest`` the remaining
    layers), so ``J = (∂rest/∂u) W`` is cheaper to work with than ``J``; None otherwise."""
    if not isinstance(f, nn.Sequential):
        return None
    mods = list(f)
    i = 0
    while i < len(mods) and isinstance(mods[i], nn.Flatten) and mods[i].start_dim == 1:
        i += 1
    if i >= len(mods) or not isinstance(mods[i], nn.Linear) or (i == 0 and x.ndim != 2):
        return None
    lin = mods[i]
    d = x[0].numel()
    if lin.in_features != d or lin.out_features >= d:
        return None
    with torch.no_grad():
        u = lin(_flat(x).to(lin.weight.dtype))
    rest = nn.Sequential(*mods[i + 1:])
    return lin.weight.detach(), (lambda v: rest(v.clone())), u  # clone: rest may start in place


def _centroid_stats(mu: torch.Tensor, xf: torch.Tensor, xn: torch.Tensor) -> dict[str, torch.Tensor]:
    inner = (mu * xf).sum(dim=1)
    norm = mu.norm(dim=1)
    return {"centroid_cos": inner / (norm * xn).clamp_min(EPS), "centroid_inner": inner,
            "centroid_norm": norm}



def jacobian_alignment(f: Fn, x: torch.Tensor, *, n_proj: int | None = None, max_rows: int = 256,
                       mode: str = "auto", memory_mb: float = 256.0, seed: int = 0
                       ) -> dict[str, np.ndarray]:
    """Every alignment measure of ``f`` at the rows of ``x`` (shape ``(n, *shape)``; flattened for
    the cosines). ``f`` maps ``(n, *shape)`` to logits ``(n, C)`` and must treat samples
    independently; an ``nn.Module`` (or a bound method of one) is put in eval mode for the call.

    Exact path (``n_proj`` None and ``C ≤ max_rows``): batched Jacobians (:func:`batched_jacobian`,
    chunked to about ``memory_mb``); for an MLP whose first layer is narrower than the input the
    Jacobian of the rest is used with the first weight folded in (:func:`leading_linear`).
    Otherwise ``J`` is never formed: the centroid is one VJP, ``Jx`` one JVP, ``‖J‖_F`` the
    Hutchinson estimate with ``n_proj`` (default ``DEFAULT_N_PROJ``) sphere directions seeded by
    ``seed``, and ``row_cos`` / ``pc1`` are NaN.

    Returns numpy arrays: ``centroid_cos, centroid_inner, centroid_norm, jac_fro, pc1, jac_align``
    of shape ``(n,)``, ``row_cos`` of shape ``(n, C)``, and ``jac_fro_exact`` (0-d bool).
    ``pc1`` is NaN where ``J = 0``.
    """
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"align: x must have shape (n, ...) with n >= 1, got {tuple(x.shape)}")
    if n_proj is not None and n_proj < 1:
        raise ValueError(f"align: n_proj must be >= 1 (or None for exact), got {n_proj}")
    parts: list[dict[str, torch.Tensor]] = []
    with eval_mode(f, freeze=True):
        with torch.no_grad():
            c = _outputs(f, x[:1]).shape[1]
        exact = n_proj is None and c <= max_rows
        factor = leading_linear(f, x) if exact and mode == "auto" else None
        if factor is not None:
            W, rest, u = factor
            WWt = W @ W.T
            for i, j, A in _jacobian_chunks(rest, u, "auto", memory_mb):
                parts.append(_stats_from_factor(A, W, WWt, _flat(x[i:j]).to(A.dtype)))
        elif exact:
            for i, j, J in _jacobian_chunks(f, x, mode, memory_mb):
                parts.append(_stats_from_jacobian(J, _flat(x[i:j]).to(J.dtype)))
        else:
            gen = torch.Generator().manual_seed(int(seed))
            step = _chunk_size(x.shape[0], 4, x[0].numel(), x.element_size(), memory_mb)
            for i in range(0, x.shape[0], step):
                parts.append(_stats_estimated(f, x[i:i + step], n_proj or DEFAULT_N_PROJ, gen, c))
    res = {k: torch.cat([p[k] for p in parts]).detach().cpu().numpy() for k in parts[0]}
    res["jac_fro_exact"] = np.array(exact)
    return res


def _stats_estimated(f: Fn, x: torch.Tensor, n_proj: int, gen: torch.Generator, c: int
                     ) -> dict[str, torch.Tensor]:
    xf = _flat(x)
    xn = xf.norm(dim=1)
    out = _centroid_stats(_flat(centroid(f, x)), xf, xn)
    jx = _jvp(f, x, x)
    fro = jacobian_sq_norm_estimate(f, x, n_proj, generator=gen).detach().clamp_min(0).sqrt()
    nan = torch.full_like(xn, math.nan)
    out.update(row_cos=torch.full((x.shape[0], c), math.nan, dtype=xn.dtype, device=xn.device),
               jac_fro=fro, pc1=nan, jac_align=jx.norm(dim=1) / (fro * xn).clamp_min(EPS))
    return out


# ---------------------------------------------------------------------------------------------
# the probe
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AlignParams:
    n_points: int = 1024           # per split; <= 0: the whole split
    selection: str = "first"       # "first" points of the split, or "random" (seeded)
    splits: tuple[str, ...] = ("train", "test")
    n_proj: int = 0                # 0: exact ‖J‖_F when C <= max_rows; > 0: Hutchinson, this many
    max_rows: int = 256            # largest output size C for which the full Jacobian is formed
    memory_mb: float = 256.0       # Jacobian memory per chunk of samples
    seed: int = 0


class AlignProbe(Probe):
    name = "align"
    panel_order = 40
    quick_params = {"n_points": "16"}
    description = ("Jacobian/centroid alignment with the data (Walker et al.): centroid cosine, "
                   "row cosines, ‖J‖_F, PC1, Jacobian alignment, per split and sample")
    Params = AlignParams
    outputs = {
        **{v: ("split", "sample") for v in SCALARS},
        "row_cos": ("split", "sample", "output"),
        **{f"{v}_{s}": ("split",) for v in (*SCALARS, "row_cos") for s in ("mean", "min", "max")},
        "jac_fro_exact": (),
    }
    needs_grad = True

    panels = (
        PanelSpec("centroid_cos_mean", "Centroid alignment", "mean cos(μ_x, x)", "split"),
        PanelSpec("jac_align_mean", "Jacobian alignment", "mean ‖J x‖ / (‖J‖_F ‖x‖)", "split"),
        PanelSpec("jac_fro_mean", "Jacobian norm", "mean ‖J_x‖_F (log scale)", "split", yscale="log"),
    )
    events = (EventSpec("alignment_rise", "centroid_cos_mean", "rise", "the rise of centroid alignment",
                        "train"),)

    @classmethod
    def check_params(cls, params: AlignParams) -> None:
        check_choice("align.selection", params.selection, SELECTIONS)
        if not params.splits or any(str(s) not in ("train", "test") for s in params.splits):
            raise ProbeError(f"align.splits must be train and/or test, got {list(params.splits)}")
        for key, value, low in (("n_proj", params.n_proj, 0), ("max_rows", params.max_rows, 1)):
            if value < low:
                raise ProbeError(f"align.{key} must be >= {low}, got {value}")
        if not params.memory_mb > 0:
            raise ProbeError(f"align.memory_mb must be > 0, got {params.memory_mb}")
        check_work("align", "align.memory_mb (bytes)", params.memory_mb * 2**20, each=1)
        check_work("align", "align.n_points x align.max_rows", max(params.n_points, 1) * params.max_rows)

    def template(self, model: nn.Module, data, params: AlignParams, ctx: ProbeContext | None = None):
        """The result's shape from the splits' point counts and the output size ``C`` of one forward
        pass (which also decides whether ``‖J‖_F`` is exact: ``n_proj = 0`` and ``C <= max_rows``)."""
        from grokscope.models.adapters import continuous_view

        splits = list(params.splits)
        n = max(len(subset_indices(len(data.split(s)[0]), params.n_points, params.seed, params.selection))
                for s in splits)
        x = data.x_train[:1].to(next(model.parameters()).device)
        with eval_mode(model), torch.no_grad():
            f, z = continuous_view(model, x, data.input_kind)
            c = _outputs(f, z[:1]).shape[1]
        exact = not params.n_proj and c <= params.max_rows
        return template_dataset(self.outputs, coords={"split": splits, "sample": np.arange(n), "output": np.arange(c)},
                                attrs={"jac_fro_exact": int(exact)})

    def compute(self, model: nn.Module, data, params: AlignParams, ctx: ProbeContext):
        import xarray as xr

        from grokscope.models.adapters import continuous_view

        try:
            ref = next(model.parameters())
            device, dtype = ref.device, ref.dtype
        except StopIteration:
            device, dtype = ctx.device, torch.get_default_dtype()
        results = []
        for split in params.splits:
            x, _ = data.split(split)
            x = x[subset_indices(len(x), params.n_points, params.seed, params.selection)].to(device)
            if x.is_floating_point():
                x = x.to(dtype)
            with eval_mode(model):
                f, z = continuous_view(model, x, data.input_kind)
                results.append(jacobian_alignment(
                    f, z, n_proj=params.n_proj or None, max_rows=params.max_rows,
                    memory_mb=params.memory_mb, seed=params.seed))
        return _to_dataset(xr, list(params.splits), results)


def _to_dataset(xr, splits: list[str], results: list[dict[str, np.ndarray]]):
    """Stack per-split results into a Dataset, NaN-padding ``sample`` to the largest split."""
    n = max(len(r["jac_fro"]) for r in results)
    c = results[0]["row_cos"].shape[1]

    data_vars = {}
    for v in SCALARS:
        data_vars[v] = (("split", "sample"), pad_stack([r[v] for r in results], n, dtype=np.float64))
    data_vars["row_cos"] = (("split", "sample", "output"),
                            pad_stack([r["row_cos"] for r in results], n, dtype=np.float64))
    with np.errstate(all="ignore"), _quiet_nan_warnings():
        for v in (*SCALARS, "row_cos"):
            a = data_vars[v][1].reshape(len(splits), -1)
            for s, fn in (("mean", np.nanmean), ("min", np.nanmin), ("max", np.nanmax)):
                data_vars[f"{v}_{s}"] = (("split",), fn(a, axis=1))
    exact = all(bool(r["jac_fro_exact"]) for r in results)
    data_vars["jac_fro_exact"] = ((), np.float64(exact))
    return xr.Dataset(data_vars, coords={"split": splits, "sample": np.arange(n), "output": np.arange(c)},
                      attrs={"jac_fro_exact": int(exact)})


@contextlib.contextmanager
def _quiet_nan_warnings() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield
