"""The worker side of the engine: a task probes one checkpoint with one or more probes.

A *job* is (run, checkpoint, probe): it is the unit of results, ``done`` flags, failures and
progress. Each probe gets the model in eval mode with the checkpoint's weights freshly loaded. The engine sends one Dask task per (run, checkpoint) carrying every probe still to do for
that checkpoint, so each checkpoint is read once. :func:`run_task` never raises: a file that cannot
be read, a model that does not fit, or a probe that fails becomes an :class:`Outcome` with the error.

Per worker process, the model skeleton (per model spec and device) and the dataset (per dataset
spec, device and dtype) are cached; torch is imported inside the task so a client never initialises
CUDA, and torch's thread count is set once per process so workers do not oversubscribe cores.
"""

from __future__ import annotations

import json
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from .checkpoints import Checkpoint
from grokscope.trust import Trust
from grokscope.trust import UntrustedCode

_CACHE_SIZE = 4
_MODELS: OrderedDict[str, Any] = OrderedDict()
_DATA: OrderedDict[str, Any] = OrderedDict()
_PROBES: dict[str, Any] = {}


@dataclass(frozen=True)
class ProbeRequest:
    """A probe to run: its registry name, its parameters (an instance of its ``Params``) and which
    checkpoints it visits (a ``--steps`` spec, see :mod:`.selection`; None: all)."""

    name: str
    params: Any
    steps: str | None = None


@dataclass(frozen=True)
class Task:
    """One checkpoint of one run and the probes still to compute on it."""

    run: str
    spec: dict[str, Any]
    checkpoint: Checkpoint
    previous: Checkpoint | None
    probes: tuple[ProbeRequest, ...]
    device: str = "cpu"
    threads: int = 1  # torch threads per worker process; 0 leaves the process's setting alone
    trust: Any = None  # the client's grokscope.trust.Trust: the code this job may import
    where: str = "run.json"  # the file the spec came from, for refusals
    fetch: Any = None  # .fetch.FetchSettings of remote checkpoints (storage options, cache budget)


@dataclass
class Outcome:
    """The result of one job: an ``xr.Dataset`` without a step dim (``result``) or an ``error``."""

    run: str
    step: int
    probe: str
    label: str
    result: Any = None
    error: str = ""
    checkpoint_hash: str = ""
    checkpoint_etag: str = ""  # the checkpoint's listed ETags, hashed (remote files), else ''
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.result is not None and not self.error


def _spec_key(spec: Any) -> str:
    return json.dumps(spec, sort_keys=True, default=str)


def _cached(cache: OrderedDict, key: str, make):
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    value = make()
    cache[key] = value
    while len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)
    return value


def _setup_threads(n: int) -> None:
    if n > 0:
        import torch

        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


def _model(spec: dict[str, Any], device: Any, trust: Any, where: str):
    from grokscope.models import build_model, check_model_spec

    check_model_spec(spec, trust, where)  # before the cache: a cached model is no way round trust

    def make():
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the skeleton's init is overwritten; keep global RNG untouched
            return build_model(spec, trust, where).to(device)

    return _cached(_MODELS, _spec_key([spec, str(device)]), make)


def _data(spec: dict[str, Any], device: Any, dtype: Any, trust: Any, where: str):
    from grokscope.datasets import check_dataset_spec, load_dataset

    check_dataset_spec(spec, trust, where)

    def make():
        d = load_dataset(spec, trust, where)
        if d.x_train.is_floating_point() and d.x_train.dtype != dtype:
            d.x_train, d.x_test = d.x_train.to(dtype), d.x_test.to(dtype)
            d.box_low, d.box_high = d.box_low.to(dtype), d.box_high.to(dtype)
        return d.to(device) if str(device) != "cpu" else d

    return _cached(_DATA, _spec_key([spec, str(device), str(dtype)]), make)


def _trust(task: Any) -> Any:
    """The trust the job carries; a job without one may import built-ins and entry points only."""

    return task.trust if task.trust is not None else Trust()


def probe_class(name: str):
    """``get_probe(name)``, cached per process (the entry-point scan is slow)."""
    if name not in _PROBES:
        from grokscope.probes import get_probe

        _PROBES[name] = get_probe(name)
    return _PROBES[name]


def describe_error(e: BaseException) -> str:
    """``Type: message (file:line)`` of the innermost frame, one line."""
    tb = traceback.extract_tb(e.__traceback__)
    where = f" ({tb[-1].filename.rsplit('/', 2)[-1] if tb else '?'}:{tb[-1].lineno})" if tb else ""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}{where}"


def _prepare(task: Task, sd: dict[str, Any], device: Any) -> tuple[Any, Any, dict[str, Any]]:
    """``(model with the checkpoint's weights, data or None, {probe name: class})`` of one task."""
    from .loading import float_dtype, load_into

    model = _model(task.spec["model"], device, _trust(task), task.where)
    load_into(model, sd, task.checkpoint.path)
    classes = {p.name: probe_class(p.name) for p in task.probes}
    data = None
    if any(c.needs_data for c in classes.values()):
        data = _data(task.spec["dataset"], device, float_dtype(sd), _trust(task), task.where)
    return model, data, classes


def preflight(task: Task) -> dict[str, Any]:
    """Load ``task``'s checkpoint, model and data as a job would, and run every requested probe's
    ``check(model, data, params)`` once; raises the first problem (``ProbeError``, ``CheckpointError``,
    ``ModelError`` ...) with the run and checkpoint named. The driver calls it before any job is sent.

    Returns ``{probe name: template}`` of the probes that declare one (``Probe.template``, loaded
    into numpy); a template that fails is left out (the store's template then comes from the first
    result, and ``grokscope.testing.check_probe`` shows the probe's error)."""
    import torch

    from .loading import read_state_dict

    from grokscope.functional import eval_mode
    from grokscope.functional.precision import precision_guard
    from grokscope.probes.base import ProbeContext, check_result, check_task

    sd = read_state_dict(task.checkpoint)
    model, data, classes = _prepare(task, sd, torch.device(task.device))
    templates: dict[str, Any] = {}
    with eval_mode(model):
        for req in task.probes:
            probe = classes[req.name]()
            if probe.needs_data:
                check_task(classes[req.name], data)
            with precision_guard(probe.precision_mode):
                probe.check(model, data, req.params)
            try:
                with precision_guard(probe.precision_mode):
                    template = probe.template(model, data, req.params,
                                              ProbeContext(step=int(task.checkpoint.step), run=task.run,
                                                           device=torch.device("cpu"), run_spec=task.spec))
                if template is not None:
                    templates[req.name] = check_result(template, classes[req.name])
            except Exception:  # noqa: BLE001 - a declared template is optional, the results are not
                continue
    return templates


def content_hash(sd: dict[str, Any], expected: dict[str, tuple[int, ...]], where: str
                 ) -> tuple[str, dict[str, Any]]:
    """``(checkpoint_hash, state dict)`` of a checkpoint's state dict ``sd`` for a model whose keys
    and shapes are ``expected``: the hash of the tensors matched to the model under the model's key
    names (so DDP, Lightning and compiled layouts of equal weights hash equal), and those tensors.
    When ``sd`` does not fit the model, the hash of ``sd`` itself and ``sd``."""
    from .hashing import state_dict_hash
    from .loading import CheckpointError, match_keys

    try:
        matched = match_keys(sd, expected, where)
    except CheckpointError:
        return state_dict_hash(sd), sd
    return state_dict_hash(matched), matched


@dataclass(frozen=True)
class HashTask:
    """The checkpoints of one run whose content hashes ``grokscope probe`` checks against the store."""

    spec: dict[str, Any]
    checkpoints: tuple[Checkpoint, ...]
    trust: Any = None  # as in Task: the code this job may import
    where: str = "run.json"
    fetch: Any = None  # as in Task


def hash_task(task: HashTask) -> dict[int, str]:
    """``{step: checkpoint_hash}`` (as :func:`run_task` records it; '' when the file cannot be read
    or the model not built) of every checkpoint of ``task``; never raises."""
    out: dict[int, str] = {}
    if task.fetch is not None:
        from .fetch import configure

        configure(task.fetch)
    try:
        import torch

        from .loading import read_state_dict

        model = _model(task.spec["model"], torch.device("cpu"), _trust(task), task.where)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    except Exception:  # noqa: BLE001 - the probe jobs will report why
        return {int(ck.step): "" for ck in task.checkpoints}  # type: ignore[arg-type]
    for ck in task.checkpoints:
        try:
            out[int(ck.step)] = content_hash(read_state_dict(ck), expected, ck.path)[0]  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - unreadable now: recomputing it records why
            out[int(ck.step)] = ""  # type: ignore[arg-type]
    return out


def run_task(task: Task) -> list[Outcome]:
    """Probe one checkpoint with every requested probe; one :class:`Outcome` per probe, never raises."""
    t0 = time.perf_counter()
    ck = task.checkpoint
    outs = {p.name: Outcome(run=task.run, step=int(ck.step), probe=p.name, label=ck.label,  # type: ignore[arg-type]
                            checkpoint_etag=ck.etag)
            for p in task.probes}

    def fail_all(msg: str) -> list[Outcome]:
        for o in outs.values():
            o.error = msg
            o.seconds = time.perf_counter() - t0
        return list(outs.values())

    try:
        _setup_threads(task.threads)
        if task.fetch is not None:
            from .fetch import configure

            configure(task.fetch)
        import torch

        from grokscope.probes import ProbeContext

        from .hashing import nonfinite_message, nonfinite_tensors
        from .loading import CheckpointError, load_into, match_keys, read_state_dict

        device = torch.device(task.device)
        try:
            sd = read_state_dict(ck)
        except CheckpointError as e:
            return fail_all(str(e))
        expected = {k: tuple(v.shape) for k, v in _model(task.spec["model"], device, _trust(task), task.where).state_dict().items()}
        digest, sd = content_hash(sd, expected, ck.path)
        for o in outs.values():
            o.checkpoint_hash = digest
        bad = nonfinite_tensors(sd)
        if bad:
            return fail_all(nonfinite_message(bad))
        model, data, classes = _prepare(task, sd, device)

        def load_previous():
            if task.previous is None:
                return None
            prev = read_state_dict(task.previous)
            prev = match_keys(prev, expected, task.previous.path)
            return {k: v.to(device=device) for k, v in prev.items()}

        ctx = ProbeContext(step=int(ck.step), run=task.run, device=device,  # type: ignore[arg-type]
                           previous_step=task.previous.step if task.previous else None,
                           load_previous=load_previous, run_spec=task.spec)
        first = True
        for req in task.probes:
            out = outs[req.name]
            t1 = time.perf_counter()
            try:
                if not first:  # a probe must not see what an earlier probe did to the weights
                    load_into(model, sd, ck.path)
                first = False
                out.result = classes[req.name]()(model, data, req.params, ctx)  # Probe.__call__: framed
            except Exception as e:  # noqa: BLE001 - a failing probe is recorded, the rest go on
                out.error = f"probe {req.name} failed: {describe_error(e)}"
            out.seconds = time.perf_counter() - t1
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return list(outs.values())
    except Exception as e:  # noqa: BLE001 - model/data/checkpoint errors fail this task's jobs
        from grokscope.datasets import DatasetError
        from grokscope.models import ModelError

        from .loading import CheckpointError

        msg = str(e) if isinstance(e, (CheckpointError, UntrustedCode, ModelError, DatasetError)) else describe_error(e)
        return fail_all(msg)
