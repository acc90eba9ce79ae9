"""Forward time and peak memory of every registered attention kind, against causal `full`.

    python benchmarks/attention.py [--lengths 1024 2048 4096 8192] [--threads 2] [--repeats 5]
                                   [--kinds local linear ...] [--out table.md]

The markdown table goes to stdout and, with `--out`, also to that file.

What is measured:
  * the `attend(q, k, v, None)` call alone (not the Q/K/V/out projections), on
    random q, k, v of shape (1, 4, n, 64) (batch 1, 4 heads, head dim 64, d_model
    256), float32, under `torch.no_grad()`, with `torch.set_num_threads` fixed;
  * time: the median of `--repeats` calls after `--warmup` calls;
  * peak memory: one call under `torch.profiler.profile(profile_memory=True)`;
    every allocation and free the CPU allocator reports during the call is replayed
    in time order and the peak of the running sum is taken: the most bytes the call
    held at once on top of its inputs (its output included).
Knobs: window 256, stride 64 (about sqrt n), block 256, global_tokens 16,
random_blocks 2, rank 256 (Linformer's k, Performer's features, Nystrom's landmarks).
Each kind runs causal where it can, otherwise bidirectional (the `mode` column).
The baseline is causal `full` (SDPA) at the same n: `speedup` = its time / the
kind's time, `mem x` = the kind's peak / its peak. The last column is each kind's
own peak-memory growth from the second-longest to the longest n (2.0 is linear).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search_spaces.arch_spec import KNOBS, LayerSpec  # noqa: E402
from search_spaces.attention.registry import REGISTRY  # noqa: E402

HEADS, HEAD_DIM = 4, 64
D_MODEL = HEADS * HEAD_DIM
KNOB_VALUES = dict(window=256, stride=64, block=256, global_tokens=16, random_blocks=2, rank=256)
assert set(KNOB_VALUES) == set(KNOBS)


def build(name: str, causal: bool, max_len: int):
    info = REGISTRY[name]
    knobs = {k: KNOB_VALUES[k] for k in info.knobs}
    layer = LayerSpec(attention=name, heads=HEADS, ffn=4 * D_MODEL, **knobs)
    return info.cls(D_MODEL, layer, max_len, causal).eval()


def time_call(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _allocation_sizes(prof) -> list[int]:
    """Signed sizes of every allocation (+) and free (-) the profiler saw, in time order."""
    try:  # the event tree holds each allocator event, also those inside an op
        from torch._C._profiler import _EventType

        def walk(nodes):
            for node in nodes:
                yield node
                yield from walk(node.children)

        tree = prof.profiler.kineto_results.experimental_event_tree()
        events = [n for n in walk(tree) if n.tag == _EventType.Allocation]
        events.sort(key=lambda n: n.start_time_ns)
        return [int(n.extra_fields.alloc_size) for n in events]
    except Exception:  # public fallback: per-op net self allocations (misses intra-op peaks)
        events = sorted(prof.events(), key=lambda e: e.time_range.start)
        return [int(e.self_cpu_memory_usage) for e in events if e.self_cpu_memory_usage]


def peak_bytes(fn) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
        del out
    running = peak = 0
    for size in _allocation_sizes(prof):
        running += size
        peak = max(peak, running)
    return peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    ap.add_argument("--kinds", nargs="+", default=sorted(REGISTRY, key=lambda k: (k != "full", k)))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown table to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    max_len = max(args.lengths)

    rows: dict[tuple[str, int], tuple[float, int] | str] = {}
    for n in args.lengths:
        q, k, v = (torch.randn(1, HEADS, n, HEAD_DIM) for _ in range(3))
        for name in ["full"] + [k for k in args.kinds if k != "full"]:
            info = REGISTRY[name]
            causal = info.causal
            try:
                module = build(name, causal, max_len)
                with torch.no_grad():
                    fn = lambda: module.attend(q, k, v, None)  # noqa: E731
                    t = time_call(fn, args.warmup, args.repeats)
                    mem = peak_bytes(fn)
                rows[(name, n)] = (t, mem)
            except Exception as e:  # a kind that cannot run is reported, not fatal
                rows[(name, n)] = f"error: {type(e).__name__}: {e}"[:60]
            print(f"  measured {name:10s} n={n:5d}", file=sys.stderr, flush=True)

    lines = [
        f"torch {torch.__version__}, {args.threads} threads, float32, batch 1, {HEADS} heads, "
        f"head dim {HEAD_DIM}; time = median of {args.repeats} `attend` calls under no_grad; "
        f"peak = profiler allocation replay; load average (1, 5, 15 min) at the start: {load}",
        "",
    ]
    head = "| kind | mode |" + "".join(f" n={n} ms | speedup | peak MiB | mem x |" for n in args.lengths)
    if len(args.lengths) > 1:
        head += f" peak growth {args.lengths[-2]}->{args.lengths[-1]} |"
    lines.append(head)
    lines.append("|" + "---|" * (head.count("|") - 1))
    for name in ["full"] + [k for k in args.kinds if k != "full"]:
        mode = "causal" if REGISTRY[name].causal else "bidirectional"
        line = f"| {name} | {mode} |"
        for n in args.lengths:
            r, base = rows[(name, n)], rows[("full", n)]
            if isinstance(r, str) or isinstance(base, str):
                line += f" {r if isinstance(r, str) else 'n/a'} | | | |"
                continue
            line += (f" {r[0] * 1e3:.1f} | {base[0] / r[0]:.2f}x | {r[1] / 2**20:.1f} |"
                     f" {r[1] / max(base[1], 1):.2f}x |")
        if len(args.lengths) > 1:
            a, b = rows[(name, args.lengths[-2])], rows[(name, args.lengths[-1])]
            line += f" {b[1] / max(a[1], 1):.2f}x |" if not isinstance(a, str) and not isinstance(b, str) else " |"
        lines.append(line)

    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out is not None:
        args.out.write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
