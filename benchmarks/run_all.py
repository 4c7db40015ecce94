"""Run every benchmark in this folder, one after another, and print their outputs.

    python benchmarks/run_all.py [--quick]

``--quick`` skips the engine's 10 000-job scale run. Benchmarks print ratios (ours vs. a naive
reference, 1 vs. N workers, achieved vs. peak FLOP/s); quote them with the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip the 10 000-job engine scale run")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}", flush=True)
    failed = []
    for script in sorted(HERE.glob("bench_*.py")):
        cmd = [sys.executable, str(script)]
        if script.name == "bench_engine.py" and args.quick:
            cmd.append("--skip-scale")
        print(f"\n=== {script.name} ===", flush=True)
        if subprocess.run(cmd).returncode != 0:
            failed.append(script.name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
