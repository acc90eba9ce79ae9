"""Tasks: determinism per seed, correctness of the generated answers (checked by
evaluators written here, independently of the generators), option errors."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from evaluators.errors import TaskError
from evaluators.tasks import EvalResult, Task, available_tasks, get_task
from evaluators.tasks.base import IGNORE_INDEX

SMALL = {
    "mqar": {"vocab_size": 32, "seq_len": 32, "num_kv_pairs": 4, "n_valid": 64, "batch_size": 8},
    "listops": {"max_depth": 4, "max_args": 5, "min_length": 8, "max_length": 48, "n_valid": 64, "batch_size": 8},
    "text": {"seq_len": 32, "n_valid": 16, "max_bytes": 50_000, "batch_size": 4},
}


def same_batch(a, b) -> bool:
    return (torch.equal(a.tokens, b.tokens) and torch.equal(a.targets, b.targets)
            and (a.padding_mask is None) == (b.padding_mask is None)
            and (a.padding_mask is None or torch.equal(a.padding_mask, b.padding_mask)))


def valid_tokens(task) -> torch.Tensor:
    return torch.cat([b.tokens.flatten() for b in task.valid_batches()])


# ---- the registry and options -------------------------------------------------

def test_available_tasks():
    assert set(available_tasks()) >= {"mqar", "listops", "text"}


def test_unknown_task_names_the_choices():
    with pytest.raises(TaskError, match="unknown task 'nope'.*mqar"):
        get_task("nope")


@pytest.mark.parametrize("name", ["mqar", "listops", "text"])
def test_unknown_option_lists_the_options(name):
    with pytest.raises(TaskError, match=r"unknown option\(s\) \['colour'\].*batch_size"):
        get_task(name, colour="blue")


@pytest.mark.parametrize("name,option,value", [
    ("mqar", "seq_len", 0), ("mqar", "vocab_size", "big"), ("mqar", "batch_size", True),
    ("listops", "max_depth", 1), ("text", "valid_fraction", 1.5), ("mqar", "seed", -1),
])
def test_bad_option_value(name, option, value):
    with pytest.raises(TaskError, match=option):
        get_task(name, **{**SMALL[name], option: value})


def test_mqar_impossible_shapes():
    with pytest.raises(TaskError, match="seq_len >= 64"):
        get_task("mqar", seq_len=32, num_kv_pairs=16)
    with pytest.raises(TaskError, match="vocab_size"):
        get_task("mqar", vocab_size=16, seq_len=64, num_kv_pairs=10)


@pytest.mark.parametrize("name", ["mqar", "listops", "text"])
def test_protocol_and_rebuild_from_options(name):
    task = get_task(name, **SMALL[name])
    assert isinstance(task, Task)
    assert task.name == name and task.description and task.batch_size == SMALL[name]["batch_size"]
    options = json.loads(json.dumps(task.options()))  # JSON-able
    again = get_task(task.name, **options)
    assert again.shape == task.shape
    assert all(same_batch(a, b) for a, b in zip(task.valid_batches(), again.valid_batches(), strict=True))
    assert same_batch(task.train_batch(3, seed=1), again.train_batch(3, seed=1))


@pytest.mark.parametrize("name", ["mqar", "listops", "text"])
def test_training_batches_are_a_function_of_seeds_and_step(name):
    task = get_task(name, **SMALL[name])
    b = task.train_batch(5, seed=0)
    assert same_batch(b, task.train_batch(5, seed=0))
    assert not same_batch(b, task.train_batch(6, seed=0))
    assert not same_batch(b, task.train_batch(5, seed=1))
    other = get_task(name, **{**SMALL[name], "seed": 1})
    assert not same_batch(b, other.train_batch(5, seed=0))
    assert len(b) == task.batch_size


@pytest.mark.parametrize("name", ["mqar", "listops"])
def test_validation_set_fixed_per_seed_and_differs_across_seeds(name):
    a = get_task(name, **SMALL[name])
    b = get_task(name, **SMALL[name])
    c = get_task(name, **{**SMALL[name], "seed": 7})
    assert torch.equal(valid_tokens(a), valid_tokens(b))
    va, vc = valid_tokens(a), valid_tokens(c)
    assert va.shape != vc.shape or not torch.equal(va, vc)


@pytest.mark.parametrize("name", ["mqar", "listops", "text"])
def test_evaluate_returns_fitness_and_metrics(name):
    from search_spaces import ArchSpec, LayerSpec, build_model

    task = get_task(name, **SMALL[name])
    s = task.shape
    spec = ArchSpec(vocab_size=s.vocab_size, max_seq_len=s.max_seq_len, d_model=16, causal=s.causal, head=s.head,
                    n_classes=s.n_classes, layers=(LayerSpec("full", heads=2, ffn=32),))
    model = build_model(spec).train()
    result = task.evaluate(model, "cpu")
    assert isinstance(result, EvalResult) and math.isfinite(result.fitness)
    assert all(isinstance(v, float) for v in result.metrics.values())
    assert model.training  # mode restored
    b = task.train_batch(0)
    loss = task.loss(model(b.tokens, b.padding_mask), b)
    assert loss.ndim == 0 and torch.isfinite(loss)


# ---- MQAR ------------------------------------------------------------------------

def test_mqar_queries_are_answerable_from_the_context():
    opts = SMALL["mqar"]
    task = get_task("mqar", **opts)
    half = opts["vocab_size"] // 2
    pairs = opts["num_kv_pairs"]
    for batch in [task.train_batch(0), task.train_batch(1, seed=3), *task.valid_batches()]:
        for tokens, targets in zip(batch.tokens.tolist(), batch.targets.tolist()):
            queries = [i for i, t in enumerate(targets) if t != IGNORE_INDEX]
            assert len(queries) == pairs
            context = tokens[: 2 * pairs]
            keys, values = context[0::2], context[1::2]
            assert len(set(keys)) == pairs and len(set(values)) == pairs
            assert all(0 < k < half for k in keys) and all(half <= v < opts["vocab_size"] for v in values)
            assert sorted(tokens[q] for q in queries) == sorted(keys)  # every key queried once
            for q in queries:
                key, value = tokens[q], targets[q]
                assert q >= 2 * pairs
                # the queried key appears earlier, immediately followed by the target value
                assert any(tokens[j] == key and tokens[j + 1] == value for j in range(q - 1))


def test_mqar_fixed_training_pool():
    task = get_task("mqar", **SMALL["mqar"], n_train=20)
    pool = {tuple(r) for r in task._pool[0].tolist()}
    assert len(pool) == 20
    assert all(tuple(r) in pool for r in task.train_batch(4).tokens.tolist())


# ---- ListOps -----------------------------------------------------------------------

def reference_listops(tokens: list[str]) -> int:
    """An independent ListOps evaluator: parse the prefix expression recursively."""
    pos = 0

    def parse() -> int:
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok.isdigit():
            return int(tok)
        assert tok.startswith("["), tok
        args = []
        while tokens[pos] != "]":
            args.append(parse())
        pos += 1  # the closing bracket
        assert len(args) >= 2
        if tok == "[MAX":
            return max(args)
        if tok == "[MIN":
            return min(args)
        if tok == "[SM":
            return sum(args) % 10
        if tok == "[MED":
            import statistics
            return int(statistics.median(args))  # LRA: int(np.median(...)); mean of the middle two, truncated
        raise AssertionError(f"unknown operator {tok}")

    value = parse()
    assert pos == len(tokens), "trailing tokens"
    return value


def test_listops_answers_match_an_independent_evaluator():
    from evaluators.tasks.listops import VOCAB

    opts = SMALL["listops"]
    task = get_task("listops", **opts)
    seen_ops = set()
    n = 0
    for batch in [*task.valid_batches(), task.train_batch(0), task.train_batch(1, seed=2)]:
        assert batch.padding_mask is not None
        for row, answer, mask in zip(batch.tokens.tolist(), batch.targets.tolist(), batch.padding_mask.tolist()):
            length = sum(mask)
            assert mask == [True] * length + [False] * (len(mask) - length)  # right padding only
            assert all(t == 0 for t in row[length:])
            tokens = [VOCAB[i] for i in row[:length]]
            assert opts["min_length"] <= length <= opts["max_length"]
            assert tokens.count("]") == sum(t.startswith("[") for t in tokens)  # closing brackets kept
            assert reference_listops(tokens) == answer
            seen_ops.update(t for t in tokens if t.startswith("["))
            n += 1
    assert n >= opts["n_valid"] and seen_ops == {"[MAX", "[MIN", "[MED", "[SM"}
    assert task.shape.causal is False and task.shape.head == "pooled" and task.shape.n_classes == 10


def test_listops_median_of_even_count_matches_lra():
    from evaluators.tasks.listops import _apply
    assert _apply("[MED", [1, 4]) == 2 and _apply("[MED", [3, 9, 1]) == 3 and _apply("[SM", [7, 8]) == 5


def test_listops_impossible_lengths():
    with pytest.raises(TaskError, match="min_length"):
        get_task("listops", min_length=50, max_length=40)


# ---- text ----------------------------------------------------------------------

def test_text_default_corpus_is_the_stdlib():
    task = get_task("text", **SMALL["text"])
    assert "standard library" in task.description
    assert task.shape.vocab_size == 256 and task.shape.causal and task.shape.head == "token"
    b = task.train_batch(0)
    assert torch.equal(b.tokens[:, 1:], b.targets[:, :-1])  # next-byte targets


def test_text_file_bits_per_byte_and_held_out_split(tmp_path):
    path = tmp_path / "corpus.txt"
    body = b"a" * 9000 + b"z" * 1000  # the held-out 10% is all 'z'
    path.write_bytes(body)
    task = get_task("text", path=str(path), seq_len=16, n_valid=8, batch_size=4)
    assert all((b.tokens == ord("z")).all() for b in task.valid_batches())
    assert all(not (task.train_batch(i).tokens == ord("z")).any() for i in range(5))

    class Uniform(torch.nn.Module):
        def forward(self, tokens, padding_mask=None):
            return torch.zeros(*tokens.shape, 256)

    result = task.evaluate(Uniform(), "cpu")
    assert result.metrics["bits_per_byte"] == pytest.approx(8.0)
    assert result.fitness == pytest.approx(-8.0)
    assert get_task("text", **task.options()).options() == task.options()


def test_text_missing_file(tmp_path):
    with pytest.raises(TaskError, match="no such file.*path="):
        get_task("text", path=str(tmp_path / "absent.txt"))
    with pytest.raises(TaskError, match="is a folder; give path= a text file in it"):
        get_task("text", path=str(tmp_path))


def test_text_path_of_wrong_type():
    with pytest.raises(TaskError, match="path must be a file path"):
        get_task("text", path=42)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_text_unreadable_file(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_bytes(b"x" * 10_000)
    path.chmod(0)
    with pytest.raises(TaskError, match="cannot read.*permissions"):
        get_task("text", path=str(path))


def test_text_max_bytes_limits_the_corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes(bytes(range(256)) * 100)
    task = get_task("text", path=str(path), seq_len=16, n_valid=4, max_bytes=5000, batch_size=2)
    assert task.n_bytes == 5000


def test_text_too_small_file(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_bytes(b"hello world\n" * 5)
    with pytest.raises(TaskError, match="too small.*seq_len"):
        get_task("text", path=str(path), seq_len=128)


def test_text_remembers_its_corpus_and_refuses_a_changed_one(tmp_path):
    """The task's options carry the corpus's SHA-256 (computed here from the file's
    bytes), so a task rebuilt from a study's options refuses a file that changed."""
    import hashlib

    corpus = tmp_path / "c.txt"
    corpus.write_bytes(bytes(range(256)) * 8)
    task = get_task("text", path=str(corpus), seq_len=8)
    assert task.options()["sha256"] == hashlib.sha256(corpus.read_bytes()).hexdigest()
    assert get_task("text", **task.options()).options() == task.options()  # rebuilt on the same file
    corpus.write_bytes(corpus.read_bytes() + b"more")
    with pytest.raises(TaskError, match="corpus is not the one expected .*changed since the study was made"):
        get_task("text", **task.options())
