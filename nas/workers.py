"""Many workers on one study.

`nas search --workers K` creates (or resumes) the study in this process, then
starts K `nas worker` processes on it: one per GPU through CUDA_VISIBLE_DEVICES
when there are GPUs (round robin over the GPUs the command itself sees; --device
cuda:N puts them all on GPU N), otherwise the CPU cores split between them. `nas worker
--study NAME --storage URL` joins an existing study from any machine: it reads
the task, space, budget and stages from the study itself. The evolution and the
hurdles keep their state in storage, so the workers cooperate on one population.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import secrets
import subprocess
import sys
import time
from typing import Any

import optuna
import torch

from nas.checkpoints import weights_on_disk
from nas.cli import STORAGE_ENV, trials_limit
from nas.errors import NasError
from nas.results import summary_table
from nas.search import CONFIG_ATTR, DEFAULT_CHOICES, Search, SearchConfig, choice_argv
from nas.show import open_study
from nas.storage import default_url


def config_from_study(study: optuna.Study, args: argparse.Namespace) -> SearchConfig:
    """A worker's settings: this worker's own flags. The task, its options, the space,
    the budget and the stages are left unset, so that `Search` takes the study's own,
    as for any resume."""
    stored: dict[str, Any] = study.user_attrs.get(CONFIG_ATTR) or {}
    if not stored:
        raise NasError(f"study {study.study_name!r} was not made by nas search; start it with nas search first")
    device = stored["device"]
    threads = int(device.split(":")[1].removesuffix("threads")) if device.startswith("cpu:") else None
    return SearchConfig(
        study=args.study, storage=args.storage, trials=trials_limit(args), step_budget=args.step_budget,
        timeout_s=args.timeout, started_at=args.started_at, keep_checkpoints=args.keep_checkpoints,
        sampler=args.sampler, pruner=args.pruner,
        device=args.device, seed=args.seed, sampler_seed=args.sampler_seed,
        population=args.population,
        tournament=args.tournament, mutation_prob=args.mutation_prob, hurdle_trials=args.hurdle_trials,
        hurdle_signal=args.hurdle_signal, hurdle_rule=args.hurdle_rule, selection_signal=args.selection_signal,
        budget_aware=args.budget_aware, on_refusal=args.on_refusal, warm_start=False, measure_threads=threads,
    )


def worker_main(args: argparse.Namespace) -> int:
    threads = os.environ.get("NAS_TRAIN_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    args.storage = args.storage or default_url(args.study)
    study = open_study(args.study, args.storage)
    cfg = config_from_study(study, args)
    if cfg.sampler_seed is None:  # a worker started by hand (another machine): draws of its own
        cfg = dataclasses.replace(cfg, sampler_seed=secrets.randbelow(2**31))
    search = Search(cfg, create=False)
    search.run(progress=not args.quiet)
    return 1 if search.gave_up else 0


def worker_gpus(workers: int, device: torch.device, visible: str | None, count: int) -> list[str]:
    """The CUDA_VISIBLE_DEVICES entry of each of `workers` workers, round robin over
    the GPUs this process sees: `visible` (its own CUDA_VISIBLE_DEVICES: indices,
    UUIDs or MIG ids) in that order, else 0 .. count-1. A `device` with an index
    (--device cuda:1) pins every worker to that GPU."""
    ids = [s.strip() for s in visible.split(",") if s.strip()] if visible else [str(i) for i in range(count)]
    ids = ids[:count]  # torch stops at the first invalid entry; so does what it counts
    if not ids:
        raise NasError("no CUDA device is visible to start workers on; check CUDA_VISIBLE_DEVICES or use --device cpu")
    if device.index is not None:
        ids = [ids[device.index]]
    return [ids[i % len(ids)] for i in range(workers)]


def _worker_argv(cfg: SearchConfig, quiet: bool) -> list[str]:
    # No --storage: the URL goes through the environment (STORAGE_ENV), so a
    # password in it never shows in the process list.
    argv = [sys.executable, "-m", "nas.cli", "worker", "--study", cfg.study, "--device", cfg.device]
    for name in DEFAULT_CHOICES:  # this run's (a choice that differs from the study's is noted by each worker)
        if getattr(cfg, name) is not None:  # otherwise the worker keeps the study's
            argv += choice_argv(name, getattr(cfg, name))
    if cfg.seed is not None:
        argv += ["--seed", str(cfg.seed)]
    if cfg.trials is not None:
        argv += ["--trials", str(cfg.trials)]
    if cfg.step_budget is not None:
        argv += ["--step-budget", str(cfg.step_budget)]
    if cfg.timeout_s is not None:
        argv += ["--timeout", repr(cfg.timeout_s)]
        if cfg.started_at is not None:
            argv += ["--started-at", repr(cfg.started_at)]
    if cfg.keep_checkpoints is not None:
        argv += ["--keep-checkpoints", str(cfg.keep_checkpoints)]
    return argv + (["--quiet"] if quiet else [])


def run_parallel(cfg: SearchConfig, workers: int, *, quiet: bool = False) -> int:
    """Create/resume the study here, then run `workers` worker processes on it."""
    if workers < 1:
        raise NasError(f"--workers must be at least 1, got {workers}")
    if cfg.timeout_s is not None and cfg.started_at is None:  # the workers' timeout counts from now
        cfg = dataclasses.replace(cfg, started_at=time.time())
    search = Search(cfg)  # validates everything and creates the study once, before any worker starts
    url = search.url
    gpus = (worker_gpus(workers, search.device, os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count())
            if search.device.type == "cuda" else [])
    if gpus:
        torch.cuda.empty_cache()  # the budget measurement's blocks: the workers need the memory
        if workers > len(set(gpus)):
            print(f"nas: {workers} workers share {len(set(gpus))} GPU(s): a latency measured while another "
                  f"worker trains on the same GPU is inflated; use --workers {len(set(gpus))} for clean budgets",
                  file=sys.stderr)
    cores = os.cpu_count() or 1
    procs = []
    for i in range(workers):
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i]
        else:
            env["NAS_TRAIN_THREADS"] = str(max(1, cores // workers))
            env["OMP_NUM_THREADS"] = env["NAS_TRAIN_THREADS"]
        env[STORAGE_ENV] = url
        # Sampler seeds differ per worker, so that their random draws differ; every
        # worker trains with the study's one training seed (fitness compares
        # architectures, and a repeated architecture is replayed, not retrained).
        argv = _worker_argv(search.cfg, quiet) + ["--sampler-seed", str(search.seed + i)]
        if gpus:  # the worker sees its one GPU only, as cuda:0
            argv[argv.index("--device") + 1] = "cuda"
        procs.append(subprocess.Popen(argv, env=env))
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:  # Ctrl-C reached them too (same process group); make sure they are gone
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        raise
    study = open_study(cfg.study, url)
    print(summary_table(study, top=5, weights=weights_on_disk(url, study)))
    bad = [c for c in codes if c != 0]
    if bad:
        print(f"nas: {len(bad)} of {workers} workers exited with an error", file=sys.stderr)
        return 1
    return 0
