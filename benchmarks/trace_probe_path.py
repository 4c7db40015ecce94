"""How far a probe request travels: ``grokscope probe RUN --metrics lc,align --scheduler sync`` run
in-process under a profiler, printing

* hops: project frames (grokscope/, probes/, datasets/) on the stack when the first probe's
  ``compute`` starts — the call chain from the command to the maths;
* files: project source files whose code ran during the whole command;
* client reads of the first checkpoint: how many times its weights were read before the first job.

    python benchmarks/trace_probe_path.py

Counts, not timings: they do not depend on the machine or its load.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path


def _make_run(folder: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    from grokscope import runs
    from grokscope.models import build_model

    model = {"arch": "mlp", "kwargs": {"in_dim": 64, "out_dim": 10, "depth": 2, "width": 12}}
    data = {"name": "digits", "kwargs": {"n_train": 60, "n_test": 40}, "seed": 0}
    runs.write_run_json(folder, model, data, {"loss": "ce"})
    torch.manual_seed(0)
    net = build_model(model)
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    for step in (0, 10):
        save_file({k: v.contiguous() for k, v in net.state_dict().items()},
                  str(folder / "checkpoints" / f"step-{step:08d}.safetensors"))
    return folder / "checkpoints" / "step-00000000.safetensors"


def main() -> int:
    from click.testing import CliRunner

    import grokscope
    from grokscope.cli import main as cli

    roots = [str(Path(grokscope.__file__).resolve().parent)]
    for pkg in ("grokscope.probes", "grokscope.datasets"):
        roots.append(str(Path(__import__(pkg, fromlist=["_"]).__file__).resolve().parent))
    tmp = Path(tempfile.mkdtemp())
    first = str(_make_run(tmp / "run"))
    files: set[str] = set()
    state = {"hops": None, "reads": 0, "jobs": False}

    def ours(filename: str) -> bool:
        return any(filename.startswith(r) for r in roots)

    def profile(frame, event, arg):
        if event != "call":
            return
        code = frame.f_code
        if not ours(code.co_filename):
            return
        files.add(code.co_filename)
        if code.co_name == "run_task":
            state["jobs"] = True
        if code.co_name in ("_safetensors_load", "_torch_load", "_read_sharded") and not state["jobs"]:
            ref = frame.f_locals.get("ckpt", frame.f_locals.get("path"))
            where = str(getattr(ref, "path", ref) or "")
            files_of = [str(p) for p in getattr(ref, "files", ()) or ()]
            if where == first or first in files_of:
                state["reads"] += 1
        if code.co_name == "compute" and state["hops"] is None and "probes" in code.co_filename:
            depth, f = 0, frame
            while f is not None:
                depth += ours(f.f_code.co_filename)
                f = f.f_back
            state["hops"] = depth

    sys.setprofile(profile)
    try:
        result = CliRunner().invoke(cli, ["probe", str(tmp / "run"), "--metrics", "lc,align", "--scheduler", "sync",
                                          "--param", "lc.n_points=8", "--param", "align.n_points=8", "-q"])
    finally:
        sys.setprofile(None)
    if result.exit_code != 0:
        print(result.output, result.exception)
        return 1
    print(f"hops to the first compute: {state['hops']}")
    print(f"project files that ran: {len(files)}")
    print(f"client reads of the first checkpoint's weights: {state['reads']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
