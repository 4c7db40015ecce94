"""The float32 precision a probe's numbers need, and the guard that puts it in force.

PyTorch may compute a float32 matrix product or convolution with fewer bits than float32 has:

* TensorFloat-32 on NVIDIA GPUs (Ampere and later): cuDNN convolutions use it **by default**
  (``torch.backends.cudnn.allow_tf32 = True``), matrix products when a user asks
  (``torch.set_float32_matmul_precision("high")``). TF32 keeps 10 mantissa bits: a relative rounding
  step of 2^-10 ~ 1e-3 (half of it, ~5e-4, is the largest rounding error);
* bfloat16 for float32 products on CPUs with oneDNN (``torch.set_float32_matmul_precision("medium")``
  or ``torch.backends.mkldnn.*.fp32_precision = "bf16"``);
* autocast (``torch.autocast``): float16/bfloat16 for whole layers.

Local complexity at the papers' radius r = 0.005 over the 3 072 inputs of a CIFAR-10 image moves each
pixel by about r / sqrt(3072) ~ 9e-5, a tenth of a TF32 rounding step at |x| ~ 1: a first-layer
convolution in TF32 computes the sign pattern of rounded, not perturbed, inputs. Sign patterns
(``lc``, ``regions``) and "is the loss exactly 0" (``collapse``) are precision measures by definition,
so these probes declare ``precision_mode = "strict"`` (:class:`~grokscope.probes.Probe`) and the
engine runs their ``compute`` inside :func:`precision_guard`: IEEE float32 for every matrix product,
convolution and RNN on every backend, no autocast; the process's own settings are restored
afterwards. Other probes (``"default"``) run under whatever the process set.

:func:`fp32_state` reports what is in force (the tests record it from inside a forward pass);
:func:`reduced_precision` turns TF32 (or bf16) on everywhere, to show what the guard prevents.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch

PRECISION_MODES = ("strict", "default")

# the (backend, op) pairs of torch's fp32_precision settings (torch >= 2.9); "all" is a parent
_BACKENDS = ("cuda", "mkldnn")
_OPS = ("matmul", "conv", "rnn")
_AUTOCAST_TYPES = ("cpu", "cuda")
# strict guards in force in this process (a Dask worker with several threads runs jobs side by side)
_LOCK = threading.Lock()
_DEPTH = 0
_SAVED: dict[str, Any] | None = None


def _new_api() -> bool:
    return hasattr(torch._C, "_get_fp32_precision_getter")


def _pairs() -> list[tuple[str, str]]:
    """Every settable (backend, op) pair, parents first."""
    return [("generic", "all")] + [(b, "all") for b in _BACKENDS] + [(b, o) for b in _BACKENDS for o in _OPS]


def _get(backend: str, op: str) -> str:
    return torch._C._get_fp32_precision_getter(backend, op)


def _set(backend: str, op: str, value: str) -> None:
    torch._C._set_fp32_precision_setter(backend, op, value)


def _autocast_enabled(device_type: str) -> bool:
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except TypeError:  # torch < 2.4: no device argument
        return bool(torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled())


def fp32_state() -> dict[str, Any]:
    """What float32 products run in right now: ``{"cuda.matmul": "ieee"|"tf32", "cuda.conv": ...,
    "cuda.rnn", "mkldnn.matmul"|"conv"|"rnn": "ieee"|"tf32"|"bf16", "autocast.cpu": bool,
    "autocast.cuda": bool}`` (each op's own setting, else its backend's, else the global one; never
    raises, whatever mix of torch's legacy and new flags a user set)."""
    state: dict[str, Any] = {}
    if _new_api():
        top = _get("generic", "all")
        for b in _BACKENDS:
            parent = _get(b, "all")
            for o in _OPS:
                value = _get(b, o)
                for fallback in (parent, top):
                    if value == "none":
                        value = fallback
                state[f"{b}.{o}"] = "ieee" if value == "none" else value
    else:  # torch < 2.9: the legacy flags
        state["cuda.matmul"] = "tf32" if torch._C._get_cublas_allow_tf32() else "ieee"
        conv = "tf32" if torch._C._get_cudnn_allow_tf32() else "ieee"
        state["cuda.conv"] = state["cuda.rnn"] = conv
        mm = torch.get_float32_matmul_precision()
        state["mkldnn.matmul"] = {"medium": "bf16"}.get(mm, "ieee")
        state["mkldnn.conv"] = state["mkldnn.rnn"] = "ieee"
    for t in _AUTOCAST_TYPES:
        state[f"autocast.{t}"] = _autocast_enabled(t)
    return state


def is_strict(state: dict[str, Any] | None = None) -> bool:
    """Whether ``state`` (default: :func:`fp32_state` now) is full IEEE float32 without autocast."""
    state = fp32_state() if state is None else state
    return all(v == "ieee" if isinstance(v, str) else v is False for v in state.values())


def _read(getter: Any) -> Any:
    try:
        return getter()
    except RuntimeError:  # torch refuses a legacy flag that disagrees with the new per-op flags
        return "refused"


def _legacy() -> tuple[Any, Any, Any]:
    """What torch's legacy readers report: matmul precision, cuBLAS and cuDNN ``allow_tf32``."""
    return (_read(torch.get_float32_matmul_precision), _read(torch._C._get_cublas_allow_tf32),
            _read(torch._C._get_cudnn_allow_tf32))


def _save() -> dict[str, Any]:
    saved: dict[str, Any] = {"legacy": _legacy()}
    if _new_api():
        saved["pairs"] = [(b, o, _get(b, o)) for b, o in _pairs()]
    return saved


def _put(matmul: str, cudnn: bool, pairs: list[tuple[str, str, str]]) -> None:
    # the legacy setters write the new flags too: legacy first, then every pair as it was
    torch.set_float32_matmul_precision(matmul)
    torch._C._set_cudnn_allow_tf32(cudnn)
    for b, o, value in pairs:
        _set(b, o, value)


def _restore(saved: dict[str, Any]) -> None:
    """Every flag as :func:`_save` found it. torch keeps the legacy flags beside the new ones and
    refuses to read (or, on a GPU, to use) them when they disagree: when the user's were unreadable,
    the legacy values that make torch report what it reported then are chosen."""
    matmul, _, cudnn = saved["legacy"]
    pairs = saved.get("pairs", [])
    known_matmul = [matmul] if matmul != "refused" else ["highest", "high", "medium"]
    known_cudnn = [cudnn] if cudnn != "refused" else [False, True]
    for m in known_matmul:
        for c in known_cudnn:
            _put(m, c, pairs)
            if _legacy() == saved["legacy"]:
                return


def _set_all(value: str) -> None:
    """Every op of every backend to ``value`` ("ieee" or "tf32"), the legacy flags agreeing (torch
    refuses to read them when they disagree)."""
    reduced = value != "ieee"
    torch.set_float32_matmul_precision("high" if reduced else "highest")
    torch._C._set_cudnn_allow_tf32(reduced)
    if _new_api():
        for b in _BACKENDS:
            for o in _OPS:
                _set(b, o, value)


@contextmanager
def precision_guard(mode: str = "strict") -> Iterator[None]:
    """``with precision_guard("strict"):`` IEEE float32 for every matrix product, convolution and RNN
    (no TF32 on GPUs, no bf16 on oneDNN CPUs) and no autocast inside; the process's settings (legacy
    and new flags, autocast) are restored afterwards, also when the body raises. ``"default"``
    changes nothing. The flags are per process: while any thread is inside a strict guard, every
    thread computes in IEEE float32 (the first guard in saves the settings, the last one out restores
    them); autocast is per thread."""
    if mode not in PRECISION_MODES:
        raise ValueError(f"precision mode must be one of {', '.join(PRECISION_MODES)}, got {mode!r}")
    if mode == "default":
        yield
        return
    global _DEPTH, _SAVED
    with ExitStack() as stack:
        for t in _AUTOCAST_TYPES:  # autocast is per thread
            if _autocast_enabled(t):
                stack.enter_context(torch.autocast(device_type=t, enabled=False))
        with _LOCK:  # the flags are per process: the first guard in saves them, the last one out restores
            if _DEPTH == 0:
                _SAVED = _save()
                _set_all("ieee")
            _DEPTH += 1
        try:
            yield
        finally:
            with _LOCK:
                _DEPTH -= 1
                if _DEPTH == 0:
                    _restore(_SAVED)
                    _SAVED = None


@contextmanager
def reduced_precision() -> Iterator[None]:
    """``with reduced_precision():`` TF32 for every matrix product, convolution and RNN (on GPUs that
    have it), restored afterwards: what a careless process runs under (``benchmarks/gpu_check.py``
    uses it to show what :func:`precision_guard` prevents)."""
    saved = _save()
    _set_all("tf32")
    try:
        yield
    finally:
        _restore(saved)


__all__ = ["PRECISION_MODES", "fp32_state", "is_strict", "precision_guard", "reduced_precision"]
