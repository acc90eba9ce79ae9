"""Latency and memory are measured on the device: sanity checks of the measurements
themselves (a known allocation pattern, ordering of clearly different models,
state restored after the call), and the CUDA paths where a GPU is present."""

from __future__ import annotations

import json
import sys
import time

import pytest
import torch

from evaluators.errors import DeviceOutOfMemory
from evaluators.hardware import (
    LatencyResult,
    MemoryResult,
    cpu_peak_allocated_bytes,
    device_label,
    estimate_flops,
    measure_latency,
    measure_memory,
    resolve_device,
)
from search_spaces import ArchSpec, LayerSpec, build_model

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(
    not HAS_CUDA, reason="needs a CUDA device: torch.cuda.is_available() is False on this machine"
)
MB = 1 << 20


def full_model(d_model: int, depth: int, seq_len: int = 64, heads: int = 1, vocab: int = 64,
               head: str = "token", causal: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    spec = ArchSpec(
        vocab_size=vocab, max_seq_len=seq_len, d_model=d_model, causal=causal, head=head,
        n_classes=0 if head == "token" else 10,
        layers=tuple(LayerSpec("full", heads=heads, ffn=4 * d_model) for _ in range(depth)),
    )
    return build_model(spec)


# ---- devices --------------------------------------------------------------------
def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if HAS_CUDA else "cpu")
    with pytest.raises(ValueError, match="unknown device|not supported"):
        resolve_device("tpu-ish")


@pytest.mark.skipif(HAS_CUDA, reason="checks the error raised when no GPU is present")
def test_resolve_cuda_without_gpu_says_the_fix() -> None:
    with pytest.raises(ValueError, match="no CUDA device.*use --device cpu"):
        resolve_device("cuda")


# ---- latency (CPU) ----------------------------------------------------------------
def test_latency_positive_and_serialisable() -> None:
    model = full_model(16, 1)
    r = measure_latency(model, batch_size=4, seq_len=32, vocab_size=64, device="cpu",
                        warmup=2, repeats=7, min_time_s=0.0, threads=1)
    assert isinstance(r, LatencyResult)
    assert r.median_ms > 0 and r.p10_ms <= r.median_ms <= r.p90_ms
    assert len(r.samples) >= 7 and all(s > 0 for s in r.samples)
    assert r.cv >= 0 and r.device == "cpu (1 thread)" and r.dtype == "float32"
    assert (r.batch_size, r.seq_len) == (4, 32)
    back = LatencyResult.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back == r


def test_latency_adaptive_repeats_fill_min_time_and_respect_ceiling() -> None:
    model = full_model(16, 1)
    r = measure_latency(model, batch_size=2, seq_len=16, vocab_size=64, device="cpu",
                        warmup=1, repeats=3, min_time_s=0.05, max_repeats=10_000, threads=1)
    assert sum(r.samples) >= 50.0 * 0.999  # ms: ran until min_time_s was filled
    r = measure_latency(model, batch_size=2, seq_len=16, vocab_size=64, device="cpu",
                        warmup=1, repeats=3, min_time_s=60.0, max_repeats=12, max_time_s=60.0, threads=1)
    assert len(r.samples) == 12  # the ceiling of passes wins over min_time_s


class _BusyModel(torch.nn.Module):
    """Each pass spins for a set thread-CPU time: pass i takes durations[i % len] seconds."""

    def __init__(self, durations: tuple[float, ...]) -> None:
        super().__init__()
        self.durations, self.calls = durations, 0
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        d = self.durations[self.calls % len(self.durations)]
        self.calls += 1
        t0 = time.thread_time()
        while time.thread_time() - t0 < d:
            pass
        return tokens


def test_latency_keeps_sampling_while_the_spread_is_above_target_cv() -> None:
    kw = dict(batch_size=1, seq_len=8, vocab_size=16, device="cpu", threads=1, clock="thread-cpu",
              warmup=0, repeats=10, min_time_s=0.0, max_repeats=40, max_time_s=5.0)
    # Passes alternating 1 ms and 2 ms: a robust CV far above 3%, so the floor of
    # 10 passes is not enough and it samples up to the ceiling of passes.
    jumpy = measure_latency(_BusyModel((0.001, 0.002)), **kw, target_cv=0.03)
    assert len(jumpy.samples) == 40 and jumpy.cv > 0.03
    # The same model without a CV target stops at the floor.
    assert len(measure_latency(_BusyModel((0.001, 0.002)), **kw, target_cv=None).samples) == 10
    # A steady model meets the target at once.
    steady = measure_latency(_BusyModel((0.002,)), **kw, target_cv=0.03)
    assert len(steady.samples) == 10 and steady.cv <= 0.03


def test_latency_time_ceiling_bounds_a_slow_model() -> None:
    from evaluators.hardware import MIN_SAMPLES

    model = full_model(16, 1)
    # A floor of 10 000 passes must be allowed by the ceiling of passes (max_repeats):
    # max_repeats < repeats is refused (see test_bad_arguments), not silently lowered.
    t0 = time.perf_counter()
    r = measure_latency(model, batch_size=2, seq_len=16, vocab_size=64, device="cpu", clock="wall",
                        warmup=0, repeats=10_000, max_repeats=10_000, min_time_s=0.0, max_time_s=0.02, threads=1)
    elapsed_ms = (time.perf_counter() - t0) * 1e3
    assert MIN_SAMPLES <= len(r.samples) < 10_000
    assert sum(r.samples) < 20.0 + max(r.samples) + 1e-6  # stopped at the first pass past the ceiling
    assert elapsed_ms < 20.0 + 50 * max(r.samples) + 500  # the whole call, not only the passes


def test_latency_ceiling_is_wall_clock_and_covers_warmup() -> None:
    from evaluators.hardware import MIN_SAMPLES

    model = full_model(16, 1)
    # Many warm-up passes asked for: cut short at a quarter of max_time_s; then
    # only the MIN_SAMPLES floor is taken once the whole call passed max_time_s.
    t0 = time.perf_counter()
    r = measure_latency(model, batch_size=2, seq_len=16, vocab_size=64, device="cpu", threads=1,
                        warmup=100_000, repeats=10_000, max_repeats=10_000, min_time_s=0.0, max_time_s=0.04)
    elapsed = time.perf_counter() - t0
    assert MIN_SAMPLES <= len(r.samples) < 10_000
    assert elapsed < 1.0, elapsed


def test_latency_clock_thread_cpu_with_one_thread_wall_otherwise() -> None:
    model = full_model(16, 1)
    kw = dict(batch_size=4, seq_len=32, vocab_size=64, device="cpu", warmup=1, repeats=5, min_time_s=0.0)
    one = measure_latency(model, threads=1, **kw)
    assert one.clock == "thread-cpu" and one.wall_median_ms is not None
    # CPU time of the one thread doing the work can only be less than its wall-clock time.
    assert 0 < one.median_ms <= one.wall_median_ms * 1.05 + 0.05
    two = measure_latency(model, threads=2, **kw)
    assert two.clock == "wall" and two.median_ms == pytest.approx(two.wall_median_ms)
    forced = measure_latency(model, threads=1, clock="wall", **kw)
    assert forced.clock == "wall"
    with pytest.raises(ValueError, match="thread-cpu.*threads=1"):
        measure_latency(model, threads=2, clock="thread-cpu", **kw)
    with pytest.raises(ValueError, match="clock"):
        measure_latency(model, threads=1, clock="sundial", **kw)


def test_latency_result_from_an_older_cache_entry() -> None:
    # Entries cached before `clock` existed were wall-clock measurements.
    model = full_model(16, 1)
    d = measure_latency(model, batch_size=2, seq_len=16, vocab_size=64, device="cpu",
                        warmup=1, repeats=5, min_time_s=0.0).to_dict()
    del d["clock"], d["wall_median_ms"]
    old = LatencyResult.from_dict(d)
    assert old.clock == "wall" and old.wall_median_ms is None


def test_latency_restores_threads_and_mode() -> None:
    model = full_model(16, 1)
    model.train()
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    r = measure_latency(model, batch_size=2, seq_len=16, vocab_size=64, device="cpu",
                        warmup=1, repeats=3, min_time_s=0.0, threads=other)
    assert torch.get_num_threads() == before
    assert model.training
    assert r.device == device_label("cpu", other)


def test_latency_padding_path_runs() -> None:
    model = full_model(16, 1, head="pooled", causal=False)
    r = measure_latency(model, batch_size=4, seq_len=32, vocab_size=64, device="cpu",
                        warmup=1, repeats=3, min_time_s=0.0, threads=1, padding=True)
    assert r.padding and r.median_ms > 0


def test_larger_model_is_slower() -> None:
    # 8 layers at width 256 against 1 layer at width 16, length 256: ~1000x the work.
    big = full_model(256, 8, seq_len=256, heads=4)
    small = full_model(16, 1, seq_len=256)
    kw = dict(batch_size=1, seq_len=256, vocab_size=64, device="cpu", warmup=1, repeats=3, min_time_s=0.0)
    t_small = measure_latency(small, **kw).median_ms
    t_big = measure_latency(big, **kw).median_ms
    assert t_big > 3 * t_small, (t_big, t_small)


def test_bad_arguments() -> None:
    model = full_model(16, 1)
    with pytest.raises(ValueError, match="dtype"):
        measure_latency(model, batch_size=2, seq_len=16, vocab_size=64, device="cpu", dtype=torch.int8)
    with pytest.raises(ValueError, match="batch_size"):
        measure_latency(model, batch_size=0, seq_len=16, vocab_size=64, device="cpu")
    with pytest.raises(ValueError, match="max_repeats >= repeats"):
        measure_latency(model, batch_size=2, seq_len=16, vocab_size=64, device="cpu", repeats=600, max_repeats=500)
    with pytest.raises(ValueError, match="threads"):
        measure_latency(model, batch_size=2, seq_len=16, vocab_size=64, device="cpu", threads=0)
    with pytest.raises(ValueError, match="threads"):
        measure_memory(model, batch_size=2, seq_len=16, vocab_size=64, device="cpu", threads=0)


# ---- memory (CPU) -----------------------------------------------------------------
def test_cpu_peak_of_known_allocation_pattern() -> None:
    def pattern() -> None:
        a = torch.empty(4 * MB, dtype=torch.uint8)  # 4 MB
        b = torch.empty(8 * MB, dtype=torch.uint8)  # 8 MB while `a` lives: peak 12 MB
        del a, b
        c = torch.empty(6 * MB, dtype=torch.uint8)  # after both are freed: peak stays 12 MB
        del c

    peak = cpu_peak_allocated_bytes(pattern)
    assert abs(peak - 12 * MB) <= 64 * 1024, peak

    def sequential() -> None:
        for _ in range(3):
            t = torch.empty(5 * MB, dtype=torch.uint8)
            del t

    assert abs(cpu_peak_allocated_bytes(sequential) - 5 * MB) <= 64 * 1024


def test_cpu_peak_excludes_what_was_allocated_before() -> None:
    resident = torch.empty(16 * MB, dtype=torch.uint8)
    peak = cpu_peak_allocated_bytes(lambda: torch.empty(2 * MB, dtype=torch.uint8))
    assert abs(peak - 2 * MB) <= 64 * 1024
    del resident


def test_memory_grows_with_sequence_length_full_attention() -> None:
    model = full_model(32, 2, seq_len=512, heads=2)
    results = [measure_memory(model, batch_size=4, seq_len=n, vocab_size=64, device="cpu") for n in (64, 256, 512)]
    for r in results:
        assert isinstance(r, MemoryResult) and r.method.startswith("cpu profiler")
        assert 0 < r.inference_bytes < r.train_step_bytes
    inf = [r.inference_bytes for r in results]
    train = [r.train_step_bytes for r in results]
    assert inf[0] < inf[1] < inf[2], inf
    assert train[0] < train[1] < train[2], train
    # The logits alone (batch x length x vocab float32) are live at the end of inference.
    assert results[-1].inference_bytes >= 4 * 512 * 64 * 4
    assert MemoryResult.from_dict(json.loads(json.dumps(results[0].to_dict()))) == results[0]


def test_memory_restores_mode_grads_and_threads() -> None:
    model = full_model(16, 1)
    model.eval()
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    a = measure_memory(model, batch_size=2, seq_len=16, vocab_size=64, device="cpu", threads=other)
    assert torch.get_num_threads() == before
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    b = measure_memory(model, batch_size=2, seq_len=16, vocab_size=64, device="cpu")
    assert (a.inference_bytes, a.train_step_bytes) == (b.inference_bytes, b.train_step_bytes)  # repeatable
    c = measure_memory(model, batch_size=2, seq_len=16, vocab_size=64, device="cpu", warmup=False)
    assert (c.inference_bytes, c.train_step_bytes) == (b.inference_bytes, b.train_step_bytes)


def test_cpu_memory_profiler_needs_no_one_time_import() -> None:
    # torch.profiler.profile imports torch._inductor on its first start (1.5-5 s once
    # per process); the profiler used here must not.
    if "torch._inductor" in sys.modules:
        pytest.skip("torch._inductor was already imported in this process by an earlier test")
    t0 = time.perf_counter()
    cpu_peak_allocated_bytes(lambda: torch.empty(MB, dtype=torch.uint8))
    assert "torch._inductor" not in sys.modules
    assert time.perf_counter() - t0 < 0.5


def test_flops_is_an_estimate_that_scales() -> None:
    small = estimate_flops(full_model(16, 1), batch_size=2, seq_len=32, vocab_size=64)
    big = estimate_flops(full_model(32, 2), batch_size=2, seq_len=32, vocab_size=64)
    assert 0 < small < big


class _RaisesOnForward(torch.nn.Module):
    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.error = error

    def forward(self, *args):
        raise self.error


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
                                   RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate")])
def test_measurements_turn_out_of_memory_into_a_trial_failure(error) -> None:
    for measure_fn in (measure_latency, measure_memory):
        with pytest.raises(DeviceOutOfMemory, match=r"out of memory during (latency|memory) measurement on cpu.* at batch 2, length 8"):
            measure_fn(_RaisesOnForward(error), batch_size=2, seq_len=8, vocab_size=16, device="cpu")


def test_measurements_let_other_errors_through() -> None:
    with pytest.raises(RuntimeError, match="shape mismatch") as info:
        measure_latency(_RaisesOnForward(RuntimeError("shape mismatch")), batch_size=2, seq_len=8,
                        vocab_size=16, device="cpu")
    assert not isinstance(info.value, DeviceOutOfMemory)


# ---- CUDA ---------------------------------------------------------------------------
@needs_cuda
def test_cuda_latency_events_and_device_name() -> None:
    model = full_model(64, 2)
    r = measure_latency(model, batch_size=8, seq_len=64, vocab_size=64, device="cuda",
                        warmup=3, repeats=10, min_time_s=0.0, max_time_s=5.0)
    # (max_time_s: the first pass in a fresh process sets up cuBLAS and loads kernels,
    # which may take longer than the 0.5 s default ceiling and cut the repeats short.)
    assert r.median_ms > 0 and len(r.samples) >= 10
    assert r.clock == "cuda-events" and r.wall_median_ms > 0
    assert r.device == torch.cuda.get_device_name(0)
    assert next(model.parameters()).is_cuda


@needs_cuda
def test_cuda_bf16_autocast_latency_and_memory() -> None:
    model = full_model(128, 2, seq_len=256, heads=4)
    kw = dict(batch_size=16, seq_len=256, vocab_size=64, device="cuda")
    r16 = measure_latency(model, **kw, dtype=torch.bfloat16, warmup=3, repeats=10, min_time_s=0.0)
    assert r16.dtype == "bfloat16" and r16.median_ms > 0
    m32 = measure_memory(model, **kw)
    m16 = measure_memory(model, **kw, dtype=torch.bfloat16)
    assert m32.method.startswith("cuda allocator")
    assert 0 < m16.inference_bytes < m32.inference_bytes


@needs_cuda
def test_cuda_allocator_peak_and_growth() -> None:
    from evaluators.hardware import cuda_peak_allocated_bytes

    def pattern() -> None:
        a = torch.empty(4 * MB, dtype=torch.uint8, device="cuda")
        b = torch.empty(8 * MB, dtype=torch.uint8, device="cuda")
        del a, b

    assert abs(cuda_peak_allocated_bytes(pattern, "cuda") - 12 * MB) <= 64 * 1024
    model = full_model(32, 2, seq_len=1024, heads=2)
    small = measure_memory(model, batch_size=4, seq_len=128, vocab_size=64, device="cuda")
    large = measure_memory(model, batch_size=4, seq_len=1024, vocab_size=64, device="cuda")
    assert small.train_step_bytes < large.train_step_bytes
    assert small.inference_bytes < large.inference_bytes
