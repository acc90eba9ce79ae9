"""`Trainer`: trains one candidate on one task, in stages, resumably.

AdamW (decay on matrices and embeddings, none on biases and norms), a linear
warm-up then a cosine decay to `min_lr_ratio * lr` defined over `max_steps` (the
study's maximum, so a candidate trained in stages follows exactly the schedule of
one trained straight through), gradient clipping, bf16 autocast on CUDA only.

Exact resumption: the batch of step s is `task.train_batch(s, seed)`, a pure
function of (task seed, trainer seed, s), and the global torch RNG (dropout) is
re-seeded from (seed, s) before each step, so training to s, saving
`state_dict()`, loading it into a fresh Trainer and training on to s + t gives
the same weights as training to s + t at once.

Failures a search should record rather than crash on are `TrialFailure`s:
`TrainingDiverged` (a NaN/inf loss) and `DeviceOutOfMemory`.
"""

from __future__ import annotations

import math
import traceback
import warnings
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from evaluators.errors import DeviceOutOfMemory, TrainingDiverged, is_out_of_memory
from evaluators.tasks.base import EvalResult, Task, autocast, mix_seed

Report = Callable[[int, EvalResult], None]

STATE_FORMAT = 1


class Trainer:
    """Train `model` on `task` for up to `max_steps` steps.

    `lr`: peak learning rate. `warmup_steps`: None = 5% of max_steps (at least 1,
    at most 200). `min_lr_ratio`: the cosine ends at lr * min_lr_ratio.
    `check_every`: on CUDA the loss is checked for NaN/inf every this many steps
    (and at every report and at the end of `train`) to avoid a device sync per
    step; on CPU every step is checked.
    """

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        *,
        max_steps: int,
        device: str | torch.device = "cpu",
        seed: int = 0,
        lr: float = 3e-3,
        warmup_steps: int | None = None,
        weight_decay: float = 0.1,
        grad_clip: float | None = 1.0,
        grad_checkpointing: bool = False,
        betas: tuple[float, float] = (0.9, 0.98),
        min_lr_ratio: float = 0.1,
        check_every: int = 25,
    ) -> None:
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        self.task = task
        self.device = torch.device(device)
        self.seed = int(seed)
        self.max_steps = max_steps
        self.lr = float(lr)
        self.warmup_steps = int(warmup_steps) if warmup_steps is not None else max(1, min(200, max_steps // 20))
        self.min_lr_ratio = float(min_lr_ratio)
        self.grad_clip = grad_clip
        self.check_every = max(1, int(check_every))
        self.steps_done = 0
        self.model = model.to(self.device)
        if grad_checkpointing:
            if not hasattr(model, "gradient_checkpointing"):
                raise ValueError(f"{type(model).__name__} does not support gradient checkpointing")
            model.gradient_checkpointing = True
        decay, no_decay = [], []
        for p in model.parameters():
            if p.requires_grad:
                (decay if p.dim() >= 2 else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(groups, lr=self.lr_at(0), betas=betas)
        self._pending: list[tuple[int, Tensor]] = []  # (step, loss) not yet checked for NaN

    # ---- schedule ------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        """Learning rate of (0-based) step `step`: linear warm-up, then cosine."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        span = max(1, self.max_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    # ---- training ------------------------------------------------------------
    def train(self, until_step: int, report_at: Sequence[int] = (), report: Report | None = None) -> None:
        """Train from `steps_done` up to `until_step` steps in all. On reaching each
        step in `report_at`, call `report(step, self.evaluate())`; an exception it
        raises (e.g. optuna.TrialPruned) stops training and propagates."""
        if isinstance(until_step, bool) or not isinstance(until_step, int):
            raise ValueError(f"until_step must be an integer, got {until_step!r}")
        if until_step < self.steps_done:
            raise ValueError(f"until_step={until_step} is behind steps_done={self.steps_done}; training only goes forward")
        if until_step > self.max_steps:
            raise ValueError(f"until_step={until_step} exceeds max_steps={self.max_steps}, where the learning-rate "
                             f"schedule ends; build the Trainer with a larger max_steps")
        marks = {int(s) for s in report_at if self.steps_done < s <= until_step}
        self.model.train()
        while self.steps_done < until_step:
            self._step()
            step = self.steps_done
            if step in marks or step == until_step or (step % self.check_every == 0):
                self._check_finite()
            if step in marks and report is not None:
                report(step, self.evaluate())

    def _step(self) -> None:
        step = self.steps_done
        batch = self.task.train_batch(step, self.seed)
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self._seed_rng(mix_seed("dropout", self.seed, step))
        failed: BaseException | None = None
        try:
            batch = batch.to(self.device)
            with autocast(self.device):
                logits = self.model(batch.tokens, batch.padding_mask)
            loss = self.task.loss(logits.float(), batch)
            del logits
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.optimizer.step()
        except RuntimeError as e:
            if not is_out_of_memory(e):
                raise
            failed = e
        if failed is not None:
            self._raise_oom(failed, f"training step {step + 1}")
        self.steps_done = step + 1
        self._pending.append((self.steps_done, loss.detach()))
        if self.device.type != "cuda":
            self._check_finite()

    def _seed_rng(self, seed: int) -> None:
        """Seed the RNG dropout draws from on this device. (`torch.manual_seed` would
        also queue a lazy seeding of every accelerator backend, with a formatted
        stack trace each, on every step of a CPU run.)"""
        torch.default_generator.manual_seed(seed)
        if self.device.type == "cuda":
            with torch.cuda.device(self.device):
                torch.cuda.manual_seed(seed)
        elif self.device.type != "cpu":
            torch.manual_seed(seed)

    def _check_finite(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        losses = torch.stack([l for _, l in pending]).float()
        bad = (~torch.isfinite(losses)).nonzero()
        if bad.numel():
            i = int(bad[0, 0])
            step = pending[i][0]
            raise TrainingDiverged(step, float(losses[i]), self.lr_at(step - 1))

    def _raise_oom(self, error: BaseException, where: str) -> None:
        traceback.clear_frames(error.__traceback__)  # drop the activations the frames hold
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        msg = f"out of memory on {self.device} during {where}; try a smaller batch_size, grad_checkpointing=True, or a smaller model"
        raise DeviceOutOfMemory(msg) from error

    def evaluate(self) -> EvalResult:
        """The task's metric on its fixed validation set, now."""
        failed: BaseException | None = None
        try:
            return self.task.evaluate(self.model, self.device)
        except RuntimeError as e:
            if not is_out_of_memory(e):
                raise
            failed = e
        self._raise_oom(failed, "evaluation")
        raise AssertionError("unreachable")

    # ---- checkpoints -----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: model, optimizer, schedule, step
        and the data stream's identity (task options, trainer seed; batches are a
        function of those and the step). Tensors are references, not copies:
        `torch.save` it, or deep-copy it to keep it in memory while training on."""
        self._check_finite()
        return {
            "format": STATE_FORMAT,
            "step": self.steps_done,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {"kind": "warmup_cosine", "lr": self.lr, "warmup_steps": self.warmup_steps,
                          "max_steps": self.max_steps, "min_lr_ratio": self.min_lr_ratio},
            "data": {"task": self.task.name, "options": self.task.options(), "seed": self.seed,
                     "next_step": self.steps_done},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"unknown Trainer checkpoint format {state.get('format')!r}; expected {STATE_FORMAT}")
        data = state["data"]
        if data["task"] != self.task.name or data["options"] != self.task.options():
            warnings.warn(f"checkpoint was trained on task {data['task']} {data['options']}, now continuing on "
                          f"{self.task.name} {self.task.options()}; the data stream will differ", stacklevel=2)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        sched = state["scheduler"]
        mine = {"lr": self.lr, "warmup_steps": self.warmup_steps, "max_steps": self.max_steps,
                "min_lr_ratio": self.min_lr_ratio}
        theirs = {k: sched[k] for k in mine}
        if theirs != mine:
            warnings.warn(f"checkpoint schedule {theirs} differs from this Trainer's {mine}; using the checkpoint's",
                          stacklevel=2)
            self.lr, self.warmup_steps = float(sched["lr"]), int(sched["warmup_steps"])
            self.max_steps, self.min_lr_ratio = int(sched["max_steps"]), float(sched["min_lr_ratio"])
        self.seed = int(data["seed"])
        self.steps_done = int(state["step"])
        self._pending = []
