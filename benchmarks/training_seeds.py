"""How much of a candidate's fitness is its architecture, and how much its
training seed? Trains fixed architectures of the default space on the default
task once per training seed, as a study with that --seed trains them
(`torch.manual_seed(seed)` before the model is built, the Trainer's seed for the
data order), and prints each one's fitness per seed, the
share of seeds in which it learned the task, and the step by which it had.

    python benchmarks/training_seeds.py [--seeds 0 1 2 3 4 5 6 7] [--steps 400]
        [--solved 0.9] [--arch NAME_OR_JSON ...] [--lr 3e-3] [--min-lr-ratio 0.1]
        [--batch-size 32] [--threads 1]

The schedule is the Trainer's own (a cosine down to 0.1 x the peak) unless --lr or
--min-lr-ratio says otherwise; `nas search` now trains at --min-lr-ratio 1.

--arch takes the names below or an architecture's JSON as `nas show` prints it.
The default set is the space's vanilla transformer (the warm start of `nas
search`) and four architectures that reached > 0.99 in the 2026-12-01 search
benchmark (README, "The search"): all able to recall, so any seed where one
stays on the "bag of values" plateau (~0.27 on MQAR) is training luck, not
architecture. Runs are independent: split --arch or --seeds over processes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from evaluators.tasks import get_task  # noqa: E402
from evaluators.training import Trainer  # noqa: E402
from nas.search import _spec_from_params, _vanilla_params  # noqa: E402
from search_spaces import ArchSpec, build_model, load_space  # noqa: E402


def _layers(*layers: dict) -> list[dict]:
    return [dict(layer, seed=i) for i, layer in enumerate(layers)]


FULL_1 = {"attention": "full", "heads": 1, "ffn": 128}
NAMED = {  # d_model 64, two layers, all on the default task's shape; "vanilla" is the search's own
    "vanilla": None,
    "full2+full": _layers({"attention": "full", "heads": 2, "ffn": 128}, FULL_1),
    "local8+full": _layers({"attention": "local", "heads": 1, "ffn": 128, "window": 8}, FULL_1),
    "block16+full": _layers({"attention": "block", "heads": 1, "ffn": 128, "block": 16}, FULL_1),
    "full-ffn256+full": _layers({"attention": "full", "heads": 1, "ffn": 256}, FULL_1),
}


def resolve(arch: str, shape) -> tuple[str, ArchSpec]:
    """(label, spec) for a name of NAMED or an ArchSpec JSON."""
    if arch == "vanilla":  # what nas search enqueues as its warm start, so the two cannot drift apart
        space = load_space("default")
        return arch, _spec_from_params(space, _vanilla_params(space), shape)
    if arch in NAMED:
        return arch, ArchSpec.from_dict({"vocab_size": shape.vocab_size, "max_seq_len": shape.max_seq_len,
                                         "d_model": 64, "causal": shape.causal, "head": shape.head,
                                         "n_classes": shape.n_classes, "layers": NAMED[arch]})
    try:
        spec = ArchSpec.from_json(arch)
    except (ValueError, TypeError, KeyError) as e:
        raise SystemExit(f"--arch {arch[:60]!r}: neither a name ({', '.join(NAMED)}) nor an architecture's JSON: {e}")
    return ",".join(layer.attention for layer in spec.layers) + f" d{spec.d_model}", spec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    ap.add_argument("--steps", type=int, default=400, help="training steps (nas search's default schedule)")
    ap.add_argument("--solved", type=float, default=0.9, help="fitness counted as having learned the task")
    ap.add_argument("--arch", nargs="+", default=list(NAMED))
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the Trainer's)")
    ap.add_argument("--min-lr-ratio", type=float, default=None,
                    help="where the cosine ends, as a share of the peak (default: the Trainer's; 1 = constant)")
    ap.add_argument("--batch-size", type=int, default=None, help="the task's batch size (default: the task's)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (the search trains with 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    task = get_task("mqar", **({} if args.batch_size is None else {"batch_size": args.batch_size}))
    options = {k: v for k, v in (("lr", args.lr), ("min_lr_ratio", args.min_lr_ratio)) if v is not None}
    marks = sorted({max(1, args.steps * k // 8) for k in range(1, 9)})
    print(f"task: {task.description}; {args.steps} steps; trainer options {options or 'defaults'}; "
          f"fitness checked at steps {marks}\n")
    print("| architecture | fitness per seed " + str(args.seeds) + f" | seeds >= {args.solved} | "
          f"step first >= {args.solved} (median of those) | seconds per run |")
    print("|---|---|---|---|---|")
    shares = []
    for arch in args.arch:
        label, spec = resolve(arch, task.shape)
        finals, firsts, seconds = [], [], []
        for seed in args.seeds:
            torch.manual_seed(seed)  # as the objective does, so the init matches a study with this seed
            trainer = Trainer(build_model(spec), task, max_steps=args.steps, seed=seed, **options)
            fitness: dict[int, float] = {}
            t0 = time.perf_counter()
            trainer.train(args.steps, report_at=marks, report=lambda step, r: fitness.__setitem__(step, r.fitness))
            seconds.append(time.perf_counter() - t0)
            finals.append(fitness[args.steps])
            firsts.append(min((s for s, f in fitness.items() if f >= args.solved), default=None))
        solved = [s for s in firsts if s is not None]
        shares.append(len(solved) / len(finals))
        print(f"| {label} | {', '.join(f'{f:.3f}' for f in finals)} | {len(solved)} of {len(finals)} | "
              f"{f'{statistics.median(solved):.0f}' if solved else '-'} | {statistics.mean(seconds):.1f} |", flush=True)
    print(f"\nshare of (architecture, seed) runs that learned the task: {statistics.mean(shares):.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
