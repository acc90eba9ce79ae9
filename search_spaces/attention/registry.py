"""Name -> attention class, with what each kind supports.

`REGISTRY[name]` is a `KindInfo`: the class, whether it can be causal and/or
bidirectional, the knobs it needs, its cost order in sequence length n, and an
optional extra validation of a layer's knobs. The ArchSpec validator, the model
builder, the search spaces and the exporter all read this one table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from search_spaces.arch_spec import ArchSpec, LayerSpec
    from search_spaces.attention.base import Attention


@dataclass(frozen=True)
class KindInfo:
    name: str
    cls: "type[Attention]"
    causal: bool
    bidirectional: bool
    knobs: tuple[str, ...]
    cost: str  # cost order in sequence length n, e.g. "n^2", "n*w", "n*k"
    paper: str
    extra_check: "Callable[[LayerSpec, ArchSpec], None] | None" = field(default=None, compare=False)

    def check(self, layer: "LayerSpec", spec: "ArchSpec") -> None:
        if self.extra_check is not None:
            self.extra_check(layer, spec)


REGISTRY: dict[str, KindInfo] = {}


def register(info: KindInfo) -> None:
    if info.name in REGISTRY:
        raise ValueError(f"attention kind {info.name!r} registered twice")
    info.cls.kind = info.name
    REGISTRY[info.name] = info


def attention_class(name: str) -> "type[Attention]":
    try:
        return REGISTRY[name].cls
    except KeyError:
        raise KeyError(f"unknown attention kind {name!r}; choose one of {sorted(REGISTRY)}") from None


def _load_builtin_kinds() -> None:
    # Importing the kind modules registers them. Kept in a function so that the
    # validator (which imports REGISTRY) does not pull torch kernels in a cycle.
    from search_spaces.attention import kinds  # noqa: F401


_load_builtin_kinds()
