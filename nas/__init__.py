"""nas: hardware-aware search over efficient transformer architectures.

The search layer: Optuna studies, the evolution sampler, progressive dynamic
hurdles, storage, export and the `nas` command line.
"""

from __future__ import annotations


def load_best(study: str, *, storage: str | None = None, trial: int | None = None):
    """The best feasible (or the given) trial of a study as a `torch.nn.Module`
    with its trained weights, in eval mode. `study` is a study name (in `storage`,
    default ``sqlite:///studies/NAME.db``) or a storage URL whose database holds a
    single study (see `nas.export.load_best`)."""
    from nas.export import load_best as _load_best

    return _load_best(study, storage=storage, trial=trial)


__all__ = ["load_best"]
