"""Does this machine hold its speed? The same fixed work, timed again and again.

Runs a 256x256 float32 matmul 20 times per sample (one thread, thread CPU time,
as `measure_latency` times the CPU) for --seconds, and prints each sample against
the median as one character (`S` >= 8% slower, `F` >= 7% faster, `.` otherwise),
then how much of the time was slow and how long the slow episodes lasted. On a
shared VM this shows why a latency measurement of ~0.1 s can land in a slow
episode, and why `measure_latency` keeps sampling while its spread is wide.

    python benchmarks/machine_drift.py --seconds 10
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    a = torch.randn(256, 256)
    samples: list[float] = []
    end = time.perf_counter() + args.seconds
    while time.perf_counter() < end:
        c0 = time.thread_time()
        for _ in range(20):
            a @ a
        samples.append(time.thread_time() - c0)
    med = statistics.median(samples)
    marks = "".join("S" if x / med >= 1.08 else "F" if x / med <= 0.93 else "." for x in samples)
    print(marks)
    runs = [len(r) for r in marks.replace("F", ".").split(".") if r]
    sample_ms = args.seconds / len(samples) * 1e3
    print(f"\n{len(samples)} samples of {med * 1e3:.2f} ms (median, thread CPU time; one every {sample_ms:.1f} ms)")
    print(f"slow (>= 8% above the median): {marks.count('S') / len(marks):.1%} of samples, in {len(runs)} episodes "
          f"of {statistics.median(runs) * sample_ms if runs else 0:.0f} ms median, {max(runs, default=0) * sample_ms:.0f} ms longest")
    if samples:
        print(f"slow samples' mean: {statistics.fmean([x for x in samples if x / med >= 1.08] or [med]) / med - 1:+.1%}"
              " against the median")


if __name__ == "__main__":
    main()
