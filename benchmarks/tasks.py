"""Zoology's result on our stack: on multi-query associative recall, full
attention recalls far better than linear attention at the same width, depth and
number of training steps (Arora et al. 2023, Fig. 2).

    python benchmarks/tasks.py [--pairs 8] [--seq-len 64] [--vocab-size 128] [--steps 800]
                               [--d-model 64] [--kinds full,linear] [--threads 1]

Trains one 2-layer model per attention kind on the same task, data, init seed
and schedule, and prints each one's validation accuracy at query positions (and
wall time).

Measured (2-core CPU shared with other jobs, load 2-8, --threads 1, d_model 64,
2 heads, lr 3e-3, the two kinds run side by side as --kinds full / --kinds linear):
- 8 pairs, seq 64, vocab 128, 800 steps (the defaults): full 1.000 (0.37 at
  step 320, 0.999 at 480; 126 s), linear 0.146 (0.134-0.144 from step 320 on,
  the "bag of values" plateau near 1/8; 166 s). Full - linear = +0.85.
- 16 pairs, seq 64, vocab 256, 800 steps: full 0.097, linear 0.084 (~400 s
  each): neither left the plateau, so no verdict.
- 32 pairs, seq 128, vocab 256: full was still at 0.043 after 800 steps. The
  Zoology setting needs thousands of steps here, more than a few CPU minutes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from evaluators.tasks import get_task  # noqa: E402
from evaluators.training import Trainer  # noqa: E402
from search_spaces import ArchSpec, LayerSpec, build_model  # noqa: E402


def run(kind: str, task, args) -> tuple[float, float]:
    s = task.shape
    d = args.d_model
    spec = ArchSpec(vocab_size=s.vocab_size, max_seq_len=s.max_seq_len, d_model=d, causal=s.causal, head=s.head,
                    n_classes=s.n_classes, layers=tuple(LayerSpec(kind, heads=args.heads, ffn=4 * d) for _ in range(2)))
    torch.manual_seed(args.seed)
    model = build_model(spec)
    trainer = Trainer(model, task, max_steps=args.steps, seed=args.seed, lr=args.lr)
    t0 = time.perf_counter()

    def report(step: int, result) -> None:
        print(f"  {kind:8s} step {step:5d}  accuracy {result.metrics['accuracy']:.4f}", flush=True)

    every = max(1, args.steps // 5)
    trainer.train(args.steps, report_at=range(every, args.steps, every), report=report)
    acc = trainer.evaluate().metrics["accuracy"]
    return acc, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--vocab-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kinds", default="full,linear")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch.set_num_threads (1: these models are small, and 2 threads on busy cores crawl)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    task = get_task("mqar", num_kv_pairs=args.pairs, seq_len=args.seq_len, vocab_size=args.vocab_size,
                    n_valid=500, seed=args.seed)
    print(f"task: {task.description}")
    print(f"models: 2 layers, d_model {args.d_model}, {args.heads} heads; {args.steps} steps, lr {args.lr}, "
          f"threads {torch.get_num_threads()}")
    results = {}
    for kind in args.kinds.split(","):
        results[kind] = run(kind, task, args)
    print("\nvalidation accuracy at query positions:")
    for kind, (acc, secs) in results.items():
        print(f"  {kind:8s} {acc:.4f}   ({secs:.0f} s)")
    if "full" in results and "linear" in results:
        gap = results["full"][0] - results["linear"][0]
        print(f"full - linear = {gap:+.4f} ({'full clearly ahead' if gap > 0.1 else 'NOT clearly ahead'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
