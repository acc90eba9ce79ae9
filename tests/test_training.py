"""Trainer: exact staged training (also through a checkpoint), report timing,
failures surfaced as TrialFailure subclasses."""

from __future__ import annotations

import io

import pytest
import torch

from evaluators.errors import DeviceOutOfMemory, TrainingDiverged, TrialFailure
from evaluators.tasks import get_task
from evaluators.training import Trainer
from search_spaces import ArchSpec, LayerSpec, build_model

MQAR = {"vocab_size": 32, "seq_len": 16, "num_kv_pairs": 2, "n_valid": 32, "batch_size": 8}
LISTOPS = {"max_depth": 3, "max_args": 4, "min_length": 6, "max_length": 32, "n_valid": 32, "batch_size": 8}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: one intra-op thread is faster than two, and far faster
    than two on a machine whose cores are busy (OpenMP threads wait on each other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make(task_name="mqar", opts=MQAR, dropout=0.1, init_seed=0, **trainer_kw):
    task = get_task(task_name, **opts)
    s = task.shape
    spec = ArchSpec(vocab_size=s.vocab_size, max_seq_len=s.max_seq_len, d_model=16, causal=s.causal, head=s.head,
                    n_classes=s.n_classes, dropout=dropout, layers=(LayerSpec("full", heads=2, ffn=32),) * 2)
    torch.manual_seed(init_seed)
    model = build_model(spec)
    return Trainer(model, task, **{"max_steps": 12, "seed": 3, "lr": 3e-3, "warmup_steps": 3, **trainer_kw})


def params(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("task_name,opts", [("mqar", MQAR), ("listops", LISTOPS)])
def test_staged_training_equals_straight_training(task_name, opts):
    straight = make(task_name, opts)
    straight.train(10)
    staged = make(task_name, opts)
    staged.train(4)
    staged.train(4)  # no-op
    staged.train(10)
    assert staged.steps_done == straight.steps_done == 10
    assert_same(params(straight), params(staged))
    assert straight.evaluate() == staged.evaluate()


def test_resume_through_state_dict_into_fresh_trainer():
    straight = make()
    straight.train(9)

    first = make()
    first.train(5)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    fresh = make(init_seed=123)  # different initial weights: the checkpoint must override them
    fresh.load_state_dict(torch.load(buf, weights_only=False))
    assert fresh.steps_done == 5
    fresh.train(9)
    assert_same(params(straight), params(fresh))
    assert_same(straight.optimizer.state_dict()["state"][0], fresh.optimizer.state_dict()["state"][0])


def test_trainer_seed_changes_the_data_stream():
    a, b = make(seed=0), make(seed=1)
    a.train(3)
    b.train(3)
    assert any(not torch.equal(x, y) for x, y in zip(params(a).values(), params(b).values()))


def test_report_fires_exactly_at_requested_steps():
    trainer = make()
    calls = []
    trainer.train(8, report_at=[0, 2, 5, 7, 100], report=lambda step, r: calls.append((step, trainer.steps_done, r)))
    assert [(s, d) for s, d, _ in calls] == [(2, 2), (5, 5), (7, 7)]
    assert all(0.0 <= r.fitness <= 1.0 and "accuracy" in r.metrics for _, _, r in calls)
    calls.clear()
    trainer.train(10, report_at=[2, 5, 9, 10], report=lambda step, r: calls.append((step, trainer.steps_done, r)))
    assert [(s, d) for s, d, _ in calls] == [(9, 9), (10, 10)]


def test_exception_in_report_stops_training():
    class Pruned(Exception):
        pass

    def report(step, result):
        if step == 3:
            raise Pruned

    trainer = make()
    with pytest.raises(Pruned):
        trainer.train(10, report_at=[1, 3, 6], report=report)
    assert trainer.steps_done == 3


def test_schedule_warmup_then_cosine():
    t = make(max_steps=100, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    assert t.lr_at(0) == pytest.approx(1e-4)
    assert t.lr_at(9) == pytest.approx(1e-3)
    assert t.lr_at(10) == pytest.approx(1e-3)
    assert t.lr_at(55) == pytest.approx(0.55e-3)
    assert t.lr_at(100) == pytest.approx(1e-4)
    lrs = [t.lr_at(s) for s in range(10, 101)]
    assert all(x >= y for x, y in zip(lrs, lrs[1:]))


def test_bad_steps():
    t = make()
    with pytest.raises(ValueError, match="max_steps"):
        t.train(13)
    t.train(2)
    with pytest.raises(ValueError, match="behind"):
        t.train(1)


def test_nan_loss_raises_training_diverged():
    t = make()
    forward = t.model.forward
    t.model.forward = lambda *a, **k: forward(*a, **k) * float("nan")
    with pytest.raises(TrainingDiverged, match=r"step 1\b.*lower learning rate") as info:
        t.train(5)
    assert isinstance(info.value, TrialFailure) and info.value.reason == "diverged" and info.value.step == 1


def test_divergence_names_the_first_bad_step():
    t = make()
    forward = t.model.forward
    t.model.forward = lambda *a, **k: forward(*a, **k) * (float("inf") if t.steps_done >= 4 else 1.0)
    with pytest.raises(TrainingDiverged) as info:
        t.train(10)
    assert info.value.step == 5 and t.steps_done == 5  # the 5th step (0-based step 4) saw inf


def test_huge_learning_rate_diverges():
    t = make(lr=1e10, warmup_steps=1, grad_clip=None, max_steps=50, dropout=0.0)
    with pytest.raises(TrainingDiverged) as info:
        t.train(50)
    assert info.value.reason == "diverged" and 1 <= info.value.step <= 50


def test_out_of_memory_raises_device_out_of_memory():
    t = make()

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 PiB")

    t.model.forward = oom
    with pytest.raises(DeviceOutOfMemory, match="out of memory.*batch_size") as info:
        t.train(3)
    assert isinstance(info.value, TrialFailure) and info.value.reason == "out_of_memory"
    assert isinstance(info.value.__cause__, torch.OutOfMemoryError)
    assert t.steps_done == 0
    with pytest.raises(DeviceOutOfMemory, match="evaluation"):
        t.evaluate()


@pytest.mark.parametrize("message", [
    "CUDA error: out of memory",
    "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
])
def test_allocation_failures_torch_raises_as_runtime_errors_are_out_of_memory(message):
    # cuBLAS failing to allocate its handle surfaces as a plain RuntimeError, not
    # torch.OutOfMemoryError: without the mapping it would end the whole search.
    t = make()

    def oom(*args, **kwargs):
        raise RuntimeError(message)

    t.model.forward = oom
    with pytest.raises(DeviceOutOfMemory) as info:
        t.train(1)
    assert str(info.value.__cause__) == message


def test_a_real_cpu_allocation_failure_is_out_of_memory():
    t = make()

    def huge(*args, **kwargs):
        return torch.empty(2**62, dtype=torch.uint8)  # the CPU allocator refuses this

    t.model.forward = huge
    with pytest.raises(DeviceOutOfMemory, match="during training step 1"):
        t.train(1)


def test_other_runtime_errors_are_not_taken_for_out_of_memory():
    t = make()

    def broken(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x8 and 16x8)")

    t.model.forward = broken
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied") as info:
        t.train(1)
    assert not isinstance(info.value, TrialFailure)


def test_out_of_memory_in_a_report_evaluation():
    t = make()
    evaluate = t.task.evaluate

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    t.task.evaluate = oom
    with pytest.raises(DeviceOutOfMemory, match="during evaluation"):
        t.train(4, report_at=[2], report=lambda step, r: None)
    assert t.steps_done == 2
    t.task.evaluate = evaluate


def test_checkpoint_of_unknown_format_is_refused():
    t = make()
    state = t.state_dict()
    state["format"] = 99
    with pytest.raises(ValueError, match="format"):
        make().load_state_dict(state)


def test_bad_until_step():
    with pytest.raises(ValueError, match="until_step"):
        make().train(2.5)


def test_grad_checkpointing_gives_the_same_training():
    a = make(dropout=0.0)
    b = make(dropout=0.0, grad_checkpointing=True)
    assert b.model.gradient_checkpointing
    a.train(3)
    b.train(3)
    for x, y in zip(params(a).values(), params(b).values()):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
