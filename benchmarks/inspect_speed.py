"""How fast Inspect reads the default model: all statistics plus the symmetric/asymmetric error
measurement at one bit width (target: under 5 s on 2 cores).

Prints the median of several runs, the throughput in parameters per second, and a baseline
measured in the same run: one plain pass over every weight (take each tensor from the
memory-mapped file and sum it). Inspect's time in units of that pass says what bounds it: the
statistics and the six trial quantizations are a few more passes of memory traffic.

    python benchmarks/inspect_speed.py [RUNS]
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from core.jobs import JobContext
from core.models import default_model
from core.weights import inspect
from core.weights.sources import open_source


def _median_time(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    folder = default_model.ensure_converted(JobContext())
    source = open_source(folder)
    params = sum(i.numel for i in source.infos())

    def one_pass():
        for info in source.infos():
            float(source.load(info.name).float().sum())

    _median_time(one_pass, 1)  # warm the page cache: measure compute, not the disk
    t_pass = _median_time(one_pass, runs)
    t_stats = _median_time(
        lambda: inspect.run(inspect.InspectParams(str(folder), measure=False), JobContext()), runs
    )
    t_full = _median_time(lambda: inspect.run(inspect.InspectParams(str(folder), bits=4), JobContext()), runs)
    print(f"default model: {params:,} parameters, torch threads {torch.get_num_threads()}, median of {runs}")
    print(f"one pass over weights    {t_pass:6.2f} s")
    print(f"statistics only          {t_stats:6.2f} s  ({params / t_stats / 1e6:5.1f} M params/s)")
    print(
        f"statistics + INT4 errors {t_full:6.2f} s  ({params / t_full / 1e6:5.1f} M params/s)  target < 5 s"
    )
    print(f"bound: memory traffic; Inspect costs {t_full / t_pass:.1f} plain passes over the weights")


if __name__ == "__main__":
    main()
