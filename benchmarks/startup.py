"""Time from process start to a painted main window (target: about 2 s), median of several runs.

Each run starts `python -m desktop` in a fresh process with QUANTTUNE_STARTUP_PROBE=1: the app
prints the moment its main window has been painted and quits. A bare `python -c pass` start is
measured in the same run as the baseline. Qt runs offscreen unless a display is set.

    python benchmarks/startup.py [RUNS]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _one_run(env: dict[str, str]) -> float:
    started = time.time()
    out = subprocess.run(
        [sys.executable, "-m", "desktop"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    painted = next((line for line in out.stdout.splitlines() if line.startswith("painted ")), None)
    if painted is None:
        raise RuntimeError(f"the window never reported a paint:\n{out.stderr[-2000:]}")
    return float(painted.split()[1]) - started


def _bare_python() -> float:
    started = time.time()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.time() - started


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    env = dict(os.environ, QUANTTUNE_STARTUP_PROBE="1", QUANTTUNE_NO_AUTOLOAD="1")
    env.setdefault("QT_QPA_PLATFORM", "offscreen")
    with tempfile.TemporaryDirectory() as home:
        env["QUANTTUNE_HOME"] = home
        _one_run(env)  # warm the file cache: a second start is what a user sees every day
        times = [_one_run(env) for _ in range(runs)]
    bare = statistics.median(_bare_python() for _ in range(runs))
    print(
        f"process start -> painted main window: median {statistics.median(times):.2f} s "
        f"(min {min(times):.2f}, max {max(times):.2f}, {runs} runs, platform {env['QT_QPA_PLATFORM']})"
    )
    print(f"bare python start: {bare:.2f} s; QuantTune adds {statistics.median(times) - bare:.2f} s")


if __name__ == "__main__":
    main()
