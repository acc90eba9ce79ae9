"""How repeatable and how cheap is `measure_latency`? A benchmark of the measurement itself.

Samples N random architectures (seeded) from a search space at the MQAR task's
default shape (vocabulary 64, length 32, batch 32: `MQARTask.DEFAULTS`),
measures each one's latency in two independent passes (the second in a shuffled
order, so drift in machine load does not line up with the first), with the
defaults the search uses, and prints:

- Kendall's tau between the two passes' median latencies (is the ranking the
  search sees stable?), and the same for the wall-clock medians (for reference);
- the median, across measurements, of each measurement's robust CV;
- the mean wall-clock seconds of one `measure_latency` call, and of one
  `measure_memory` call (taken once per architecture, after pass 1);
- the machine's load average before and after (`os.getloadavg`): on a shared
  machine the figures mean little without it.

Targets on a 2-core CPU: tau >= 0.9, median CV <= 5%, < 1 s per architecture.

    python benchmarks/latency.py                       # defaults: 20 archs, MQAR shape, 1 thread
    python benchmarks/latency.py --device cuda --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).absolute().parents[1]))  # run from a checkout

import torch  # noqa: E402
from scipy.stats import kendalltau  # noqa: E402

from evaluators.hardware import measure_latency, measure_memory, resolve_device  # noqa: E402
from evaluators.tasks.mqar import MQARTask  # noqa: E402
from search_spaces import TaskShape, build_model, count_parameters, load_space  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default="default")
    ap.add_argument("--n", type=int, default=20, help="architectures to sample")
    ap.add_argument("--seed", type=int, default=0)
    d = MQARTask.DEFAULTS
    ap.add_argument("--vocab", type=int, default=d["vocab_size"])
    ap.add_argument("--seq-len", type=int, default=d["seq_len"])
    ap.add_argument("--batch-size", type=int, default=d["batch_size"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads (default: evaluators.hardware.default_threads(), as the search)")
    ap.add_argument("--no-memory", action="store_true", help="skip timing measure_memory")
    ap.add_argument("--min-time-s", type=float, default=None, help="measure_latency's min_time_s (default: its own)")
    ap.add_argument("--max-time-s", type=float, default=None, help="measure_latency's max_time_s (default: its own)")
    ap.add_argument("--clock", default="auto", choices=["auto", "thread-cpu", "wall"], help="measure_latency's CPU clock")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--json", type=Path, default=None, help="also write every measurement here")
    args = ap.parse_args(argv)

    device = resolve_device(args.device)
    dtype = getattr(torch, args.dtype)
    shape = TaskShape(vocab_size=args.vocab, max_seq_len=args.seq_len, causal=True, head="token",
                      n_classes=args.vocab)
    space = load_space(args.space).for_task(shape)
    rng = random.Random(args.seed)
    specs = [space.sample(lambda name, choices: rng.choice(choices), shape) for _ in range(args.n)]
    torch.manual_seed(args.seed)
    models = [build_model(s) for s in specs]
    load_before = os.getloadavg()
    print(f"space {space.name}: kinds {list(space.attention)}; {args.n} archs; batch {args.batch_size}, "
          f"length {args.seq_len}, vocab {args.vocab}, {args.dtype} on {device}", flush=True)

    kw = dict(batch_size=args.batch_size, seq_len=args.seq_len, vocab_size=args.vocab,
              device=device, dtype=dtype, threads=args.threads)
    lat_kw = dict(clock=args.clock) | {k: v for k, v in (("min_time_s", args.min_time_s), ("max_time_s", args.max_time_s))
                                       if v is not None}
    passes: list[dict[int, object]] = [{}, {}]
    seconds: list[float] = []
    mem_seconds: list[float] = []
    order = list(range(args.n))
    for p in range(2):
        if p == 1:
            random.Random(args.seed + 1).shuffle(order)
        for i in order:
            t0 = time.perf_counter()
            passes[p][i] = measure_latency(models[i], **kw, **lat_kw)
            seconds.append(time.perf_counter() - t0)
            if p == 0 and not args.no_memory:
                t0 = time.perf_counter()
                measure_memory(models[i], **kw)
                mem_seconds.append(time.perf_counter() - t0)
    load_after = os.getloadavg()

    first = [passes[0][i].median_ms for i in range(args.n)]
    second = [passes[1][i].median_ms for i in range(args.n)]
    cvs = [r.cv for pz in passes for r in pz.values()]
    tau = kendalltau(first, second).statistic
    tau_wall = kendalltau([passes[0][i].wall_median_ms for i in range(args.n)],
                          [passes[1][i].wall_median_ms for i in range(args.n)]).statistic

    print(f"{'#':>2} {'params':>8} {'depth':>5} {'d':>3} {'kinds':<34} {'ms pass1':>9} {'ms pass2':>9} {'cv1':>6} {'cv2':>6} {'n1':>4}")
    for i, s in enumerate(specs):
        kinds = ",".join(layer.attention for layer in s.layers)
        r1, r2 = passes[0][i], passes[1][i]
        print(f"{i:>2} {count_parameters(models[i]):>8} {s.depth:>5} {s.d_model:>3} {kinds:<34} "
              f"{r1.median_ms:>9.3f} {r2.median_ms:>9.3f} {r1.cv:>6.1%} {r2.cv:>6.1%} {len(r1.samples):>4}")
    device_name = passes[0][0].device
    load = lambda la: " ".join(f"{x:.2f}" for x in la)  # noqa: E731
    print(f"\ndevice: {device_name}; clock: {passes[0][0].clock}; {os.cpu_count()} cores; "
          f"load average (1, 5, 15 min) before {load(load_before)}, after {load(load_after)}")
    print(f"Kendall tau between passes: {tau:.3f}   (target >= 0.9; wall-clock medians: {tau_wall:.3f})")
    print(f"median CV across measurements: {statistics.median(cvs):.2%}   (target <= 5%; {passes[0][0].cv_method})")
    print(f"mean seconds per measure_latency: {statistics.fmean(seconds):.3f} s   (max {max(seconds):.3f} s; target < 1 s)")
    if mem_seconds:
        print(f"mean seconds per measure_memory: {statistics.fmean(mem_seconds):.3f} s   (max {max(mem_seconds):.3f} s; "
              f"first call {mem_seconds[0]:.3f} s)")
        print(f"mean seconds per new architecture (latency + memory): "
              f"{statistics.fmean(seconds) + statistics.fmean(mem_seconds):.3f} s")

    if args.json:
        args.json.write_text(json.dumps({
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "device": device_name, "kendall_tau": tau, "median_cv": statistics.median(cvs),
            "mean_seconds": statistics.fmean(seconds), "kendall_tau_wall": tau_wall,
            "mean_memory_seconds": statistics.fmean(mem_seconds) if mem_seconds else None,
            "loadavg_before": load_before, "loadavg_after": load_after,
            "archs": [{"spec": s.to_dict(), "pass1": passes[0][i].to_dict(), "pass2": passes[1][i].to_dict()}
                      for i, s in enumerate(specs)],
        }, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
