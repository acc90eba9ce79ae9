"""Does the exported module run as fast as the architecture the search measured?

Runs a small search (or takes an existing study), exports its best feasible trial
with `nas export`, imports the exported `model.py` (with `weights.pt`) and
measures its latency with `evaluators.hardware.measure_latency` at the study's
shapes (its measurement batch size, the architecture's sequence length and
vocabulary) on the device and thread count the study measured with. Prints it
against the latency recorded on the trial, and, as a control for machine drift
since the search, a fresh measurement of `build_model(spec)` (the search's own
model) taken now, interleaved with the exported one.

Target: the exported module within 10% of the recorded latency.

    python benchmarks/export_latency.py                              # a small fresh search (~1-2 min on CPU)
    python benchmarks/export_latency.py --study NAME [--storage URL] # an existing study
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import re
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).absolute().parents[1]))  # run from a checkout

import torch  # noqa: E402

from evaluators.hardware import measure_latency, resolve_device, resolve_dtype  # noqa: E402
from nas.export import export, trial_spec  # noqa: E402
from nas.results import best_feasible  # noqa: E402
from nas.show import open_study  # noqa: E402
from search_spaces import build_model  # noqa: E402


def small_search(folder: Path, trials: int, seed: int) -> tuple[str, str]:
    from nas.search import Search, SearchConfig
    from nas.storage import default_url

    name = "export-latency"
    cfg = SearchConfig(study=name, storage=default_url(name, folder), space="default", task="mqar",
                       task_options=dict(vocab_size=64, seq_len=64, num_kv_pairs=4, n_valid=128, batch_size=32),
                       latency_ms=None, trials=trials, stages=(10, 30), population=4, tournament=2,
                       hurdle_trials=2, seed=seed, device="cpu")
    Search(cfg, log=io.StringIO()).run(progress=False)
    return name, cfg.storage


def import_exported(folder: Path):
    spec = importlib.util.spec_from_file_location("exported_model", folder / "model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    model = module.build_model()
    model.load_state_dict(torch.load(folder / "weights.pt", weights_only=True))
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", help="an existing study (default: run a small search first)")
    ap.add_argument("--storage", help="its storage URL (default sqlite:///studies/NAME.db)")
    ap.add_argument("--trials", type=int, default=6, help="trials of the small search (default 6)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved measurements of each model (default 3)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.study:
            name, storage = args.study, args.storage
        else:
            name, storage = small_search(tmp, args.trials, args.seed)
        study = open_study(name, storage)
        best = best_feasible(study)
        if best is None:
            print(f"study {name!r} has no feasible fully trained trial to export", file=sys.stderr)
            return 1
        folder = export(name, storage=storage, out=tmp / "export")
        spec = trial_spec(best)
        cfg = study.user_attrs["nas:config"]
        label = best.user_attrs["device"]
        m = re.fullmatch(r"cpu:(\d+)threads", label)
        device = resolve_device("cpu" if m else "cuda")
        threads = int(m.group(1)) if m else None
        kw = dict(batch_size=cfg["measure_batch"], seq_len=spec.max_seq_len, vocab_size=spec.vocab_size,
                  device=device, threads=threads,
                  dtype=resolve_dtype(cfg.get("measure_dtype", "float32"), device))  # as the search measured
        exported = import_exported(folder).to(device)
        torch.manual_seed(best.user_attrs.get("seed", 0))
        reference = build_model(spec).to(device).eval()
        ours, control = [], []
        for _ in range(args.rounds):  # interleaved, so drift in machine load hits both alike
            ours.append(measure_latency(exported, **kw).median_ms)
            control.append(measure_latency(reference, **kw).median_ms)
        recorded = float(best.user_attrs["latency_ms"])
        got, now = statistics.median(ours), statistics.median(control)
        ratio = got / recorded
        verdict = "OK" if abs(ratio - 1) <= 0.10 else "OUTSIDE 10%"
        print(f"study {name} trial {best.number} ({best.user_attrs.get('attention_mix')}), batch {kw['batch_size']} "
              f"x {kw['seq_len']} on {label}: exported model.py {got:.3f} ms vs recorded {recorded:.3f} ms "
              f"(ratio {ratio:.3f}, {verdict}); build_model(spec) now {now:.3f} ms (exported/now {got / now:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
