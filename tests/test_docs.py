"""Every fenced shell and Python block of README.md, CONTRIBUTING.md and docs/*.md runs, or says why not.

Conventions (CONTRIBUTING.md, "Code blocks in the docs"):

* a block preceded by ``<!-- not-run: REASON -->`` is not run; the reason must be given;
* a block preceded by ``<!-- output -->`` is the quoted output of the block before it: each of its
  lines must appear, in order, in what that block printed (``...`` in a line matches anything);
* every other ``bash``/``sh``/``shell``/``text``/unlabelled block runs with ``bash -euo pipefail`` in a
  fresh folder (one per document, blocks in order, so a later block sees an earlier one's runs), and
  every ``python`` block runs in that folder in one namespace per document, except a ``python`` block
  whose first line is ``# file: NAME``: it is a file the reader writes (a model module, a training
  script), written to NAME in that folder for the later blocks to use.

To keep the suite fast the commands run on small real runs: ``grokscope`` is a wrapper that appends
size flags to each command (:data:`SHRINK`: a smaller model and dataset, fewer steps, a few
checkpoints probed, small probe parameters, the in-process scheduler); the block's own text is run
as written. The wrapper hands each command to a fork server in this test process (``forkserver``),
so a command costs a fork, not the ~3 s of CPU of importing torch and grokscope anew. :data:`SETUP` gives the runs a document assumes exist, :data:`PRELUDE` the Python names
(``model``, ``x``) its snippets assume.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", "CONTRIBUTING.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
SHELL_LANGS = {"", "bash", "sh", "shell", "text"}
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
NOT_RUN = re.compile(r"<!--\s*not-run:(.*?)-->")
OUTPUT = re.compile(r"<!--\s*output\s*-->")

# size flags per sub-command: ``(flag, value or None, forced)``; a flag that is not forced is added only
# when the command does not give that option itself
SHRINK: dict[str, list[tuple[str, str | None, bool]]] = {
    "train": [("--model-kwargs", '{"width": 16}', False), ("--dataset-kwargs", '{"p": 11}', False),
              ("--steps", "200", False), ("--save", "log:8", False), ("--threads", "1", True),
              ("--quiet", None, True)],
    "probe": [("--scheduler", "sync", True), ("--steps", "log:4", False), ("-q", None, True)],
    "simulate": [("--steps", "100", True), ("--save", "log:8", True), ("--eval-every", "every:50", True)],
    "regions": [("--resolution", "40", True)],
}


def _small_params() -> dict[str, list[str]]:
    """The probe parameters appended when a probe is among --metrics: each built-in's ``quick_params``."""
    from grokscope.probes import BUILTIN, get_probe

    return {name: [f"{name}.{k}={v}" for k, v in get_probe(name).quick_params.items()] for name in BUILTIN}


SMALL_PARAMS = _small_params()

# the `grokscope` on the blocks' PATH: a small script (no heavy imports) that appends the size flags and
# hands the command, with its stdin/stdout/stderr, to the fork server of this test process (which has
# torch and grokscope imported already: a forked child runs each command, in about 0.1 s instead of
# the 3 s of CPU that importing them anew would cost every command)
WRAPPER = '''#!{python}
import json, os, socket, sys
shrink, small = json.loads(os.environ["DOCS_SHRINK"]), json.loads(os.environ["DOCS_SMALL_PARAMS"])
args = sys.argv[1:]
cmd = args[0] if args else ""
given = lambda flag: any(a == flag or a.startswith(flag + "=") for a in args)
extra = [x for flag, value, forced in shrink.get(cmd, []) if forced or not given(flag)
         for x in ([flag] if value is None else [flag, value])]
if cmd == "probe":
    names = [n for i, a in enumerate(args[:-1]) if a in ("-m", "--metrics", "--metric") for n in args[i + 1].split(",")]
    extra += [x for n in names for p in small.get(n, []) for x in ("--param", p)]
s = socket.socket(socket.AF_UNIX)
s.connect(os.environ["DOCS_FORKSERVER"])
msg = {{"argv": [*args, *extra], "cwd": os.getcwd(), "env": dict(os.environ)}}
socket.send_fds(s, [json.dumps(msg).encode()], [0, 1, 2])
sys.exit(int(s.recv(16) or b"1"))
'''


def _run_forked(msg: dict, fds: list[int]) -> int:
    """Run ``grokscope *msg["argv"]`` in a forked child with the caller's cwd, environment and stdio;
    its exit code."""
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            os.chdir(msg["cwd"])
            for i, fd in enumerate(fds):
                os.dup2(fd, i)
            os.environ.clear()
            os.environ.update(msg["env"])
            sys.stdin = open(0, closefd=False)  # noqa: SIM115
            sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
            import torch

            torch.set_num_threads(1)
            from grokscope.cli import main

            sys.argv = ["grokscope", *msg["argv"]]
            try:
                main()
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # noqa: BLE001 - report it on the command's stderr
            import traceback

            traceback.print_exc()
        finally:
            for f in (sys.stdout, sys.stderr):
                try:
                    f.flush()
                except Exception:  # noqa: BLE001
                    pass
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.fixture(scope="module")
def forkserver(tmp_path_factory):
    """The path of a unix socket served by a thread of this process (see WRAPPER)."""
    import socket
    import threading

    import grokscope.cli  # noqa: F401 - imported once, before forking
    import grokscope.cli.probe  # noqa: F401
    import torch  # noqa: F401
    import xarray  # noqa: F401

    path = tmp_path_factory.mktemp("fork") / "s"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
                try:
                    rc = _run_forked(json.loads(data), fds)
                finally:
                    for fd in fds:
                        os.close(fd)
                conn.sendall(str(rc if rc >= 0 else 128 - rc).encode())

    threading.Thread(target=serve, daemon=True).start()
    yield path
    server.close()


# runs a document's blocks assume (run before its first block, with the same wrapper)
SETUP: dict[str, list[str]] = {
    "README.md": ["grokscope train --out runs/demo",  # the names `grokscope demo` writes
                  "grokscope probe runs/demo --metrics acc,lc"],
    "docs/engine.md": ["grokscope train --out runs/run_a"],
    "docs/grokalign.md": ["grokscope train --preset modadd-mlp --out runs/modadd-mlp",
                          "grokscope train --preset digits-mlp --out runs/digits-mlp --model-kwargs "
                          "'{\"depth\": 1, \"width\": 16}' --dataset-kwargs '{\"n_train\": 200, \"n_test\": 100}'"],
    "docs/regions.md": ["grokscope train --out runs/demo --steps 6000 --save 0,103,2059,6000 --eval-every none"],
    "docs/spectral.md": ["grokscope train --out runs/demo"],
}

# documents whose blocks use an S3 bucket: a loopback S3 server (tests/s3_server.py) with this bucket,
# reached through the environment (AWS_ENDPOINT_URL, test credentials)
S3_BUCKETS = {"docs/engine.md": "my-bucket"}

PRELUDE: dict[str, str] = {
    # a small continuous-input classifier and a batch of its inputs (the lc/pgd/align snippets' `model`, `x`, `y`)
    "model": """
        import torch
        from grokscope.datasets import load_dataset
        from grokscope.models import build_model
        torch.manual_seed(0)
        data = load_dataset({"name": "digits", "kwargs": {"n_train": 64, "n_test": 32}, "seed": 0})
        model = build_model({"arch": "mlp", "kwargs": {"in_dim": 64, "out_dim": 10, "depth": 1, "width": 12}})
        x, y = data.x_train[:16], data.y_train[:16]
    """,
}
PRELUDES = {"docs/lc_pgd.md": "model", "docs/grokalign.md": "model"}
# runs a document's Python assumes (run before its first Python block)
PY_SETUP: dict[str, list[str]] = {}


@dataclass
class Block:
    doc: str
    line: int
    lang: str
    code: str
    not_run: str | None  # the reason, when marked
    output: bool  # a quoted output block (of the block before it)

    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def blocks(doc: str) -> list[Block]:
    """The fenced blocks of ``doc`` (a path relative to the repository) with their markers."""
    text = (ROOT / doc).read_text()
    out = []
    for m in FENCE.finditer(text):
        before = ""  # the HTML comment lines right above the fence
        for line in reversed(text[:m.start()].rstrip("\n").split("\n")):
            if not re.fullmatch(r"\s*<!--.*-->\s*", line):
                break
            before = line + "\n" + before
        reason = NOT_RUN.search(before)
        out.append(Block(doc, text.count("\n", 0, m.start()) + 1, m.group(1).lower(), m.group(2),
                         reason.group(1).strip() if reason else None, bool(OUTPUT.search(before))))
    return out


def _env(bin_dir: Path, shrink: dict, server: Path) -> dict[str, str]:
    env = {**os.environ, "DOCS_FORKSERVER": str(server), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
           "PATH": os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "DOCS_SHRINK": json.dumps(shrink), "DOCS_SMALL_PARAMS": json.dumps(SMALL_PARAMS)}
    return env


def _bash(code: str, cwd: Path, env: dict[str, str], where: str) -> str:
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, f"{where}: exit {r.returncode}\n$ {code}\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr


def _check_output(expected: str, got: str, where: str) -> None:
    pos = 0
    lines = got.splitlines()
    for want in (w.rstrip() for w in expected.splitlines()):
        if not want.strip():
            continue
        pattern = re.compile(".*".join(re.escape(part) for part in want.split("...")))
        while pos < len(lines) and not pattern.fullmatch(lines[pos].rstrip()):
            pos += 1
        assert pos < len(lines), f"{where}: quoted output line {want!r} not found (in order) in:\n{got}"
        pos += 1


@pytest.fixture
def sandbox(tmp_path: Path) -> tuple[Path, Path]:
    """``(work folder, bin folder with the grokscope wrapper)``; ``examples`` linked into the folder."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "grokscope"
    wrapper.write_text(WRAPPER.format(python=sys.executable))
    wrapper.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    (work / "examples").symlink_to(ROOT / "examples")
    return work, bin_dir


def test_every_block_is_run_or_marked_with_a_reason():
    found = [b for doc in DOCUMENTS for b in blocks(doc)]
    assert len(found) > 15  # the extraction sees the documents' blocks
    for b in found:
        if b.not_run is not None:
            assert b.not_run, f"{b.where()}: <!-- not-run: --> needs a reason"
        elif not b.output:
            assert b.lang in SHELL_LANGS | {"python"}, f"{b.where()}: a ```{b.lang} block is neither run nor marked"
    for doc in DOCUMENTS:  # quoted output follows a block that runs
        todo = blocks(doc)
        for prev, b in zip(todo, todo[1:]):
            if b.output:
                assert prev.not_run is None and not prev.output, f"{b.where()}: output of a block that does not run"


@pytest.mark.parametrize("doc", DOCUMENTS)
def test_document_blocks_run(doc: str, sandbox, forkserver, monkeypatch, request) -> None:
    work, bin_dir = sandbox
    if doc in S3_BUCKETS:
        from tests.s3_server import S3, environment

        endpoint = request.getfixturevalue("_s3_endpoint")
        for k, v in environment(endpoint).items():
            monkeypatch.setenv(k, v)
        S3(endpoint, S3_BUCKETS[doc]).fs().makedirs(S3_BUCKETS[doc], exist_ok=True)
    env = _env(bin_dir, SHRINK, forkserver)
    todo = blocks(doc)
    if all(b.not_run is not None or b.output for b in todo):
        pytest.skip(f"{doc}: every block is marked not-run" if todo else f"{doc}: no code blocks")
    for cmd in SETUP.get(doc, []):
        _bash(cmd, work, env, f"{doc} (setup)")
    module = types.ModuleType("docs_snippets")  # a real module: dataclasses look their module up
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace = module.__dict__
    monkeypatch.chdir(work)
    last_output, ran = None, 0
    for b in todo:
        if b.output:
            assert last_output is not None, f"{b.where()}: quoted output after a block that did not run"
            _check_output(b.code, last_output, b.where())
            continue
        last_output = None
        if b.not_run is not None:
            continue
        if b.lang == "python" and b.code.startswith("# file: "):
            (work / b.code.splitlines()[0][len("# file: "):].strip()).write_text(b.code)
        elif b.lang == "python":
            if not namespace.get("__prelude_done__"):
                for cmd in PY_SETUP.get(doc, []):
                    _bash(cmd, work, env, f"{doc} (python setup)")
                if doc in PRELUDES:
                    exec(textwrap.dedent(PRELUDE[PRELUDES[doc]]), namespace)
                namespace["__prelude_done__"] = True
            try:
                exec(compile(b.code, b.where(), "exec"), namespace)
            except Exception as e:  # noqa: BLE001 - name the block
                raise AssertionError(f"{b.where()}: {type(e).__name__}: {e}\n{b.code}") from e
        else:
            last_output = _bash(b.code, work, env, b.where())
        ran += 1
    assert ran > 0


def test_quoted_output_is_matched_line_by_line_in_order():
    got = "training into runs/x\nruns/x: 6 checkpoints, final train acc 99.1%\nrun  ckpts\nx    6\n"
    _check_output("runs/x: 6 checkpoints, final train acc ...\nx    6\n", got, "here")
    for wrong in ("x    7", "x    6\nruns/x: 6 checkpoints, final train acc ...", "final train acc 99.1%"):
        with pytest.raises(AssertionError, match="not found"):
            _check_output(wrong, got, "here")
