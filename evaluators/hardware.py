"""Measured cost of a candidate on the chosen device: latency and peak memory.

Everything here is a *measurement* taken by running the model on the device; no
formula is ever returned as a latency or a memory figure. (`estimate_flops` is
the one analytic number, named as an estimate and kept apart from the results.)

Latency (`measure_latency`): inference forward `model(tokens)` under
`torch.inference_mode()` on fixed random tokens (seeded), after warm-up passes,
repeated until a floor of passes and a minimum measured time are reached and
the spread is at most `target_cv`, bounded by a ceiling of passes and a
wall-clock ceiling on the whole call. Each sample is one forward pass; the
result is their median and spread. The spread rule is there because a shared
machine changes speed in episodes (on the 2-vCPU VM this was built on, a fixed
256x256 matmul ran ~15% slower for 0.1-0.2 s about once a second at one time;
`benchmarks/machine_drift.py` shows it for yours): a
measurement that straddles one has a wide spread, and more passes move its
median back to the usual speed (Kendall tau between two passes over 20
architectures, `benchmarks/latency.py`: 0.863-0.958 without the rule, below 0.9
in 4 of 7 runs; 0.895-0.979 with it, below 0.9 in 1 of 12):

- CUDA: a pair of CUDA events around the pass, the queue drained before each
  pass and the end event synchronised after it, so a sample is the GPU-timeline
  time of one batch from an idle queue (kernel launch gaps included). With
  ``dtype=torch.bfloat16`` (or float16) the pass runs under `torch.autocast`.
- CPU: a fixed intra-op thread count (`torch.set_num_threads`, restored
  afterwards; default 1, see `DEFAULT_CPU_THREADS`) and the garbage collector
  paused. With one thread every kernel runs in the calling thread, and a sample
  is that thread's CPU time over the pass (`time.thread_time`, clock
  ``"thread-cpu"``): on an idle core the same as the wall-clock time, but time
  the OS gave the core to other processes is not counted, so the figure is a
  property of the model rather than of the machine's load at that moment
  (measured on a shared 2-core machine at load ~9: wall-clock passes ran ~2x
  their CPU time, with twice the spread). The wall-clock median is kept beside it
  (`wall_median_ms`). With several threads a sample is wall-clock time
  (`time.perf_counter`, clock ``"wall"``), the only honest figure when work is
  spread over threads. `torch.set_num_threads` is process-global: do not measure
  from two threads of one process at once.

Memory (`measure_memory`): peak bytes allocated by torch above the baseline
(weights, inputs and anything else alive before the pass are excluded):

- CUDA: `torch.cuda.reset_peak_memory_stats` then `max_memory_allocated()`
  minus `memory_allocated()` taken just before the pass.
- CPU: the pass runs under the autograd profiler with ``profile_memory=True``
  (kineto); the raw per-allocation events of torch's CPU allocator (kineto
  ``[memory]`` instant events, +bytes on allocation, -bytes on free, in
  chronological order) are summed and the peak of the running sum is the
  answer. Memory outside torch's allocator (oneDNN scratch space, the Python
  heap) is not counted. The lower-level `torch.autograd.profiler.profile` is
  used rather than `torch.profiler.profile`, whose first start in a process
  imports `torch._inductor` (1.5-5 s, once) for a CUDA-graphs setting; so
  there is no one-time profiler cost to pay (first use ~1 ms).

Two figures per model: ``inference_bytes`` (one forward under inference mode)
and ``train_step_bytes`` (one forward + backward of ``logits.float().sum()`` in
train mode, with parameter gradients allocated during the step; no optimizer
state, which would add a kind-independent multiple of the parameter count).

Cost (the search measures every new architecture): with the defaults a latency
measurement takes at most ``max_time_s`` = 0.5 s of wall-clock time (warm-up
included) unless the model's passes are so slow that `MIN_SAMPLES` of them take
longer; a memory measurement costs three forward passes and one backward.

All results are frozen dataclasses with `to_dict()` (plain JSON-able values) so
the search can cache them keyed by (arch hash, device, shape, dtype).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from evaluators.errors import out_of_memory_as_trial_failure
from evaluators.tasks.base import native_bf16
from search_spaces.model import count_parameters

__all__ = [
    "LatencyResult",
    "MemoryResult",
    "resolve_device",
    "device_label",
    "default_threads",
    "available_cores",
    "DEFAULT_CPU_THREADS",
    "CPU_CLOCKS",
    "MIN_SAMPLES",
    "measure_latency",
    "measure_memory",
    "cpu_peak_allocated_bytes",
    "cuda_peak_allocated_bytes",
    "estimate_flops",
    "count_parameters",
]

#: How `LatencyResult.cv` is computed: a robust coefficient of variation,
#: the interquartile range scaled to a normal standard deviation
#: ((p75 - p25) / 1.349) over the median. Unlike std/mean it is not inflated by
#: the odd pass that another process interrupted.
CV_METHOD = "robust: (p75 - p25) / 1.349 / median"

#: The fewest timed passes a latency measurement takes, whatever the time limits.
MIN_SAMPLES = 5

_SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# ---- results ------------------------------------------------------------------
@dataclass(frozen=True)
class LatencyResult:
    """Measured inference latency of one batch, in milliseconds.

    `cv` is the robust coefficient of variation described by `CV_METHOD`;
    `samples` holds every timed pass in the order taken (ms), as read on
    `clock` (``"thread-cpu"``, ``"wall"`` or ``"cuda-events"``, see the module
    docstring); `wall_median_ms` is the median wall-clock time of the same passes.
    `device` names the hardware as measured: ``"cpu (1 thread)"`` or the CUDA
    device name.
    """

    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    cv: float
    samples: list[float]
    device: str
    batch_size: int
    seq_len: int
    dtype: str
    padding: bool = False
    warmup: int = 0
    cv_method: str = CV_METHOD
    clock: str = "wall"
    wall_median_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LatencyResult":
        return cls(**{**data, "samples": list(data["samples"])})


@dataclass(frozen=True)
class MemoryResult:
    """Measured peak memory above the baseline, in bytes (see module docstring).

    `method` says how it was measured on this device.
    """

    inference_bytes: int
    train_step_bytes: int
    method: str
    device: str
    batch_size: int
    seq_len: int
    dtype: str
    param_bytes: int = 0  # the weights themselves (resident before, so excluded above)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MemoryResult":
        return cls(**data)


# ---- devices ------------------------------------------------------------------
def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> the first CUDA device if one is available, else the CPU.

    ``"cpu"``, ``"cuda"``, ``"cuda:1"`` are taken as given; asking for CUDA on a
    machine without a usable GPU raises `ValueError` naming the fix.
    """
    if isinstance(name, torch.device):
        name = str(name)
    name = name.strip().lower()
    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {name!r} requested but no CUDA device is available to torch "
                f"(torch {torch.__version__}); use --device cpu (or auto), or install a CUDA build of torch"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} CUDA "
                f"device(s); use cuda:0 .. cuda:{torch.cuda.device_count() - 1}"
            )
    elif device.type != "cpu":
        raise ValueError(f"device type {device.type!r} is not supported; use 'auto', 'cpu' or 'cuda[:N]'")
    return device


def available_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


#: CPU intra-op threads used when a measurement is given none. One thread is the
#: repeatable choice: with several, a pass waits at every parallel region for its
#: slowest thread, so one core taken by another process can multiply a pass's
#: time (measured on a shared 2-core machine: median CV 58% and Kendall tau 0.40
#: between two passes with 2 threads, against 3.5% and 0.82 with 1 thread). It is
#: also the same figure on every machine. Pass ``threads=N`` to measure N-thread
#: inference on a machine you have to yourself.
DEFAULT_CPU_THREADS = 1


def default_threads() -> int:
    """The CPU thread count used when none is given (`DEFAULT_CPU_THREADS`)."""
    return DEFAULT_CPU_THREADS


def _resolve_threads(threads: int | None) -> int:
    """The CPU intra-op thread count a measurement runs with: `threads`, checked,
    or `default_threads()` when None."""
    n = threads if threads is not None else default_threads()
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads must be an integer >= 1, got {n!r}")
    return n


def device_label(device: torch.device | str, threads: int | None = None) -> str:
    """How a measurement names its hardware: ``"cpu (2 threads)"`` or the CUDA device name."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    n = threads if threads is not None else default_threads()
    return f"cpu ({n} thread{'s' if n != 1 else ''})"


# ---- helpers ------------------------------------------------------------------
DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype a measurement runs in: "float32", "bfloat16" or "float16" as given
    (reduced precision through `torch.autocast`, as training runs on CUDA); "auto"
    is bfloat16 on a CUDA device that supports it (what training uses there, and how
    such a model is usually served) and float32 elsewhere."""
    if name == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    if name not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(DTYPE_NAMES)}")
    return getattr(torch, name)


def _check_dtype(dtype: torch.dtype) -> None:
    if dtype not in _SUPPORTED_DTYPES:
        raise ValueError(f"dtype {dtype} is not supported; use torch.float32, torch.bfloat16 or torch.float16")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` for reduced precision; nothing for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _inputs(batch_size: int, seq_len: int, vocab_size: int, device: torch.device,
            padding: bool, seed: int = 0) -> tuple[Tensor, Tensor | None]:
    """Fixed random tokens (seeded on the CPU, so the same on every device) and,
    with `padding`, a mask giving each row a random real length in [seq_len/2, seq_len]."""
    for what, v in (("batch_size", batch_size), ("seq_len", seq_len), ("vocab_size", vocab_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{what} must be a positive integer, got {v!r}")
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab_size, (batch_size, seq_len), generator=g)
    mask = None
    if padding:
        lengths = torch.randint(max(1, seq_len // 2), seq_len + 1, (batch_size,), generator=g)
        mask = torch.arange(seq_len)[None, :] < lengths[:, None]
    return tokens.to(device), (mask.to(device) if mask is not None else None)


def _oom_as_trial_failure(what: str, device: torch.device, batch_size: int,
                          seq_len: int) -> contextlib.AbstractContextManager:
    """Turn running out of memory into `DeviceOutOfMemory` (a `TrialFailure`)."""
    return out_of_memory_as_trial_failure(
        f"{what} on {device_label(device)} at batch {batch_size}, length {seq_len}",
        "lower the batch size or the sequence length, or treat the candidate as over budget", device)


@contextlib.contextmanager
def _cpu_threads(threads: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@contextlib.contextmanager
def _eval_mode(model: nn.Module, training: bool = False) -> Iterator[None]:
    was = model.training
    model.train(training)
    try:
        yield
    finally:
        model.train(was)


def _quantile(sorted_xs: list[float], q: float) -> float:
    """Linear-interpolated quantile of an already sorted list."""
    if len(sorted_xs) == 1:
        return sorted_xs[0]
    pos = q * (len(sorted_xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def _robust_cv(sorted_xs: list[float]) -> float:
    """`CV_METHOD` of already sorted samples."""
    median = statistics.median(sorted_xs)
    iqr = _quantile(sorted_xs, 0.75) - _quantile(sorted_xs, 0.25)
    return iqr / 1.349 / median if median > 0 else 0.0


def _model_to(model: nn.Module, device: torch.device) -> None:
    p = next(model.parameters(), None)
    if p is not None and p.device != device:
        model.to(device)


# ---- latency ------------------------------------------------------------------
#: Clocks `measure_latency` can read a CPU pass on; ``"auto"`` picks
#: ``"thread-cpu"`` with one intra-op thread and ``"wall"`` otherwise.
CPU_CLOCKS = ("auto", "thread-cpu", "wall")


def measure_latency(
    model: nn.Module,
    *,
    batch_size: int,
    seq_len: int,
    vocab_size: int,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
    warmup: int = 2,
    repeats: int = 10,
    min_time_s: float = 0.1,
    max_repeats: int = 500,
    max_time_s: float = 0.5,
    target_cv: float | None = 0.03,
    threads: int | None = None,
    padding: bool = False,
    clock: str = "auto",
) -> LatencyResult:
    """Measure the inference latency of one batch ``model(tokens)`` on `device`.

    `warmup` untimed passes (cut short once they took a quarter of `max_time_s`,
    but at least one when `warmup` > 0), then timed passes until at least
    `repeats` were taken *and* their samples add up to at least `min_time_s`
    seconds, and, with `target_cv`, until their robust CV (`CV_METHOD`) is at
    most `target_cv`; never more than `max_repeats` passes, and once the whole call has
    run `max_time_s` seconds of wall-clock time (warm-up included) it stops as
    soon as it has `MIN_SAMPLES` (5) passes, so a slow model (or a loaded
    machine) cannot make a measurement take long. ``max_repeats < repeats`` is
    an error rather than silently lowering the floor.

    The model is moved to `device` in place if it is not there yet, put in eval
    mode for the measurement and given back in the mode it had. On the CPU the
    pass runs with `threads` intra-op threads (default: `default_threads()`),
    restored afterwards, and is timed on `clock` (``"auto"``: the calling
    thread's CPU time with one thread, wall-clock time with more; see the module
    docstring). With ``padding=True`` the model also gets a padding mask (each
    row a random real length in [seq_len/2, seq_len]).
    """
    device = resolve_device(device)
    _check_dtype(dtype)
    if repeats < 1 or warmup < 0 or max_repeats < repeats:
        raise ValueError(f"need repeats >= 1, warmup >= 0 and max_repeats >= repeats; got {repeats}, {warmup}, {max_repeats}")
    if not (min_time_s >= 0 and max_time_s >= 0):
        raise ValueError(f"min_time_s and max_time_s must be >= 0; got {min_time_s}, {max_time_s}")
    if clock not in CPU_CLOCKS:
        raise ValueError(f"clock must be one of {CPU_CLOCKS}, got {clock!r}")
    if target_cv is not None and not target_cv > 0:
        raise ValueError(f"target_cv must be > 0 or None, got {target_cv!r}")
    _model_to(model, device)
    tokens, mask = _inputs(batch_size, seq_len, vocab_size, device, padding)
    args = (tokens,) if mask is None else (tokens, mask)

    if device.type == "cuda":
        label = device_label(device)
        clock_name = "cuda-events"
        threads_ctx: contextlib.AbstractContextManager = contextlib.nullcontext()
    else:
        n_threads = _resolve_threads(threads)
        if clock == "thread-cpu" and n_threads != 1:
            raise ValueError(f"clock 'thread-cpu' times only the calling thread: it needs threads=1, got {n_threads}")
        label = device_label(device, n_threads)
        clock_name = clock if clock != "auto" else ("thread-cpu" if n_threads == 1 else "wall")
        threads_ctx = _cpu_threads(n_threads)

    wall = time.perf_counter
    t_start = wall()

    def _more(n: int, measured: float) -> bool:
        if n >= max_repeats or (n >= MIN_SAMPLES and wall() - t_start >= max_time_s):
            return False
        if n < repeats or measured < min_time_s:
            return True
        # A spread above target_cv means the machine changed speed during the
        # measurement; more passes let the median settle on the usual speed.
        return target_cv is not None and _robust_cv(sorted(samples)) > target_cv

    samples: list[float] = []  # ms, on clock_name
    walls: list[float] = []  # ms, wall-clock time of the same passes
    with _oom_as_trial_failure("latency measurement", device, batch_size, seq_len), \
            threads_ctx, _eval_mode(model), torch.inference_mode(), _autocast(device, dtype), _gc_paused():
        sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
        with (torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()):
            for _ in range(warmup):  # at most a quarter of max_time_s, at least one pass
                model(*args)
                sync()
                if wall() - t_start > max_time_s / 4:
                    break
            measured = 0.0
            if device.type == "cuda":
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                while _more(len(samples), measured):
                    sync()
                    w0 = wall()
                    start.record()
                    model(*args)
                    end.record()
                    end.synchronize()
                    walls.append((wall() - w0) * 1e3)
                    ms = start.elapsed_time(end)
                    samples.append(ms)
                    measured += ms / 1e3
            elif clock_name == "thread-cpu":
                cpu = time.thread_time
                while _more(len(samples), measured):
                    w0, c0 = wall(), cpu()
                    model(*args)
                    c1, w1 = cpu(), wall()
                    samples.append((c1 - c0) * 1e3)
                    walls.append((w1 - w0) * 1e3)
                    measured += c1 - c0
            else:
                while _more(len(samples), measured):
                    w0 = wall()
                    model(*args)
                    dt = wall() - w0
                    samples.append(dt * 1e3)
                    walls.append(dt * 1e3)
                    measured += dt

    xs = sorted(samples)
    median = statistics.median(xs)
    cv = _robust_cv(xs)
    return LatencyResult(
        median_ms=median,
        p10_ms=_quantile(xs, 0.10),
        p90_ms=_quantile(xs, 0.90),
        mean_ms=statistics.fmean(xs),
        cv=cv,
        samples=samples,
        device=label,
        batch_size=batch_size,
        seq_len=seq_len,
        dtype=dtype_name(dtype),
        padding=padding,
        warmup=warmup,
        clock=clock_name,
        wall_median_ms=statistics.median(walls),
    )


# ---- memory -------------------------------------------------------------------
@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for the block (C++ log lines)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real fd 2 (embedded interpreters)
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def cpu_peak_allocated_bytes(fn: Callable[[], Any]) -> int:
    """Run `fn()` under the profiler and return the peak, over the call, of the
    bytes allocated by torch's CPU allocator above what was allocated before the
    call (the running sum of the allocator's alloc/free events).

    Uses the kineto results' ``[memory]`` instant events: one per allocation
    (+bytes) or free (-bytes), in the order they happened. (`prof.events()` folds
    allocations into their operators and keeps only unattributed frees, so it
    cannot give the running peak.) The profiler is
    `torch.autograd.profiler.profile` (the layer under `torch.profiler.profile`,
    same kineto config) with lazy post-processing, which is never run: the raw
    events are read directly, so a call costs ~1 ms beyond `fn` itself.
    """
    from torch.autograd.profiler import profile

    prof = profile(use_cpu=True, use_kineto=True, profile_memory=True)
    with _native_stderr_silenced():  # kineto logs "profiler_start"/"_stop" lines to fd 2
        prof.__enter__()
    try:
        fn()
    finally:
        with _native_stderr_silenced():
            prof.__exit__(None, None, None)
    try:
        events = prof.kineto_results.events()
    except AttributeError as e:  # a torch whose profiler changed shape
        raise RuntimeError(
            f"torch {torch.__version__}: the profiler exposes no kineto events ({e}); "
            "CPU memory cannot be measured with this torch version"
        ) from None
    mem = [
        (ev.start_ns(), ev.nbytes())
        for ev in events
        if ev.name() == "[memory]" and ev.device_type() == torch.autograd.DeviceType.CPU
    ]
    mem.sort(key=lambda t: t[0])  # stable: equal stamps keep their recorded order
    running = peak = 0
    for _, nbytes in mem:
        running += nbytes
        peak = max(peak, running)
    return peak


def cuda_peak_allocated_bytes(fn: Callable[[], Any], device: torch.device | str) -> int:
    """Run `fn()` and return CUDA's peak allocated bytes during the call above
    what was allocated just before it (`max_memory_allocated` minus baseline)."""
    device = torch.device(device)
    torch.cuda.synchronize(device)
    baseline = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return max(0, torch.cuda.max_memory_allocated(device) - baseline)


def measure_memory(
    model: nn.Module,
    *,
    batch_size: int,
    seq_len: int,
    vocab_size: int,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
    padding: bool = False,
    threads: int | None = None,
    warmup: bool = True,
) -> MemoryResult:
    """Measure the peak memory of one inference pass and of one training step.

    See the module docstring for what is counted on each device. The model is
    moved to `device` in place if needed; its mode and any existing parameter
    gradients are restored afterwards. One unmeasured warm-up forward runs
    first so lazy one-off allocations are not counted; ``warmup=False`` skips it
    (a fifth of the cost) when the model has just run at these shapes, e.g.
    right after `measure_latency` (for the 20 sampled default-space
    architectures of benchmarks/latency.py the first pass's figure equalled the
    later ones'). On CUDA a warm-up training step runs too; not on the CPU, where
    a first and a second training step measured the same bytes (4 sampled
    default-space architectures). On the CPU the
    passes run with `threads` intra-op threads (default: `default_threads()`,
    restored afterwards): the same setting as `measure_latency`, so a loaded
    machine slows the measurement least. (The bytes counted were the same, to
    within 0.2%, with 1 and 2 threads for sampled architectures of the default space.)
    """
    device = resolve_device(device)
    _check_dtype(dtype)
    if device.type == "cpu":
        n_threads = _resolve_threads(threads)
        threads_ctx: contextlib.AbstractContextManager = _cpu_threads(n_threads)
    else:
        threads_ctx = contextlib.nullcontext()
    _model_to(model, device)
    tokens, mask = _inputs(batch_size, seq_len, vocab_size, device, padding)
    args = (tokens,) if mask is None else (tokens, mask)
    params = list(model.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in params)

    def infer() -> None:
        with torch.inference_mode(), _autocast(device, dtype):
            model(*args)

    def train_step() -> None:
        with _autocast(device, dtype):
            out = model(*args)
        out.float().sum().backward()
        del out

    if device.type == "cuda":
        label = device_label(device)
        peak: Callable[[Callable[[], Any]], int] = lambda f: cuda_peak_allocated_bytes(f, device)  # noqa: E731
        method = "cuda allocator: max_memory_allocated() - memory_allocated() before the pass"
    else:
        label = "cpu"  # allocation sizes do not depend on the thread count
        peak = cpu_peak_allocated_bytes
        method = ("cpu profiler: peak running sum of torch CPU allocator alloc/free events "
                  "above the pre-pass baseline (weights and inputs excluded)")

    saved_grads = [p.grad for p in params]
    try:
        with threads_ctx:
            with _oom_as_trial_failure("memory measurement", device, batch_size, seq_len), _eval_mode(model):
                if warmup:
                    infer()  # unmeasured
                inference_bytes = peak(infer)
            with _oom_as_trial_failure("memory measurement", device, batch_size, seq_len), \
                    _eval_mode(model, training=True):
                for p in params:
                    p.grad = None
                if warmup and device.type == "cuda":
                    # Unmeasured: the first backward runs on autograd's own device thread, whose
                    # cuBLAS handle then allocates its workspace (MiBs that stay allocated) inside
                    # the measured window, and every later architecture would be measured without it.
                    train_step()
                    for p in params:
                        p.grad = None
                train_bytes = peak(train_step)
    finally:
        for p, g in zip(params, saved_grads):
            p.grad = g
    return MemoryResult(
        inference_bytes=int(inference_bytes),
        train_step_bytes=int(train_bytes),
        method=method,
        device=label,
        batch_size=batch_size,
        seq_len=seq_len,
        dtype=dtype_name(dtype),
        param_bytes=int(param_bytes),
    )


# ---- an estimate, not a measurement ---------------------------------------------
def estimate_flops(model: nn.Module, *, batch_size: int, seq_len: int, vocab_size: int) -> int:
    """An ESTIMATE of the forward FLOPs of one batch, counted analytically by
    `torch.utils.flop_counter.FlopCounterMode` over the operators the forward
    runs on the CPU (matmuls and SDPA; elementwise work is not counted). Never
    use it in place of a measured latency. The first call in a process pays a
    one-time import inside `FlopCounterMode` (torch._dynamo; ~1.5-4 s)."""
    from torch.utils.flop_counter import FlopCounterMode

    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    tokens, _ = _inputs(batch_size, seq_len, vocab_size, device, padding=False)
    counter = FlopCounterMode(display=False)
    with _eval_mode(model), torch.inference_mode(), counter:
        model(tokens)
    return int(counter.get_total_flops())
