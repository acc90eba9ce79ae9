"""One trial: sample an ArchSpec, measure its cost, stop if over budget, else train
in stages reporting to the pruner, and return the fitness.

An architecture this study already trained (same seed) is not trained again:
the earlier trial's fitness at each stage is replayed through the pruner
(`Objective.twin`), and the trial records ``replayed_from`` and
``steps_spent = 0`` (``steps_trained`` stays the steps its fitness stands for).

Budget first: latency and memory are measured on the device before any training,
so a candidate over budget costs a measurement (well under a second on CPU, and
nothing when the architecture was measured before: `nas_measurements` cache) and
no training. It is recorded infeasible through `trial.set_constraint` and ends
PRUNED with the user attribute `stopped = "over budget: ..."`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution

from evaluators.errors import TrialFailure, out_of_memory_as_trial_failure
from evaluators.hardware import dtype_name, measure_latency, measure_memory
from evaluators.tasks.base import Task
from evaluators.training import Trainer
from nas.hurdles import STAGE_METRICS_ATTR, ProgressiveHurdlePruner
from nas.tables import MeasureKey, Tables
from search_spaces import ArchSpec, SearchSpace, SpecError, build_model, count_parameters

MB = 1024 * 1024
INTERRUPTED = "interrupted"  # the `failure` of a trial cut short by Ctrl-C


@dataclass(frozen=True)
class Budget:
    """The hardware budget: inference latency of one batch (ms) and, optionally,
    peak inference memory (MiB), both measured on the search's device."""

    latency_ms: float | None
    memory_mb: float | None = None

    def __post_init__(self) -> None:
        for name, v in (("--latency-ms", self.latency_ms), ("--memory-mb", self.memory_mb)):
            if v is not None and not (v > 0 and v < float("inf")):
                raise ValueError(f"{name} must be a positive number of {'milliseconds' if 'lat' in name else 'MiB'}, got {v}")

    def violations(self, latency_ms: float, memory_mb: float | None) -> dict[str, float]:
        """Constraint values (<= 0 is feasible), in the budget's own units; a
        quantity not measured (None) gets no constraint value."""
        out = {}
        if self.latency_ms is not None:
            out["latency_ms"] = latency_ms - self.latency_ms
        if self.memory_mb is not None and memory_mb is not None:
            out["memory_mb"] = memory_mb - self.memory_mb
        return out


@dataclass(frozen=True)
class Measurement:
    latency: dict[str, Any]
    memory: dict[str, Any] | None  # None: not measured (not needed to decide)
    cached: bool
    seconds: float

    @property
    def latency_ms(self) -> float:
        return float(self.latency["median_ms"])

    @property
    def memory_mb(self) -> float | None:
        return None if self.memory is None else float(self.memory["inference_bytes"]) / MB


def device_key(device: torch.device, threads: int) -> str:
    """What the measurements were taken on, as a key: part of the measurement
    cache's key and of the study's identity (a CPU latency depends on the thread
    count it ran with). Stored studies and caches compare on this exact text, so
    its format is frozen; `evaluators.hardware.device_label` is the display name
    a measurement carries ("cpu (1 thread)"), which is free to change."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{threads}threads"


def measure_key(spec: ArchSpec, *, device: torch.device, batch_size: int, threads: int,
                dtype: torch.dtype = torch.float32) -> MeasureKey:
    """The measurement cache's key: architecture, device (and CPU threads), shapes, dtype."""
    return MeasureKey(spec.content_hash(), device_key(device, threads), batch_size, spec.max_seq_len,
                      dtype_name(dtype))


_SMALLER = "treat the candidate as over budget: give a --memory-mb budget or a smaller space"


def measure(spec: ArchSpec, *, device: torch.device, batch_size: int, tables: Tables | None,
            threads: int, dtype: torch.dtype = torch.float32, seed: int = 0, memory: bool = True,
            store: bool = True) -> Measurement:
    """Measured latency (and, if `memory`, peak memory) of `spec` on `device`, from
    the cache when this architecture was measured before on the same device,
    shapes and dtype. Latency comes first: an architecture over the latency budget
    is rejected without paying for the slower memory measurement. `store=False`
    reads the cache without writing to it (a new study's budget check: a refused
    budget leaves the database as it was)."""
    key = measure_key(spec, device=device, batch_size=batch_size, threads=threads, dtype=dtype)
    lat = mem = None
    if tables is not None:
        hit = tables.get_measurement(key)
        if hit is not None:
            lat, mem = hit
            if mem is not None or not memory:
                return Measurement(lat, mem, cached=True, seconds=0.0)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    with out_of_memory_as_trial_failure(f"building the model on {device} to measure it", _SMALLER, device):
        model = build_model(spec).to(device).eval()
    kw = dict(batch_size=batch_size, seq_len=spec.max_seq_len, vocab_size=spec.vocab_size, device=device, dtype=dtype)
    cached = lat is not None
    if lat is None:
        lat = measure_latency(model, threads=threads, **kw).to_dict()
    if memory:
        mem = measure_memory(model, **kw).to_dict()
    if tables is not None and store:
        tables.put_measurement(key, lat, mem)
    return Measurement(lat, mem, cached=cached, seconds=time.perf_counter() - t0)


def _stop_reason(trial: optuna.Trial, step: int) -> str:
    """Why the pruner stopped `trial` at `step`: the hurdle pruner says (below its
    hurdle, or waiting for it under progressive hurdles); any other pruner is named."""
    pruner = trial.study.pruner
    if isinstance(pruner, ProgressiveHurdlePruner):
        # The decision should_prune just took, kept by the pruner: no second read of the study.
        return pruner.stopped_because(trial.study, trial.number, step) or pruner.stop_reason(
            trial.study, trial.study._storage.get_trial(trial._trial_id))
    # Optuna's pruners (median, Hyperband) keep no reason: name the pruner, not a hurdle.
    return f"stopped by the {type(pruner).__name__.removesuffix('Pruner').lower()} pruner at step {step}"


def _set_constraints(trial: optuna.Trial, violations: dict[str, float]) -> None:
    """`trial.set_constraint` for each budget, except those the trial already holds
    with the same value: a trial retried after a killed worker starts with the
    system attributes (constraints included) of the trial it retries, and the same
    architecture's cached measurement gives the same value again (Optuna would
    warn and keep the old one)."""
    held = trial.constraints
    for key, value in violations.items():
        if key in held and held[key] == float(value):
            continue
        trial.set_constraint(key, value)


class Objective:
    """The function Optuna calls once per trial (see module docstring)."""

    def __init__(
        self,
        *,
        study_name: str,
        task: Task,
        space: SearchSpace,
        budget: Budget,
        device: torch.device,
        stages: tuple[int, ...],
        tables: Tables | None,
        checkpoint_dir: Path | None,
        seed: int = 0,
        measure_batch: int | None = None,
        threads: int | None = None,
        train_options: dict[str, Any] | None = None,
        search_info: dict[str, Any] | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.study_name = study_name
        self.task = task
        self.space = space
        self.budget = budget
        self.device = device
        self.stages = tuple(stages)
        self.tables = tables
        self.checkpoint_dir = checkpoint_dir
        self.seed = seed
        self.measure_batch = measure_batch or task.batch_size
        self.threads = threads or torch.get_num_threads()
        self.dtype = dtype  # what latency and memory are measured in
        self.train_options = dict(train_options or {})
        # The sampler and pruner this worker runs (a per-worker choice, not part of the
        # study's identity): kept on each trial so `nas show` knows which hurdles applied.
        self.search_info = dict(search_info or {})

    def sample(self, trial: optuna.Trial) -> ArchSpec:
        return self.space.sample(lambda name, choices: trial.suggest_categorical(name, list(choices)), self.task.shape)

    def measure(self, spec: ArchSpec, *, memory: bool) -> Measurement:
        """`measure` on this search's device, batch, threads, dtype and cache."""
        return measure(spec, device=self.device, batch_size=self.measure_batch, tables=self.tables,
                       threads=self.threads, dtype=self.dtype, seed=self.seed, memory=memory)

    def within_budget(self, suggest: Callable[[str, BaseDistribution], Any]) -> bool:
        """Whether the architecture whose choices `suggest(name, distribution)`
        gives is valid and, measured, within the budget: the child check of
        `nas.evolution.EvolutionSampler`, so evolution proposes candidates that
        fit instead of recording them infeasible. The measurement goes into the
        cache, so the trial that follows reads it from there; an architecture
        the space cannot build is refused (the trial would fail), and so is one
        whose measurement fails on the device (out of memory: the trial would
        fail too). The check runs while Optuna starts the trial, outside the
        failures `study.optimize` catches, so a failure here would end the search."""
        try:
            spec = self.space.sample(lambda name, choices: suggest(name, CategoricalDistribution(list(choices))),
                                     self.task.shape)
            m = self.measure(spec, memory=False)
            if self.budget.latency_ms is not None and m.latency_ms > self.budget.latency_ms:
                return False
            if self.budget.memory_mb is not None:
                return self.measure(spec, memory=True).memory_mb <= self.budget.memory_mb
            return True
        except (SpecError, TrialFailure):
            return False

    def __call__(self, trial: optuna.Trial) -> float:
        try:
            spec = self.sample(trial)
        except SpecError as e:
            trial.set_user_attr("failure", f"invalid architecture: {e}")
            raise
        # A retry starts from the user attributes of the trial it repeats (Optuna copies
        # them): it has spent nothing yet.
        trial.set_user_attr("steps_spent", 0)
        trial.set_user_attr("arch", spec.to_json())
        trial.set_user_attr("arch_hash", spec.content_hash())
        trial.set_user_attr("attention_mix", ",".join(layer.attention for layer in spec.layers))
        trial.set_user_attr("device", device_key(self.device, self.threads))
        trial.set_user_attr("seed", self.seed)
        if self.search_info:
            trial.set_user_attr("search", self.search_info)
        try:
            return self._cost_then_train(trial, spec)
        except TrialFailure as e:
            trial.set_user_attr("failure", e.reason)  # whether measuring or training failed
            raise
        except KeyboardInterrupt:
            # Recorded while the trial is still RUNNING (Optuna fails it next), so the
            # run loop can tell it was cut short and queue a warm start or retry again.
            trial.set_user_attr("failure", INTERRUPTED)
            trial.set_user_attr("failure_message", "interrupted (Ctrl-C) while the trial was measured or trained")
            raise

    def _cost_then_train(self, trial: optuna.Trial, spec: ArchSpec) -> float:
        # 1. Cost, measured before any training: latency, then memory.
        m = self.measure(spec, memory=False)
        trial.set_user_attr("latency_ms", m.latency_ms)
        trial.set_user_attr("latency_cv", float(m.latency.get("cv", float("nan"))))
        trial.set_user_attr("measure_cached", m.cached)
        seconds = m.seconds
        if self.budget.latency_ms is not None and m.latency_ms > self.budget.latency_ms:
            self._stop_over_budget(trial, m, f"latency {m.latency_ms:.3g} ms > {self.budget.latency_ms:g} ms")
        m = self.measure(spec, memory=True)
        seconds += m.seconds
        trial.set_user_attr("memory_mb", m.memory_mb)
        trial.set_user_attr("train_memory_mb", float(m.memory["train_step_bytes"]) / MB)
        trial.set_user_attr("measure_seconds", seconds)
        if self.budget.memory_mb is not None and m.memory_mb > self.budget.memory_mb:
            self._stop_over_budget(trial, m, f"memory {m.memory_mb:.3g} MiB > {self.budget.memory_mb:g} MiB")
        _set_constraints(trial, self.budget.violations(m.latency_ms, m.memory_mb))

        # 2. The same architecture trained before in this study, with the same seed
        #    (hence the same weights and fitness at every stage): replay its reports.
        replayed = self._replay(trial, spec)
        if self.stages[-1] in replayed:
            return replayed[self.stages[-1]]

        # 3. Train in stages; each stage's fitness goes to the pruner (the hurdles).
        torch.manual_seed(self.seed)
        with out_of_memory_as_trial_failure(f"building the model on {self.device} to train it", _SMALLER, self.device):
            model = build_model(spec).to(self.device)
            trainer = Trainer(model, self.task, max_steps=self.stages[-1], device=self.device, seed=self.seed,
                              **self.train_options)
        trial.set_user_attr("params", count_parameters(model))
        t0 = time.perf_counter()
        reached: dict[int, float] = {}
        # Every metric at every stage (JSON keys are strings: {"50": {"loss": ...}}), written
        # before the report: the hurdles on the loss read it from there (nas.hurdles), and
        # `benchmarks/hurdle_replay.py --signal loss` replays it.
        stage_metrics: dict[str, dict[str, float]] = {}

        def report(step: int, result) -> None:
            reached[step] = float(result.fitness)
            metrics = {k: float(v) for k, v in result.metrics.items()}
            stage_metrics[str(step)] = metrics
            trial.set_user_attr("steps_trained", step)
            trial.set_user_attr("steps_spent", step)
            trial.set_user_attr("train_seconds", time.perf_counter() - t0)
            trial.set_user_attr("metrics", metrics)
            trial.set_user_attr(STAGE_METRICS_ATTR, stage_metrics)
            if step in replayed:
                return  # reported, and judged by the pruner, in the replay
            trial.report(result.fitness, step)
            if step < self.stages[-1] and trial.should_prune():
                why = _stop_reason(trial, step)
                trial.set_user_attr("stopped", why)
                raise optuna.TrialPruned(f"fitness {result.fitness:.4g}: {why}")

        try:
            trainer.train(self.stages[-1], report_at=self.stages, report=report)
        except TrialFailure:
            trial.set_user_attr("steps_trained", trainer.steps_done)
            trial.set_user_attr("steps_spent", trainer.steps_done)
            raise
        fitness = reached[self.stages[-1]]

        # 4. It cleared every hurdle: keep its weights so the winner exports trained.
        if self.checkpoint_dir is not None and self.tables is not None:
            self.save_checkpoint(trial, spec, model)
        return fitness

    def twin(self, trial: optuna.Trial, spec: ArchSpec) -> optuna.trial.FrozenTrial | None:
        """A finished trial of this study that trained `spec` with this seed and
        reported at the most stages (None if there is none).

        Training is seeded (`torch.manual_seed(seed)` before the model is built,
        the Trainer's own seed for the data order), and a study's task, stages and
        device are fixed by its identity, so such a trial's fitness at each stage
        is what training this one would give (bit for bit on CPU with the same
        thread count; on GPU up to non-deterministic kernels). Evolution proposes
        an architecture it already evaluated for about one trial in six.
        """
        wanted = (spec.content_hash(), self.seed, device_key(self.device, self.threads))
        best = None
        for t in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                                optuna.trial.TrialState.PRUNED)):
            a = t.user_attrs
            if (t.number != trial.number and (a.get("arch_hash"), a.get("seed"), a.get("device")) == wanted
                    and t.intermediate_values and "failure" not in a
                    and (best is None or len(t.intermediate_values) > len(best.intermediate_values))):
                best = t
        return best

    def _replay(self, trial: optuna.Trial, spec: ArchSpec) -> dict[int, float]:
        """Report the twin's fitness at each stage it reached, with the pruner's
        decision after each (the hurdles in force now, not those the twin met).
        Returns the replayed {step: fitness}, empty when there is no twin. If the
        twin stopped before this trial must go on, the caller trains it, from
        scratch (the twin's weights at its last stage are not kept)."""
        twin = self.twin(trial, spec)
        if twin is None:
            return {}
        trial.set_user_attr("replayed_from", twin.number)
        trial.set_user_attr("steps_spent", 0)
        if "params" in twin.user_attrs:
            trial.set_user_attr("params", twin.user_attrs["params"])
        twin_metrics = twin.user_attrs.get(STAGE_METRICS_ATTR) or {}
        if not twin_metrics and "metrics" in twin.user_attrs:  # a twin recorded before stage_metrics existed
            trial.set_user_attr("metrics", twin.user_attrs["metrics"])
        replayed: dict[int, float] = {}
        for step in self.stages:
            if step not in twin.intermediate_values:
                break
            value = float(twin.intermediate_values[step])
            replayed[step] = value
            if str(step) in twin_metrics:  # the metrics of the stages this trial reached, as if trained
                trial.set_user_attr("metrics", twin_metrics[str(step)])
                trial.set_user_attr(STAGE_METRICS_ATTR, {k: v for k, v in twin_metrics.items() if int(k) <= step})
            trial.report(value, step)
            trial.set_user_attr("steps_trained", step)
            if step < self.stages[-1] and trial.should_prune():
                why = _stop_reason(trial, step)
                trial.set_user_attr("stopped", f"{why} (replayed from trial {twin.number})")
                raise optuna.TrialPruned(f"fitness {value:.4g}: {why}")
        if self.stages[-1] in replayed and self.tables is not None:
            row = self.tables.get_checkpoint(self.study_name, twin.number)
            if row is not None:  # the same weights: point at the twin's file
                self.tables.put_checkpoint(self.study_name, trial.number, row["path"], row["arch_hash"], row["step"])
                trial.set_user_attr("checkpoint", row["path"])
        return replayed

    def _stop_over_budget(self, trial: optuna.Trial, m: Measurement, why: str) -> None:
        """Record the candidate infeasible and end it untrained (PRUNED)."""
        _set_constraints(trial, self.budget.violations(m.latency_ms, m.memory_mb))
        trial.set_user_attr("measure_seconds", m.seconds)
        trial.set_user_attr("stopped", f"over budget: {why}")
        trial.set_user_attr("steps_trained", 0)
        trial.set_user_attr("steps_spent", 0)
        raise optuna.TrialPruned(f"over budget: {why}")

    def save_checkpoint(self, trial: optuna.Trial, spec: ArchSpec, model: torch.nn.Module) -> None:
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = self.checkpoint_dir / f"trial_{trial.number}.pt"
        tmp = path.with_suffix(".pt.tmp")
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save(state, tmp)
        tmp.replace(path)  # atomic: a killed worker never leaves a half-written checkpoint
        self.tables.put_checkpoint(self.study_name, trial.number, str(path.resolve()), spec.content_hash(), self.stages[-1])
        trial.set_user_attr("checkpoint", str(path.resolve()))
