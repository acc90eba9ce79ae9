"""Seconds for a 2-layer full-attention model (d_model 64) to reach 95% validation
accuracy on the default `mqar` task with the `Trainer` (defaults: lr, schedule).

    python benchmarks/mqar_speed.py [--target 0.95] [--max-steps 3000] [--every 100]
                                    [--threads 1] [--lr 3e-3]

Prints the accuracy at each check and the wall-clock seconds (training plus
evaluation) to reach the target.

What it showed (idle 2-core CPU, torch 2.13 CPU, the default task: 4 key-value
pairs in 32 tokens, vocabulary 64, batch 32; 2 heads, PyTorch default init):
- defaults (max_steps 3000, 2 threads, check every 100): 95% at step 300 / 400 /
  300 for seeds 0 / 1 / 2, in 7.7 / 10.9 / 8.0 s of training plus evaluation;
- --max-steps 600 --every 25: step 300 / 250 / 200 in 10.4 / 7.7 / 6.6 s;
- --max-steps 400 --threads 1 --every 25 (nas search's default schedule and the
  search's 1 measuring thread): seeds 1 and 2 at step 250 / 200 (11.7 / 10.3 s),
  seed 0 only 0.87 at step 400 (on the "bag of values" plateau near 0.27 until
  step 275, then the phase change). `nas search`'s vanilla transformer (4 heads)
  reaches 1.000 by step 300 of 400.
The old setting (8 pairs in 64 tokens, vocabulary 128) needed ~550 steps past a
long plateau: too slow for a few-minute search on 2 cores, hence the new default.
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


class Reached(Exception):
    pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", type=float, default=0.95)
    ap.add_argument("--max-steps", type=int, default=3000)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    task = get_task("mqar")
    s = task.shape
    d = args.d_model
    spec = ArchSpec(vocab_size=s.vocab_size, max_seq_len=s.max_seq_len, d_model=d, causal=s.causal, head=s.head,
                    n_classes=s.n_classes, layers=tuple(LayerSpec("full", heads=2, ffn=4 * d) for _ in range(2)))
    torch.manual_seed(args.seed)
    model = build_model(spec)
    kw = {} if args.lr is None else {"lr": args.lr}
    trainer = Trainer(model, task, max_steps=args.max_steps, seed=args.seed, **kw)
    print(f"task: {task.description}")
    print(f"model: 2 x full attention, d_model {d}, {sum(p.numel() for p in model.parameters()):,} parameters; "
          f"lr {trainer.lr}, warm-up {trainer.warmup_steps}, max_steps {args.max_steps}, threads {torch.get_num_threads()}")
    t0 = time.perf_counter()

    def report(step: int, result) -> None:
        acc = result.metrics["accuracy"]
        print(f"  step {step:5d}  {time.perf_counter() - t0:6.1f}s  accuracy {acc:.4f}  loss {result.metrics['loss']:.3f}",
              flush=True)
        if acc >= args.target:
            raise Reached(step)

    try:
        trainer.train(args.max_steps, report_at=range(args.every, args.max_steps + 1, args.every), report=report)
    except Reached as r:
        print(f"reached {args.target:.0%} validation accuracy at step {r.args[0]} in "
              f"{time.perf_counter() - t0:.1f} s")
        return 0
    print(f"did NOT reach {args.target:.0%} in {args.max_steps} steps ({time.perf_counter() - t0:.1f} s)")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
