"""`nas search`: create or resume a study and run trials until it has N finished,
or until its trials have spent a given number of training steps.

A study remembers what it searches (task, space, budget, device, stages) in its
user attributes, so running the same command again resumes it, and running it
with a different task, space, budget or device is refused with a message naming
the difference, before anything is stored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import gc
import inspect
import json
import math
import os
import socket
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

import optuna
import torch
from optuna.storages._heartbeat import get_heartbeat_thread

from evaluators.errors import DeviceOutOfMemory, TaskError, TrialFailure
from evaluators.hardware import default_threads, dtype_name, resolve_device, resolve_dtype
from evaluators.tasks import get_task
from evaluators.training import Trainer
from nas.checkpoints import prune_checkpoints, weights_on_disk
from nas.choices import PRUNERS, SAMPLERS, make_pruner, make_sampler, require_sampler_package
from nas.evolution import ON_REFUSAL, check_evolution_numbers, is_int
from nas.hurdles import (DEFAULT_HURDLE_RULE, DEFAULT_HURDLE_SIGNAL, DEFAULT_MIN_TRIALS, DEFAULT_SELECTION_SIGNAL,
                         HURDLE_RULES, HURDLE_SIGNALS, check_min_trials)
from nas.objective import INTERRUPTED, Budget, Measurement, Objective, device_key, measure, measure_key
from nas.results import FINISHED, best_feasible, finished_count, steps_spent, summary_table, total_steps_spent
from nas.storage import GRACE_PERIOD, STUDIES_DIR, check_storage, check_study_name, default_url, open_storage, redact, sqlite_path
from nas.tables import Tables
from nas.trial_slots import TargetReached, study_lock
from search_spaces import ArchSpec, SearchSpace, SpecError, load_space

CONFIG_ATTR = "nas:config"
# Where a budget derived from a measurement came from: {"latency_fraction": F,
# "reference": "vanilla transformer", "reference_latency_ms": ms}. Kept apart from the
# study's identity (CONFIG_ATTR), which holds the budget in ms that every worker uses.
BUDGET_ORIGIN_ATTR = "nas:budget_origin"
TRAIN_ATTR = "nas:train_options"  # e.g. {"lr": 0.01}: how every candidate is trained; workers read it from here
# How a new study trains its candidates unless told otherwise: the Trainer's warm-up,
# then a constant learning rate (`min_lr_ratio` 1) rather than its cosine down to 0.1 x
# the peak. Over 400 steps on MQAR, five architectures able to recall learned it in 20 of
# 50 (architecture, training seed) runs with the cosine and in 37 of 50 at the constant rate
# (benchmarks/training_seeds.py, README): the recall appears in a late phase change
# that a decaying rate often stalls, and a fitness decided by the seed's luck tells the
# search little about the architecture. Stored with the study (TRAIN_ATTR), so a study
# made before this default resumes with the schedule it began with.
DEFAULT_TRAIN_OPTIONS: dict[str, Any] = {"min_lr_ratio": 1.0}
# With only a step budget to stop it, a search whose trials train nothing (every
# candidate a replay of one trained before, or over the hardware budget) would
# never spend it: it stops after this many such trials in a row.
IDLE_TRIALS_LIMIT = 50
WAIT_POLL_S = 1.0  # how often a worker waiting for other workers' last trials reads the study
ORPHAN_AGE_S = 6 * 3600  # a RUNNING trial older than this, in a study with no finished trial, is not waited for
IDENTITY_KEYS = ("task", "space", "budget", "device", "stages", "measure_batch", "measure_dtype", "seed")
# Studies made before the measurement dtype was stored measured in float32.
STORED_DEFAULTS = {"measure_dtype": "float32"}
# How a study searches, stored with it when it is made: a resume or worker that names
# none of these runs with the study's (evolution's population, the hurdles' rule, ...),
# so a second worker continues the same evolution. Defaults for a new study.
SEARCH_ATTR = "nas:search"
DEFAULT_CHOICES: dict[str, Any] = {
    "sampler": "evolution", "pruner": "hurdles", "population": 12, "tournament": 4, "mutation_prob": 0.2,
    "budget_aware": True, "on_refusal": "extend", "hurdle_trials": DEFAULT_MIN_TRIALS,
    "hurdle_signal": DEFAULT_HURDLE_SIGNAL, "hurdle_rule": DEFAULT_HURDLE_RULE, "selection_signal": DEFAULT_SELECTION_SIGNAL,
}


class SearchError(ValueError):
    """A search that cannot start as asked. One line: the problem and the fix."""


def schedule_options(stored: dict[str, Any]) -> dict[str, Any]:
    """The learning-rate options a study trains with: those it stored (TRAIN_ATTR)
    over the Trainer's own defaults, which is what its trials were given."""
    defaults = {name: p.default for name, p in inspect.signature(Trainer).parameters.items()
                if name in ("lr", "min_lr_ratio")}
    return {**defaults, **stored}


DEFAULT_STEPS = 400  # a candidate's full training when neither --steps nor --stages is given


def default_stages(steps: int) -> tuple[int, ...]:
    """Two stages: a third of `steps`, then all of it (133 and 400 at the default 400
    steps); fewer than 3 steps give one stage and no hurdle.

    One late hurdle, because that is what measured best on the default task with the
    default training (README, "the search"). On MQAR the loss stays on a plateau until
    an induction head forms, so earlier stages rank candidates by noise: with the
    earlier default (1/16, 1/8, 1/3, 1: 25, 50, 133, 400), two 10-seed benchmarks at an
    equal training-step budget found a mean best of 0.852 (the vanilla transformer's
    latency as budget) and 0.392 (half of it), against 0.935 and 0.683 with this one.
    Whether earlier hurdles would pay depends on the task; measure it on yours (`nas
    show` prints how well each stage's signal ranked the final fitness) and pass
    `--stages`."""
    if steps < 3:
        return (steps,)
    return (round(steps / 3), steps)


@dataclass
class SearchConfig:
    study: str
    storage: str | None = None
    # None: "default" and "mqar" for a new study; on resume the study's own, its task
    # options under any given (task_options), rebuilt from what it stored.
    space: str | SearchSpace | None = None
    task: str | None = None
    task_options: dict[str, Any] = field(default_factory=dict)
    latency_ms: float | None = None
    # Budget = this share of the vanilla transformer's latency, measured when the study is
    # made (None and no latency_ms: 1, the vanilla transformer's own latency).
    latency_fraction: float | None = None
    memory_mb: float | None = None
    trials: int | None = 30
    step_budget: int | None = None  # training steps the study may spend in total (None: no limit)
    # Wall-clock seconds this run may start trials for (None: no limit). Not stored: a
    # resume gets its own, as with Optuna's `optimize(timeout=...)`.
    timeout_s: float | None = None
    # When the command started (wall clock, time.time()): the timeout counts from it, so
    # `--workers K` processes, which start later, stop with the command. None: from run().
    started_at: float | None = None
    # Keep the weights of the K best trials and of the Pareto front only (nas.checkpoints);
    # None: every trained trial's. A per-run policy like the timeout.
    keep_checkpoints: int | None = None
    # The search's choices (DEFAULT_CHOICES): None takes the default for a new study and
    # the study's own on resume or in a worker (SEARCH_ATTR).
    sampler: str | None = None
    pruner: str | None = None
    device: str = "auto"
    seed: int | None = None  # training seed of every candidate; None: 0 for a new study, the study's own on resume
    sampler_seed: int | None = None  # the sampler's; None: the training seed (`--workers K` gives each its own)
    steps: int | None = None  # a candidate's full training; None: DEFAULT_STEPS for a new study, the study's own on resume
    stages: tuple[int, ...] | None = None
    population: int | None = None
    tournament: int | None = None
    mutation_prob: float | None = None
    # Evolution proposes only candidates measured within the budget (EvolutionSampler's
    # child check, Objective.within_budget); False: every child is tried as drawn.
    budget_aware: bool | None = None
    # After a child over the budget, evolution's next attempt "extend"s its marks by one (a
    # deeper child keeps its new layer and may cheapen another choice) or draws "fresh"
    # ones (EvolutionSampler). At half the vanilla latency, 10 seeds: mean best 0.888
    # against 0.699 (README, "evolution within the budget"); "extend" is the default.
    on_refusal: str | None = None
    hurdle_trials: int | None = None
    hurdle_signal: str | None = None  # what the hurdles compare: "loss" (minus the validation loss) or "fitness"
    hurdle_rule: str | None = None  # "progressive": training past a stage waits for its hurdle (nas.hurdles); or "fixed"
    selection_signal: str | None = None  # what evolution's tournament compares, the same two choices
    warm_start: bool = True
    measure_threads: int | None = None
    # What latency and memory are measured in: "auto" (bfloat16 on a CUDA device that
    # supports it, as training runs there; float32 otherwise), "float32", "bfloat16",
    # "float16". A resumed study keeps its own unless another is asked for.
    measure_dtype: str = "auto"
    # The batch size latency and memory are measured at: the deployment's (e.g. 1 for
    # one request at a time). None: the task's training batch (or, on resume, the study's).
    measure_batch: int | None = None
    train_options: dict[str, Any] = field(default_factory=dict)  # the Trainer's options asked for, over DEFAULT_TRAIN_OPTIONS
    command: str | None = None  # the command line that started the study, password redacted

    def url(self) -> str:
        return self.storage or default_url(self.study)


def _vanilla_params(space: SearchSpace) -> dict[str, Any] | None:
    """A plain transformer (all `full` attention) of the space's widest width and
    middle depth, enqueued first as the evolution's warm start and reference."""
    if "full" not in space.attention:
        return None
    d_model = max(space.d_model)
    depth = sorted(space.depth)[len(space.depth) // 2]
    heads = max(h for h in space.heads if d_model % h == 0)
    params: dict[str, Any] = {"d_model": d_model, "depth": depth}
    for i in range(depth):
        params.update({f"layer{i}.attention": "full", f"layer{i}.heads": heads, f"layer{i}.ffn_mult": max(space.ffn_mult)})
    return params


def _spec_from_params(space: SearchSpace, params: dict[str, Any], shape) -> Any:
    return space.sample(lambda name, choices: params[name], shape)


def _describe_diff(stored: dict[str, Any], wanted: dict[str, Any], shown: int = 3) -> str:
    """The identity settings that differ, down to the innermost differing field
    (`space.name`, `task.options.seq_len`), the first `shown` of them."""
    diffs = [d for key in IDENTITY_KEYS for d in _field_diffs(key, stored.get(key), wanted.get(key))]
    more = f"; and {len(diffs) - shown} more" if len(diffs) > shown else ""
    return "; ".join(diffs[:shown]) + more


def _field_diffs(name: str, stored: Any, wanted: Any) -> list[str]:
    if isinstance(stored, dict) and isinstance(wanted, dict):
        keys = sorted(set(stored) | set(wanted), key=lambda k: (k != "name", k))  # a name says the most: first
        return [d for k in keys for d in _field_diffs(f"{name}.{k}", stored.get(k), wanted.get(k))]
    if stored == wanted:
        return []
    return [f"{name}: stored {json.dumps(stored, sort_keys=True)} vs asked {json.dumps(wanted, sort_keys=True)}"]


def space_from_stored(stored: dict[str, Any], source: str) -> SearchSpace:
    """The search space a study stored (its CONFIG_ATTR "space": name and definition)."""
    d = _without_empty_knobs(stored["definition"])
    return SearchSpace.from_dict(
        {"name": stored["name"], "model": {"d_model": d["d_model"], "depth": d["depth"]},
         "layer": {"attention": d["attention"], "heads": d["heads"], "ffn_mult": d["ffn_mult"]}, "knobs": d["knobs"]},
        source=source)


def _without_empty_knobs(definition: dict[str, Any]) -> dict[str, Any]:
    """A stored space definition without knobs left with no choice (studies made before
    SearchSpace.for_task dropped them stored them as []): the same space."""
    return {**definition, "knobs": {k: v for k, v in definition["knobs"].items() if v}}


def choice_argv(name: str, value: Any) -> list[str]:
    """One of DEFAULT_CHOICES as the command line gives it: `--population 20`, `--no-budget-check`."""
    if name == "budget_aware":
        return ["--budget-check" if value else "--no-budget-check"]
    return [f"--{name.replace('_', '-')}", str(value)]


class Search:
    """Everything one worker needs to run trials of one study."""

    def __init__(self, cfg: SearchConfig, *, log: TextIO | None = None, create: bool = True) -> None:
        self.cfg = cfg
        self.log = sys.stdout if log is None else log  # looked up now, so a redirected stdout is honoured
        check_study_name(cfg.study)
        if cfg.trials is not None and cfg.trials <= 0:
            raise SearchError(f"--trials must be a positive number of finished trials, got {cfg.trials}")
        if cfg.step_budget is not None and cfg.step_budget <= 0:
            raise SearchError(f"--step-budget must be a positive number of training steps, got {cfg.step_budget}")
        if cfg.timeout_s is not None and not (isinstance(cfg.timeout_s, (int, float)) and not isinstance(cfg.timeout_s, bool)
                                              and cfg.timeout_s > 0 and math.isfinite(cfg.timeout_s)):
            raise SearchError(f"--timeout must be a positive duration, e.g. 90m or 8h, got {cfg.timeout_s}")
        if cfg.trials is None and cfg.step_budget is None and cfg.timeout_s is None:
            raise SearchError("nothing limits the search; give --trials N, --step-budget STEPS, --timeout or more")
        _check_search_numbers(cfg)
        if cfg.latency_ms is not None and cfg.latency_fraction is not None:
            raise SearchError("--latency-ms and --latency-fraction both set the latency budget; give one of them")
        if cfg.latency_fraction is not None and not (cfg.latency_fraction > 0 and math.isfinite(cfg.latency_fraction)):
            raise SearchError(f"--latency-fraction must be a positive number (0.5: half the vanilla transformer's latency), "
                              f"got {cfg.latency_fraction}")
        try:
            Budget(cfg.latency_ms, cfg.memory_mb)  # validates numbers before any work
        except ValueError as e:
            raise SearchError(str(e)) from None
        # What needs neither the task nor the storage is checked first.
        try:
            self.device = resolve_device(cfg.device)
        except ValueError as e:
            raise SearchError(str(e)) from None
        # One thread by default on CPU: two passes over the same architectures rank
        # them far more consistently than with all cores (benchmarks/latency.py).
        self.threads = cfg.measure_threads or default_threads()
        try:
            self.dtype = resolve_dtype(cfg.measure_dtype, self.device)
        except ValueError as e:
            raise SearchError(f"--measure-dtype: {e}") from None
        steps = DEFAULT_STEPS if cfg.steps is None else cfg.steps
        if not cfg.stages and not (is_int(steps) and steps > 0):
            raise SearchError(f"--steps must be a positive number of training steps per candidate, got {steps}")
        self.stages = tuple(cfg.stages) if cfg.stages else default_stages(steps)
        if any(s <= 0 for s in self.stages) or list(self.stages) != sorted(set(self.stages)):
            raise SearchError(f"--stages must be strictly increasing positive step counts, got {list(self.stages)}")
        self.url = cfg.url()
        if cfg.storage is None:
            Path(STUDIES_DIR).mkdir(exist_ok=True)
        check_storage(self.url)
        self.storage = None
        # A resumed study's task, options and space where not asked for: its own.
        kept = self._stored_config()
        task = cfg.task or (kept["task"]["name"] if kept else "mqar")
        options = cfg.task_options
        if kept and task == kept["task"]["name"]:
            options = {**kept["task"]["options"], **options}
        space = cfg.space
        if space is None:
            space = space_from_stored(kept["space"], f"study {cfg.study}") if kept else "default"
        try:
            self.task = get_task(task, **options)
        except TaskError as e:
            raise SearchError(str(e)) from None
        space = space if isinstance(space, SearchSpace) else load_space(space)
        self.space = space.for_task(self.task.shape)
        unfit = space.unfit_kinds(self.task.shape, causality=False)
        if unfit:  # some kinds remain (for_task refused otherwise): say which were left out by their knobs
            self._print(f"note: space {space.name} on task {self.task.name}: {'; '.join(unfit.values())}, "
                        f"so {', '.join(unfit)} {'is' if len(unfit) == 1 else 'are'} left out")
        self.measure_batch = cfg.measure_batch or self.task.batch_size
        self.train_options: dict[str, Any] = dict(cfg.train_options)
        self.study: optuna.Study | None = None
        self.budget: Budget | None = None
        self.budget_origin: dict[str, Any] | None = None  # set when a new study's budget is derived from a measurement
        self.seed = 0 if cfg.seed is None else cfg.seed  # a resumed study's own when none is asked for (_open)
        self.gave_up = False  # set by run() when it stopped after too many failed trials
        self._open(create)

    # ---- creation / resumption ---------------------------------------------------
    def _identity(self, budget: Budget) -> dict[str, Any]:
        return {
            "task": {"name": self.task.name, "options": self.task.options()},
            "space": {"name": self.space.name, "definition": _space_dict(self.space)},
            "budget": {"latency_ms": budget.latency_ms, "memory_mb": budget.memory_mb},
            "device": device_key(self.device, self.threads),
            "stages": list(self.stages),
            "measure_batch": self.measure_batch,
            "measure_dtype": dtype_name(self.dtype),
            "seed": self.seed,
        }

    def _study_exists(self) -> bool:
        path = sqlite_path(self.url)
        if path is not None and not path.exists():
            return False
        if self.storage is None:
            self.storage = open_storage(self.url)
        return any(s.study_name == self.cfg.study for s in self.storage.get_all_studies())

    def _stored_config(self) -> dict[str, Any] | None:
        """The study's stored settings (CONFIG_ATTR), or None when there is no such
        study yet (or it was not made by nas: _open refuses it)."""
        if not self._study_exists():
            return None
        study_id = self.storage.get_study_id_from_name(self.cfg.study)
        stored = self.storage.get_study_user_attrs(study_id).get(CONFIG_ATTR)
        return stored if isinstance(stored, dict) else None

    def _open(self, create: bool) -> None:
        cfg = self.cfg
        if self._study_exists():
            study = optuna.load_study(study_name=cfg.study, storage=self.storage)
            attrs = study.user_attrs  # one storage read for all the stored settings below
            stored = attrs.get(CONFIG_ATTR)
            if stored is None:
                raise SearchError(f"study {cfg.study!r} in {redact(self.url)} was not made by nas (no {CONFIG_ATTR}); pick another --study name")
            stored = {**STORED_DEFAULTS, **stored}
            self._choose(study, attrs)
            if cfg.measure_dtype == "auto":  # not asked for: keep the study's
                self.dtype = resolve_dtype(stored["measure_dtype"], self.device)
            if cfg.measure_batch is None and stored.get("measure_batch"):  # likewise
                self.measure_batch = int(stored["measure_batch"])
            budget = Budget(
                cfg.latency_ms if cfg.latency_ms is not None else stored["budget"]["latency_ms"],
                cfg.memory_mb if cfg.memory_mb is not None else stored["budget"]["memory_mb"],
            )
            if cfg.seed is None:  # not asked for: keep the study's
                self.seed = int(stored.get("seed", 0))
            wanted = self._identity(budget)
            if "seed" not in stored:  # made before the seed was stored: trains with the one asked for, as then
                del wanted["seed"]
            stored["space"] = {**stored["space"], "definition": _without_empty_knobs(stored["space"]["definition"])}
            if wanted["space"]["definition"] == stored["space"]["definition"]:
                # The same choices under another name (a space file given by another path): the same space.
                wanted["space"]["name"] = stored["space"]["name"]
            for name in set(wanted["task"]["options"]) - set(stored["task"]["options"]):
                del wanted["task"]["options"][name]  # an option the task gained since (e.g. text's sha256)
            if cfg.stages is None and cfg.steps is None:
                wanted["stages"] = stored["stages"]  # not asked for: keep the study's
                self.stages = tuple(stored["stages"])
            diffs = [_describe_diff(stored, wanted)]
            origin = attrs.get(BUDGET_ORIGIN_ATTR) or {}
            if cfg.latency_fraction is not None and origin.get("latency_fraction") != cfg.latency_fraction:
                # Re-measuring the reference would move the budget of a running study: refused.
                diffs.append(f"latency_fraction: stored {origin.get('latency_fraction')} "
                             f"(budget {stored['budget']['latency_ms']:g} ms) vs asked {cfg.latency_fraction}")
            stored_train = attrs.get(TRAIN_ATTR) or {}
            # Compared as trained: `--lr 3e-3` asks for what a study that stored no lr trains with.
            if any(schedule_options(stored_train).get(k) != v for k, v in cfg.train_options.items()):
                diffs.append(f"train_options: stored {json.dumps(stored_train, sort_keys=True)} "
                             f"vs asked {json.dumps(cfg.train_options, sort_keys=True)}")
            diff = "; ".join(filter(None, diffs))
            if diff:
                raise SearchError(f"study {cfg.study!r} exists with different settings ({diff}); run with the stored settings or use a new --study name")
            self.train_options = dict(stored_train)
            self.budget = budget
            self._print(f"resuming study {cfg.study!r} in {redact(self.url)}: {finished_count(study)} finished trials")
            return
        if not create:
            raise SearchError(f"no study {cfg.study!r} in {redact(self.url)}; start it with nas search --study {cfg.study}")
        self._choose(None, {})
        budget, measured = self._initial_budget()
        self.budget = budget
        if self.storage is None:
            self.storage = open_storage(self.url)
        study = optuna.create_study(study_name=cfg.study, storage=self.storage, direction="maximize",
                                    sampler=optuna.samplers.RandomSampler(seed=0))
        study.set_user_attr(CONFIG_ATTR, self._identity(budget))
        study.set_user_attr(SEARCH_ATTR, {k: getattr(self.cfg, k) for k in DEFAULT_CHOICES})
        if self.budget_origin:
            study.set_user_attr(BUDGET_ORIGIN_ATTR, self.budget_origin)
        self.train_options = {**DEFAULT_TRAIN_OPTIONS, **cfg.train_options}
        study.set_user_attr(TRAIN_ATTR, self.train_options)
        if cfg.command:
            study.set_user_attr("nas:command", cfg.command)
        study.set_user_attr("nas:description", f"{self.task.name} on space {self.space.name}: {self.task.description}")
        # What the budget check measured goes into the cache: the vanilla warm start
        # then shows the very latency the default budget is.
        tables = Tables(self.url)
        try:
            for spec, m in measured:
                key = measure_key(spec, device=self.device, batch_size=self.measure_batch, threads=self.threads,
                                  dtype=self.dtype)
                tables.put_measurement(key, m.latency, m.memory)
        finally:
            tables.dispose()
        if cfg.warm_start:
            vanilla = _vanilla_params(self.space)
            if vanilla is not None:
                study.enqueue_trial(vanilla, user_attrs={"warm_start": "vanilla transformer"})
        self._print(f"created study {cfg.study!r} in {redact(self.url)}")

    def _choose(self, study: optuna.Study | None, attrs: dict[str, Any]) -> None:
        """The search's choices for this run (DEFAULT_CHOICES: sampler, pruner,
        evolution's and the hurdles' settings): those asked for, else the study's (as
        made, or for a study made before they were stored, as its latest trial ran),
        else the defaults; checked before anything is stored. A choice that differs
        from the study's is used, with a note."""
        stored = attrs.get(SEARCH_ATTR)
        stored = dict(stored) if isinstance(stored, dict) else {}
        if study is not None and not DEFAULT_CHOICES.keys() <= stored.keys():
            # Made before all of them were stored: the rest as its latest trial ran.
            ran = [t.user_attrs["search"] for t in study.get_trials(deepcopy=False)
                   if isinstance(t.user_attrs.get("search"), dict)]
            stored = {**(ran[-1] if ran else {}), **stored}
        chosen = {k: stored.get(k, default) if getattr(self.cfg, k) is None else getattr(self.cfg, k)
                  for k, default in DEFAULT_CHOICES.items()}
        switched = [f"{' '.join(choice_argv(k, v))} (the study's: {choice_argv(k, stored[k])[-1]})" for k, v in chosen.items()
                    if k in stored and v != stored[k]]
        if switched:
            self._print(f"note: this run uses {', '.join(switched)}; trials record which one they ran under")
        unknown = [k for k in DEFAULT_CHOICES if study is not None and k not in stored and getattr(self.cfg, k) is None]
        if unknown:  # a study made before they were recorded (evolution's numbers were not, per trial either)
            self._print(f"note: study {self.cfg.study!r} did not record {', '.join(' '.join(choice_argv(k, chosen[k])[:1]) for k in unknown)}; "
                        f"this run uses the defaults ({', '.join(' '.join(choice_argv(k, chosen[k])) for k in unknown)}): "
                        "give them to run as the study was made")
        self.cfg = dataclasses.replace(self.cfg, **chosen)
        try:
            check_choices(self.cfg)
        except ValueError as e:
            raise SearchError(str(e)) from None

    def _initial_budget(self) -> tuple[Budget, list[tuple[ArchSpec, Measurement]]]:
        """The budget of a new study, checked against the cheapest architecture of
        the space measured on this device, so an impossible budget fails now; with
        the (architecture, measurement) pairs taken for it."""
        # A database that holds other studies may have measured these architectures
        # already: its figure is used, as every trial in it will use it. (Timed afresh,
        # the vanilla transformer could come out faster than its cached latency, and
        # its own warm-start trial, which reads the cache, would be over the budget.)
        tables = Tables.existing(self.url)  # read only: what the check measures is stored once the study is made
        try:
            return self._measured_budget(tables)
        finally:
            if tables is not None:
                tables.dispose()

    def _measured_budget(self, tables: Tables | None) -> tuple[Budget, list[tuple[ArchSpec, Measurement]]]:
        cfg = self.cfg
        shape = self.task.shape
        smallest_of_each_kind = self.space.cheapest_of_each_kind(shape)
        cheapest = smallest_of_each_kind[0]

        def timed(spec: ArchSpec, cache: Tables | None = tables, reference: bool = False) -> Measurement:
            try:
                return measure(spec, device=self.device, batch_size=self.measure_batch, tables=cache,
                               threads=self.threads, dtype=self.dtype, seed=self.seed, store=False)
            except DeviceOutOfMemory:
                what = (f"d_model {spec.d_model}, {spec.depth} layer(s), ffn {spec.layers[0].ffn}; "
                        f"{self.device.type} memory at batch {self.measure_batch}")
                if reference:  # only the default budget needs it
                    raise SearchError(
                        f"the vanilla transformer of space {self.space.name}, whose latency would be the default "
                        f"budget, does not fit ({what}); give the budget yourself with --latency-ms") from None
                # The smallest of its kind: every candidate of that kind is at least this big.
                raise SearchError(
                    f"the smallest {spec.layers[0].attention} architecture of space {self.space.name} does not fit "
                    f"({what}); use a space with smaller d_model, depth or ffn_mult choices (or a smaller "
                    f"--measure-batch)") from None

        m = timed(cheapest)
        measured = [(cheapest, m)]
        latency_ms = cfg.latency_ms
        if latency_ms is None:
            fraction = 1.0 if cfg.latency_fraction is None else cfg.latency_fraction
            vanilla = _vanilla_params(self.space)
            r = m  # no vanilla transformer in the space (or it is the cheapest): measured above
            if vanilla:
                ref = _spec_from_params(self.space, vanilla, shape)
                if ref.content_hash() != cheapest.content_hash():
                    r = timed(ref, reference=True)
                    measured.append((ref, r))
            reference = "vanilla transformer" if vanilla else "cheapest architecture"
            # Rounded up, so the vanilla transformer itself (cached below) stays within a fraction of 1.
            latency_ms = math.ceil(fraction * r.latency_ms * 1000) / 1000
            self.budget_origin = {"latency_fraction": fraction, "reference": reference, "reference_latency_ms": r.latency_ms}
            when = " (measured earlier: this database's cache)" if r.cached else ""
            if cfg.latency_fraction is None:
                self._print(f"no --latency-ms given: budget = measured latency of the {reference} "
                            f"({latency_ms:.3f} ms per batch of {self.measure_batch} on {self.device.type}){when}")
            else:
                self._print(f"budget = {fraction:g} x the measured latency of the {reference} ({r.latency_ms:.3f} ms) "
                            f"= {latency_ms:.3f} ms per batch of {self.measure_batch} on {self.device.type}{when}")
        # A budget equal to the vanilla transformer's latency can be met by construction: that
        # transformer's own measurement, cached below, is the budget. Checking the
        # cheapest architecture against it would only compare two noisy timings of
        # near-equal models (in a small space the cheapest may be the vanilla one).
        explicit = cfg.latency_ms is not None or cfg.latency_fraction is not None

        def over(x: Measurement) -> bool:
            return ((explicit and x.latency_ms > latency_ms)
                    or (cfg.memory_mb is not None and x.memory_mb > cfg.memory_mb))

        if explicit and m.latency_ms > latency_ms and not m.cached:
            # Timed once more before refusing: a burst of load from another process
            # should not refuse a study whose budget the machine can meet. (A cached
            # figure is not: it is the one every trial in this database reads.)
            m = min(m, timed(cheapest, None), key=lambda x: x.latency_ms)
            measured[0] = (cheapest, m)
        if over(m):
            # The first kind in cost order misses the budget, but that order is
            # asymptotic: at a short sequence another kind (full attention, often) may
            # cost less. The smallest architecture of each kind is measured before
            # the budget is refused.
            tried = [m]
            for spec in smallest_of_each_kind[1:]:
                x = timed(spec)
                measured.append((spec, x))
                tried.append(x)
                if not over(x):
                    break
            else:
                raise self._unmet(latency_ms if explicit else None, tried)
        return Budget(latency_ms, cfg.memory_mb), measured

    def _unmet(self, latency_ms: float | None, tried: list[Measurement]) -> SearchError:
        """Why no architecture of the space can meet the budget: `tried` holds the
        smallest architecture of each attention kind, measured."""
        cfg, where = self.cfg, f"the smallest architecture of each attention kind in space {self.space.name!r}"
        fastest = min(tried, key=lambda x: x.latency_ms)
        smallest = min(tried, key=lambda x: x.memory_mb)
        if latency_ms is not None and fastest.latency_ms > latency_ms:
            if cfg.latency_ms is not None:
                fix = f"raise --latency-ms above {fastest.latency_ms:.3f}"
            else:
                fix = f"raise --latency-fraction above {fastest.latency_ms / self.budget_origin['reference_latency_ms']:.3f}"
            cached = " (as this database measured it before)" if fastest.cached else ""
            return SearchError(f"latency budget {latency_ms:g} ms cannot be met: {where} measures at least "
                               f"{fastest.latency_ms:.3f} ms on {self.device.type}{cached}; {fix}")
        if smallest.memory_mb > cfg.memory_mb:
            return SearchError(f"memory budget {cfg.memory_mb:g} MiB cannot be met: {where} peaks at least at "
                               f"{smallest.memory_mb:.3f} MiB on {self.device.type}; raise --memory-mb above "
                               f"{smallest.memory_mb:.3f}")
        return SearchError(f"latency budget {latency_ms:g} ms and memory budget {cfg.memory_mb:g} MiB cannot be met "
                           f"together by {where} (fastest {fastest.latency_ms:.3f} ms, smallest {smallest.memory_mb:.3f} "
                           f"MiB); raise one of them")

    def _print(self, msg: str) -> None:
        print(msg, file=self.log, flush=True)

    # ---- running -------------------------------------------------------------------
    def objective(self) -> Objective:
        path = sqlite_path(self.url)
        ckpt_root = (path.parent if path is not None else Path(STUDIES_DIR)) / self.cfg.study / "checkpoints"
        return Objective(
            study_name=self.cfg.study, task=self.task, space=self.space, budget=self.budget,
            device=self.device, stages=self.stages, tables=Tables(self.url), checkpoint_dir=ckpt_root,
            seed=self.seed, measure_batch=self.measure_batch, threads=self.threads, dtype=self.dtype,
            train_options=self.train_options,
            search_info={k: getattr(self.cfg, k) for k in DEFAULT_CHOICES},
        )

    @contextlib.contextmanager
    def trial_slot(self, study_id: int, storage: optuna.storages.BaseStorage | None = None) -> Iterator[None]:
        """Around the creation of a new trial: count the study's finished, running and
        re-queued trials under its lock (nas.trial_slots) and refuse (TargetReached)
        when they make `--trials`, else hold the lock until the trial is created. Two
        workers can then no longer both take the last slot. `storage`: the study's own
        (Optuna's cached one re-reads only unfinished and new trials: the lock is held
        for milliseconds, not for a read of every trial)."""
        if self.cfg.trials is None:  # a step budget or a timeout: nothing to count
            yield
            return
        with study_lock(self.url, self.cfg.study, getattr(self.storage, "engine", None)):
            n = _Tally.of_trials((storage or self.storage).get_all_trials(study_id, deepcopy=False))
            # A re-queued retry will run too (the loop takes it before any new trial).
            if n.finished + n.running + n.pending_retries >= self.cfg.trials:
                raise TargetReached
            yield

    def load(self, objective: Objective | None = None) -> optuna.Study:
        """The study with this worker's sampler and pruner; given the `objective`
        it will run, evolution checks its children against that objective's budget
        (`budget_aware`)."""
        cfg = self.cfg
        check = objective.within_budget if objective is not None and cfg.budget_aware else None
        sampler_seed = self.seed if cfg.sampler_seed is None else cfg.sampler_seed
        sampler = make_sampler(cfg.sampler, seed=sampler_seed, population=cfg.population, tournament=cfg.tournament,
                               mutation_prob=cfg.mutation_prob, selection=cfg.selection_signal, child_check=check,
                               on_refusal=cfg.on_refusal)
        pruner = make_pruner(cfg.pruner, stages=self.stages, min_trials=cfg.hurdle_trials, signal=cfg.hurdle_signal,
                             rule=cfg.hurdle_rule)
        return optuna.load_study(study_name=cfg.study, storage=self.storage, sampler=sampler, pruner=pruner)

    def run(self, *, progress: bool = True, on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None) -> optuna.Study:
        """Run trials until the study has `cfg.trials` finished (COMPLETE or
        PRUNED) trials in total, or until its trials have spent `cfg.step_budget`
        training steps, whichever comes first. Failed trials (NaN, OOM, a killed
        worker) do not count as finished; after as many failures as the target
        (at least 10) the search stops and says so. With other workers on the
        study, a trial is not started when the finished trials plus those running
        elsewhere make the target: this process waits for them instead, and runs
        the retry of any whose worker dies, so the study ends with the target.

        `cfg.timeout_s` (wall-clock seconds from this call) is checked at the same
        points: no trial starts after it, and the one running then finishes.

        The step budget is checked before each trial starts, from storage (so a
        resumed study continues to the same budget), and a trial runs to its end:
        a study stops at most one trial's steps past the budget per worker. That
        is how search strategies are compared at equal compute: hurdles spend
        fewer steps per trial, hence run more trials within the same budget
        (So et al. 2019, "The Evolved Transformer", section 3)."""
        inner = self.objective()
        study = self.load(inner)
        worker = f"{socket.gethostname()}:{os.getpid()}"
        target = self.cfg.trials
        started = _TrialStarts(study._storage, slot=lambda study_id: self.trial_slot(study_id, study._storage))

        def objective(trial: optuna.Trial) -> float:
            started.sampled()  # Optuna's own heartbeat runs from here on
            # Which process ran the trial: on a shared study, that is how a killed
            # worker's trial is traced (and how tests find the process to kill).
            trial.set_user_attr("worker", worker)
            try:
                return inner(trial)
            except TrialFailure as e:
                # `failure` holds the short tag (diverged, out_of_memory); this, the whole message.
                trial.set_user_attr("failure_message", str(e).strip().splitlines()[0] if str(e).strip() else e.reason)
                raise

        warned: set[str] = set()

        def keep_checkpoints(study: optuna.Study) -> None:
            if self.cfg.keep_checkpoints is not None and inner.tables is not None:
                for problem in prune_checkpoints(study, inner.tables, self.cfg.keep_checkpoints)[1]:
                    if problem not in warned:  # once per file, not after every trial
                        warned.add(problem)
                        print(f"nas: warning: {problem}", file=sys.stderr)

        keep_checkpoints(study)  # a resume with a lower limit applies it at once
        step_budget = self.cfg.step_budget
        deadline = None if self.cfg.timeout_s is None else (
            (self.cfg.started_at if self.cfg.started_at is not None else _clock()) + self.cfg.timeout_s)
        bar = _Progress(study, target, step_budget, self.log if progress else None)
        max_failures = max(target or 0, 10)

        def reached(n: _Tally) -> bool:
            return ((target is not None and n.finished >= target)
                    or (step_budget is not None and n.steps >= step_budget))

        def spoken_for(n: _Tally) -> bool:
            # Trials other workers are running now will finish too: starting one more
            # when those reach the target would end the study past it (K - 1 trials
            # past it with K workers). Only live trials count: stale ones are failed
            # and re-queued before the tally in the loop below.
            return target is not None and n.finished + n.running >= target

        def idle(n: _Tally) -> bool:
            return target is None and n.idle_streak >= IDLE_TRIALS_LIMIT

        def timed_out() -> bool:
            # Like the step budget, checked before a trial starts: a started trial runs to its end.
            return deadline is not None and _clock() >= deadline

        def more_to_do(n: _Tally) -> bool:
            return (((not reached(n) and not spoken_for(n) and not idle(n)) or n.pending_retries > 0)
                    and n.failed < max_failures and not timed_out())

        def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            if trial.state == optuna.trial.TrialState.COMPLETE:
                keep_checkpoints(study)
            if trial.state == optuna.trial.TrialState.FAIL:
                # The caught exception's traceback holds the failed trial's model and
                # optimizer state in a reference cycle; after an out-of-memory error the
                # next candidate needs that memory back now, not at the next collection.
                gc.collect()
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
            bar.update(study, trial)
            if on_trial is not None:
                on_trial(study, trial)
            # A dead worker's trial not yet failed may count as running here and stop
            # this loop early; the loop below fails it first, then carries on.
            if not more_to_do(_Tally.of(study)):
                study.stop()

        # A caught failure is on the trial (user attrs `failure`, `failure_message`) and on
        # our progress line; Optuna's own warning would add a whole traceback per trial.
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        waited = False
        try:
            while True:
                # Read between trials, when this process runs none: every RUNNING trial is
                # another worker's, or a dead worker's (SIGKILL, power loss). The latter is
                # failed here once its heartbeat is stale and re-queued with the same
                # params, so this run retries it, even if the target was reached meanwhile.
                _fail_stale_trials(study)
                n = _Tally.of(study)
                if more_to_do(n):
                    remaining = None if target is None else max(target - n.finished - n.running, 0) + n.pending_retries
                    try:
                        study.optimize(objective, n_trials=remaining, catch=(TrialFailure, SpecError),
                                       callbacks=[callback], gc_after_trial=False)
                    except TargetReached:
                        continue  # another worker took the last slot: read the study again (and wait)
                elif spoken_for(n) and not reached(n) and n.failed < max_failures and not timed_out():
                    # Other workers' trials would reach the target: wait for them rather than
                    # leave, so that if one of them dies its retry (re-queued once its
                    # heartbeat is stale) is run here and the study still reaches the target.
                    if not waited:
                        self._print(f"waiting for {n.running} trial(s) running in other workers to reach {target} finished")
                        waited = True
                    time.sleep(WAIT_POLL_S)
                else:
                    break
        except BaseException as e:
            # Optuna creates a trial before sampling it, outside its own error handling: a
            # Ctrl-C or an error there would leave it RUNNING, for every later run to wait on.
            started.sampled()
            if isinstance(e, KeyboardInterrupt):
                _fail_if_running(study, started.last, INTERRUPTED, "interrupted (Ctrl-C) while the trial was being sampled")
            else:
                _fail_if_running(study, started.last, "sampling_error", f"{type(e).__name__} while the trial was being "
                                 f"sampled: {' '.join(str(e).split())}")
            raise
        finally:
            started.sampled()
        bar.close()
        if reached(n):
            pass
        elif n.failed >= max_failures:
            self.gave_up = True
            self._print(f"stopped after {n.failed} failed trials; see `nas show {self.cfg.study}` for their reasons")
        elif timed_out():
            self._print(f"stopped: --timeout reached with {n.finished} finished trials; run the same command again "
                        f"to continue the study")
        elif idle(n):
            self._print(f"stopped: the last {IDLE_TRIALS_LIMIT} trials trained nothing (each repeated an architecture "
                        f"trained before or was over the hardware budget), so the step budget would never be spent; "
                        f"the space looks exhausted: widen it, raise the budget, or give --trials")
        return study


_clock = time.time  # --timeout's clock: wall time, shared with worker processes (a test advances its own)


def parse_duration(text: str) -> float:
    """Seconds from "3600", "90s", "45m", "8h" or "1.5h"; ValueError naming the form otherwise."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    scale = units.get(t[-1:], None)
    number = t[:-1] if scale is not None else t
    try:
        seconds = float(number) * (scale or 1)
    except ValueError:
        raise ValueError(f"{text!r} is not a duration; give seconds or a number with s, m, h or d, e.g. 90m or 8h") from None
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"{text!r} must be a positive duration, e.g. 90m or 8h")
    return seconds


def check_choices(cfg: SearchConfig) -> None:
    """ValueError, under the flag's name, unless the search's choices (every one of
    DEFAULT_CHOICES set) can run: the sampler's package present, evolution's numbers
    in range, the hurdles' settings known. Checked before anything is stored."""
    for flag, value, known in (("--sampler", cfg.sampler, SAMPLERS), ("--pruner", cfg.pruner, PRUNERS),
                               ("--hurdle-signal", cfg.hurdle_signal, HURDLE_SIGNALS),
                               ("--selection-signal", cfg.selection_signal, HURDLE_SIGNALS),
                               ("--hurdle-rule", cfg.hurdle_rule, HURDLE_RULES), ("--on-refusal", cfg.on_refusal, ON_REFUSAL)):
        if value not in known:
            raise ValueError(f"{flag} must be one of {', '.join(known)}, got {value!r}")
    if not isinstance(cfg.budget_aware, bool):
        raise ValueError(f"budget_aware must be True or False (--no-budget-check), got {cfg.budget_aware!r}")
    require_sampler_package(cfg.sampler)
    check_min_trials(cfg.hurdle_trials, "--hurdle-trials")
    if cfg.sampler == "evolution":
        check_evolution_numbers(cfg.population, cfg.tournament, cfg.mutation_prob, None,
                                names=("--population", "--tournament", "--mutation-prob", "--seed"))


def _check_search_numbers(cfg: SearchConfig) -> None:
    """The sampler's and pruner's numbers, checked under their flags' names before
    anything is stored (the sampler and pruner themselves are built only later)."""
    # Training seeds every candidate: None only as "the study's own" (0 for a new study).
    for flag, seed in (("--seed", cfg.seed), ("--sampler-seed", cfg.sampler_seed)):
        if seed is not None and not (is_int(seed) and seed >= 0):
            raise SearchError(f"{flag} must be a non-negative integer, got {seed!r}")
    for flag, value, what in (("--measure-threads", cfg.measure_threads, ""),
                              ("--measure-batch", cfg.measure_batch, " (the batch size you deploy at)"),
                              ("--keep-checkpoints", cfg.keep_checkpoints, "")):
        if value is not None and not (is_int(value) and value >= 1):
            raise SearchError(f"{flag} must be a positive integer{what}, got {value!r}")


class _TrialStarts:
    """Watches `storage` for the trials this process sets RUNNING (a new trial, or a
    queued one it takes) and covers their sampling with a heartbeat.

    Optuna creates a trial before the sampler runs and starts the trial's heartbeat
    only once sampling is done; evolution's budget check measures candidates in
    between. A worker killed there (SIGKILL, a lost machine) would leave the trial
    RUNNING with no heartbeat, which no worker ever fails or retries. So from its
    creation until `sampled()` the trial beats through Optuna's own heartbeat thread
    (`get_heartbeat_thread`). `last` holds (id, taken from the queue) of the last
    such trial, for `_fail_if_running` after a Ctrl-C or an error while sampling."""

    def __init__(self, storage: optuna.storages.BaseStorage, *,
                 slot: Callable[[int], contextlib.AbstractContextManager[None]] | None = None) -> None:
        self.last: list[tuple[int, bool]] = []
        self._storage = storage
        self._beat: Any = None
        create, set_state = storage.create_new_trial, storage.set_trial_state_values

        def create_new_trial(study_id: int, template_trial: optuna.trial.FrozenTrial | None = None) -> int:
            new = template_trial is None or template_trial.state == optuna.trial.TrialState.RUNNING
            # A new trial takes a slot toward the target: `slot` counts and may refuse
            # (TargetReached) under the study's lock. Queued copies and added trials do not.
            with (slot(study_id) if new and slot is not None else contextlib.nullcontext()):
                trial_id = create(study_id, template_trial)
            if new:
                self._started(trial_id, queued=False)
            return trial_id

        def set_trial_state_values(trial_id: int, state: optuna.trial.TrialState, values: Any = None) -> bool:
            changed = set_state(trial_id, state, values)
            if changed and state == optuna.trial.TrialState.RUNNING:
                self._started(trial_id, queued=True)  # only a WAITING (queued) trial is set RUNNING this way
            return changed

        storage.create_new_trial = create_new_trial  # type: ignore[method-assign]
        storage.set_trial_state_values = set_trial_state_values  # type: ignore[method-assign]

    def _started(self, trial_id: int, *, queued: bool) -> None:
        self.sampled()
        self.last[:] = [(trial_id, queued)]
        self._beat = get_heartbeat_thread(trial_id, self._storage)
        self._beat.start()

    def sampled(self) -> None:
        """Stop the sampling heartbeat (the trial's own one takes over, or it ended)."""
        if self._beat is not None:
            self._beat.join()
            self._beat = None


QUEUED_ATTRS = ("warm_start",)  # the user attributes a queued trial is given (`study.enqueue_trial`)


def _fail_if_running(study: optuna.Study, trials: list[tuple[int, bool]], reason: str, why: str) -> None:
    """Fail those of `trials` still RUNNING, recording `reason` (the `failure` tag)
    and `why`. A trial interrupted in its objective is failed by Optuna already, with
    its `failure` recorded by the objective. One taken from the queue (the warm start,
    a dead worker's retry) and cut short either way is queued again, so its
    parameters still run."""
    storage = study._storage
    for trial_id, queued in trials:
        frozen = storage.get_trial(trial_id)
        if frozen.state == optuna.trial.TrialState.RUNNING:
            storage.set_trial_user_attr(trial_id, "failure", reason)
            storage.set_trial_user_attr(trial_id, "failure_message", why)
            storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
        elif frozen.state != optuna.trial.TrialState.FAIL or frozen.user_attrs.get("failure") != reason:
            continue  # finished before the interruption, or failed for a reason of its own
        fixed = frozen.system_attrs.get("fixed_params")
        if queued and fixed:
            # What the queue held: its parameters, the warm start's mark, and the retry
            # marker Optuna's heartbeat retry put on it, so the tally counts it as one; not
            # what the cut-short run recorded (its steps, metrics, measurements).
            attrs = {k: v for k, v in frozen.user_attrs.items() if k in QUEUED_ATTRS}
            study.add_trial(optuna.trial.create_trial(
                state=optuna.trial.TrialState.WAITING, user_attrs=attrs,
                system_attrs={k: v for k, v in frozen.system_attrs.items() if k in ("fixed_params", "failed_trial")}))


def _fail_stale_trials(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


@dataclass(frozen=True)
class _Tally:
    """What the stop rule of `Search.run` needs, from one read of the trials."""

    finished: int  # COMPLETE or PRUNED
    steps: int  # training steps spent by all trials
    idle_streak: int  # newest finished trials in a row that spent no training step
    pending_retries: int  # re-queued copies of trials whose worker died, not yet started
    failed: int
    running: int  # RUNNING trials (another worker's, when read between this process's trials)

    @classmethod
    def of(cls, study: optuna.Study) -> "_Tally":
        return cls.of_trials(study.get_trials(deepcopy=False))

    @classmethod
    def of_trials(cls, trials: list[optuna.trial.FrozenTrial]) -> "_Tally":
        durations = [t.duration.total_seconds() for t in trials if t.state in FINISHED and t.duration is not None]
        # A RUNNING trial far older than the longest trial ever took is an orphan with no
        # heartbeat to expire it (a process that died before its first heartbeat, or a
        # trial from outside nas): it is not counted, so it can never hold a worker back.
        max_age = GRACE_PERIOD + 2 * max(durations) if durations else ORPHAN_AGE_S
        now = datetime.datetime.now()
        finished = sorted((t for t in trials if t.state in FINISHED), key=lambda t: t.number, reverse=True)
        return cls(
            finished=len(finished),
            steps=sum(steps_spent(t) for t in trials),
            idle_streak=next((i for i, t in enumerate(finished) if steps_spent(t) > 0), len(finished)),
            pending_retries=sum(t.state == optuna.trial.TrialState.WAITING and "failed_trial" in t.system_attrs
                                for t in trials),
            failed=sum(t.state == optuna.trial.TrialState.FAIL for t in trials),
            running=sum(t.state == optuna.trial.TrialState.RUNNING and t.datetime_start is not None
                        and (now - t.datetime_start).total_seconds() < max_age for t in trials),
        )


def _space_dict(space: SearchSpace) -> dict[str, Any]:
    return {
        "d_model": list(space.d_model), "depth": list(space.depth), "attention": list(space.attention),
        "heads": list(space.heads), "ffn_mult": list(space.ffn_mult),
        "knobs": {k: list(v) for k, v in sorted(space.knobs.items())},
    }


class _Progress:
    """One line per finished trial and a running best: trials done / target (and
    training steps spent / budget when there is one), best feasible fitness and
    its measured latency."""

    def __init__(self, study: optuna.Study, target: int | None, step_budget: int | None, out: TextIO | None) -> None:
        self.target = target
        self.step_budget = step_budget
        self.out = out
        self.done = finished_count(study)

    def update(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self.out is None:
            return
        trials = study.get_trials(deepcopy=False)  # one storage query for the whole line
        self.done = finished_count(trials)
        best = best_feasible(trials)
        attrs = trial.user_attrs
        state = trial.state.name
        what = attrs.get("stopped") or attrs.get("failure_message") or attrs.get("failure") or ""
        if not what and "replayed_from" in attrs:
            what = f"replayed trial {attrs['replayed_from']} (same architecture, not trained again)"
        value = "" if trial.value is None else f"fitness {trial.value:.4f}"
        lat = f"{attrs['latency_ms']:.3f} ms" if "latency_ms" in attrs else ""
        best_s = "none feasible yet" if best is None else f"best {best.value:.4f} @ {best.user_attrs.get('latency_ms', math.nan):.3f} ms (trial {best.number})"
        count = f"[{self.done:>3}/{self.target}]" if self.target is not None else f"[{self.done:>3}]"
        if self.step_budget is not None:
            count += f" [steps {total_steps_spent(trials)}/{self.step_budget}]"
        print(f"{count} trial {trial.number:>3} {state:<8} {value:<15} {lat:<11} "
              f"{attrs.get('attention_mix', ''):<28} {what[:100]:<0} | {best_s}", file=self.out, flush=True)

    def close(self) -> None:
        pass


def search_main(cfg: SearchConfig, *, log: TextIO | None = None, quiet: bool = False) -> int:
    """Create or resume, run, and print the summary table; the exit status: 1 when
    the search gave up after too many failed trials."""
    log = sys.stdout if log is None else log
    s = Search(cfg, log=log)
    study = s.run(progress=not quiet)
    print("", file=log)
    print(summary_table(study, top=5, weights=weights_on_disk(s.url, study)), file=log)
    return 1 if s.gave_up else 0
