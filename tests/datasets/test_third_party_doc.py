"""docs/third_party.md, run block by block in an empty folder: a plain PyTorch loop's own data, split,
.pth checkpoints and log; acc equals the loop's evaluation exactly; the wrong split is reported."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "third_party.md"
BLOCK = re.compile(r"^```(python|bash)\n(.*?)^```", re.S | re.M)


def blocks(text: str) -> list[tuple[str, str]]:
    """``[(language, code)]`` of the fenced python/bash blocks of ``text``, in order."""
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(text)]


def test_worked_example_runs(tmp_path):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    found = blocks(DOC.read_text().split("## Hugging Face Trainer and hub caches")[0])  # that part: test_docs
    assert [lang for lang, _ in found] == ["python", "python", "bash", "python", "bash"]
    script = []
    for i, (lang, code) in enumerate(found):
        first = code.splitlines()[0]
        if lang == "python" and first.startswith("# file: "):
            (tmp_path / first[len("# file: "):]).write_text(code)
        elif lang == "python":
            (tmp_path / f"block{i}.py").write_text(code)
            script.append(f"python block{i}.py")
        else:
            script.append(code)
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(script)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "trusting model:make from now on" in r.stderr
    assert "imported 5 evaluation record(s)" in r.stderr
    assert "SPLIT CHECK" not in r.stderr  # the right data and split: acc agrees with the log
    line = (tmp_path / "probe.txt").read_text()
    assert re.search(r"SPLIT CHECK FAILED for run ckpts: at step \d+ acc on the given (train|test) data is "
                     r"0\.\d{4} but the run's own log says (train|test)_acc 0\.\d{4}", line), line
