"""`text`: byte-level language modelling on a local text file.

Vocabulary 256 (raw bytes), causal, token head. The last `valid_fraction` of the
file is held out; the validation set is `n_valid` windows of `seq_len + 1` bytes
spread evenly over that held-out part (the same for every trial), and the metric
is bits per byte there (fitness = -bits_per_byte). Training windows are drawn
at random offsets in the first part, from (seed, trainer seed, step).

With no `path`, the corpus is the Python standard library's own sources: the
top-level `*.py` files of this interpreter's stdlib directory, sorted by name
and concatenated, up to `max_bytes` (default 2,000,000) bytes. It is on every
machine with no download, but differs between Python versions.
"""

from __future__ import annotations

import hashlib
import math
import sysconfig
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from evaluators.errors import TaskError
from evaluators.tasks.base import Batch, EvalResult, TaskBase, batches, check_int, generator
from search_spaces.space import TaskShape

STDLIB_DEFAULT_BYTES = 2_000_000


def stdlib_corpus(max_bytes: int) -> tuple[bytes, str]:
    """The sorted top-level stdlib .py sources, concatenated, first `max_bytes` bytes."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, total = [], 0
    for f in sorted(root.glob("*.py")):
        try:
            data = f.read_bytes()
        except OSError:
            continue
        parts.append(data)
        total += len(data)
        if total >= max_bytes:
            break
    return b"".join(parts)[:max_bytes], str(root)


class TextTask(TaskBase):
    name = "text"
    DEFAULTS: dict[str, Any] = {
        "path": None,
        "seq_len": 128,
        "valid_fraction": 0.1,
        "n_valid": 256,
        "max_bytes": None,
        "batch_size": 32,
        "seed": 0,
        # The corpus's SHA-256, set from the bytes read: a study stores it, and a task
        # rebuilt from a study's options (a worker, a resume, export --retrain) refuses
        # a corpus that changed since (an edited file, another Python's standard library).
        "sha256": None,
    }

    def _setup(self) -> None:
        o, t = self._options, self.name
        self.seq_len = check_int(t, "seq_len", o["seq_len"], minimum=2)
        self.n_valid = check_int(t, "n_valid", o["n_valid"], minimum=1)
        max_bytes = o["max_bytes"]
        if max_bytes is not None:
            max_bytes = check_int(t, "max_bytes", max_bytes, minimum=1)
        frac = o["valid_fraction"]
        if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac < 1:
            raise TaskError(f"task text: option valid_fraction must be a number between 0 and 1, got {frac!r}")
        path = o["path"]
        if path is None:
            data, root = stdlib_corpus(max_bytes or STDLIB_DEFAULT_BYTES)
            source = f"the Python standard library's top-level .py sources in {root} (sorted by name, concatenated)"
        else:
            if not isinstance(path, (str, Path)):
                raise TaskError(f"task text: option path must be a file path, got {path!r}")
            p = Path(path).expanduser()
            if p.is_dir():
                raise TaskError(f"task text: {str(p)!r} is a folder; give path= a text file in it")
            if not p.is_file():
                raise TaskError(f"task text: no such file {str(p)!r}; give path= an existing text file "
                                f"(or leave it unset to use the Python standard library sources)")
            try:
                with p.open("rb") as fh:
                    data = fh.read(max_bytes) if max_bytes else fh.read()
            except OSError as e:
                raise TaskError(f"task text: cannot read {str(p)!r} ({e.strerror}); check the file's permissions") from None
            p = p.resolve()
            self._options["path"] = str(p)
            source = f"the file {p}"
        digest = hashlib.sha256(data).hexdigest()
        if o["sha256"] is not None and o["sha256"] != digest:
            # The one stored with a study, or one given by hand (--task-option sha256=...): either way the
            # corpus read is not the one expected.
            raise TaskError(f"task text: the corpus is not the one expected ({source} has SHA-256 {digest[:12]}..., "
                            f"expected {str(o['sha256'])[:12]}...: changed since the study was made, or a sha256 "
                            f"option given by hand); restore it, or drop the sha256 option for a new study")
        self._options["sha256"] = digest
        n_valid_bytes = int(len(data) * frac)
        need = self.seq_len + 1
        if len(data) - n_valid_bytes < 2 * need or n_valid_bytes < need:
            raise TaskError(
                f"task text: the corpus has {len(data)} bytes, too small for seq_len={self.seq_len} with "
                f"valid_fraction={frac} (needs at least {math.ceil(need / min(frac, 1 - frac)) + 2 * need} bytes); "
                f"use a larger file or a shorter seq_len")
        buf = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        self._train = buf[: len(data) - n_valid_bytes].clone()
        valid = buf[len(data) - n_valid_bytes:].clone()
        self.n_bytes = len(data)
        self.shape = TaskShape(vocab_size=256, max_seq_len=self.seq_len, causal=True, head="token", n_classes=256)
        self.description = (
            f"byte-level language modelling on {source}: {len(data):,} bytes, the last {n_valid_bytes:,} held out; "
            f"fitness = -bits per byte on the held-out part")
        count = min(self.n_valid, n_valid_bytes - need + 1)
        starts = torch.linspace(0, n_valid_bytes - need, count).round().long().unique()
        windows = valid[starts[:, None] + torch.arange(need)].long()
        self._valid = list(batches(windows[:, :-1], windows[:, 1:], None, max(128, self.batch_size)))

    def train_batch(self, step: int, seed: int = 0) -> Batch:
        g = generator(self.name, "train", self.seed, seed, step)
        need = self.seq_len + 1
        starts = torch.randint(len(self._train) - need + 1, (self.batch_size,), generator=g)
        windows = self._train[starts[:, None] + torch.arange(need)].long()
        return Batch(windows[:, :-1], windows[:, 1:])

    def loss(self, logits: Tensor, batch: Batch) -> Tensor:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch.targets.reshape(-1))

    def _score(self, logits: Tensor, batch: Batch) -> dict[str, Tensor]:
        loss_sum = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.targets.reshape(-1), reduction="sum")
        return {"loss_sum": loss_sum, "count": torch.tensor(batch.targets.numel())}

    def _summarise(self, totals: dict[str, float]) -> EvalResult:
        nats = totals["loss_sum"] / totals["count"]
        bpb = nats / math.log(2)
        return EvalResult(fitness=-bpb, metrics={"bits_per_byte": bpb, "loss": nats})
