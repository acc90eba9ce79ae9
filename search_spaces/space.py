"""Named search spaces: declarative TOML files listing the choices per layer.

A space file looks like this (see `spaces/default.toml`)::

    name = "default"
    description = "..."
    [model]
    d_model = [32, 64]
    depth = [1, 2, 3]
    [layer]
    attention = ["full", "local", "linear"]
    heads = [1, 2, 4]
    ffn_mult = [2, 4]
    [knobs]            # choices of each knob, used only by kinds that take it
    window = [8, 16, 32]
    rank = [8, 16]

`SearchSpace.sample(choose, shape)` walks the choices in a fixed order and asks
`choose(name, choices)` for each: `d_model`, `depth`, then for each layer i below
depth `layer{i}.attention`, `layer{i}.heads`, `layer{i}.ffn_mult` and the knobs
of the chosen kind only (`layer{i}.window`, ...). The chooser is where the search
plugs in (an Optuna trial's `suggest_categorical`); this module knows no Optuna.
The conditional structure (layers exist only below depth, knobs only for the
kind that takes them) comes from the walk itself.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

from search_spaces.arch_spec import KNOBS, ArchSpec, LayerSpec
from search_spaces.attention.registry import REGISTRY

Choice = Any
Chooser = Callable[[str, Sequence[Choice]], Choice]

MODEL_KEYS = ("d_model", "depth")
LAYER_KEYS = ("attention", "heads", "ffn_mult")


class SpaceError(ValueError):
    """A space file that cannot define a search. The message names the fix."""


@dataclass(frozen=True)
class TaskShape:
    """What the task fixes about every architecture: vocabulary, sequence length,
    causality and the head."""

    vocab_size: int
    max_seq_len: int
    causal: bool
    head: str
    n_classes: int


@dataclass(frozen=True)
class SearchSpace:
    name: str
    description: str
    d_model: tuple[int, ...]
    depth: tuple[int, ...]
    attention: tuple[str, ...]
    heads: tuple[int, ...]
    ffn_mult: tuple[int, ...]
    knobs: dict[str, tuple[int, ...]]

    # ---- loading -------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> "SearchSpace":
        def fail(msg: str) -> SpaceError:
            return SpaceError(f"space {source}: {msg}")

        unknown = set(data) - {"name", "description", "model", "layer", "knobs"}
        if unknown:
            raise fail(f"unknown section(s) {sorted(unknown)}; allowed: name, description, model, layer, knobs")
        model, layer, knobs = data.get("model", {}), data.get("layer", {}), data.get("knobs", {})
        for section, keys, got in (("model", MODEL_KEYS, model), ("layer", LAYER_KEYS, layer), ("knobs", KNOBS, knobs)):
            if not isinstance(got, dict):
                raise fail(f"[{section}] must be a table")
            bad = set(got) - set(keys)
            if bad:
                raise fail(f"[{section}] has unknown key(s) {sorted(bad)}; allowed: {list(keys)}")
        for section, keys, got in (("model", MODEL_KEYS, model), ("layer", LAYER_KEYS, layer)):
            for key in keys:
                if key not in got:
                    raise fail(f"[{section}] needs {key} = [choices]")

        def choices(section: str, key: str, value: Any, kind: type) -> tuple:
            if not isinstance(value, list) or not value:
                raise fail(f"[{section}] {key} must be a non-empty list of choices, got {value!r}")
            for v in value:
                if not isinstance(v, kind) or isinstance(v, bool) or (kind is int and v < (0 if key in ("global_tokens", "random_blocks") else 1)):
                    raise fail(f"[{section}] {key}: {v!r} is not a valid choice ({'positive integer' if kind is int else 'string'} expected)")
            if len(set(value)) != len(value):
                raise fail(f"[{section}] {key} lists a choice twice")
            return tuple(value)

        attention = choices("layer", "attention", layer["attention"], str)
        for kind in attention:
            if kind not in REGISTRY:
                raise fail(f"unknown attention kind {kind!r}; choose among {sorted(REGISTRY)}")
        space = cls(
            name=str(data.get("name", source)),
            description=str(data.get("description", "")),
            d_model=choices("model", "d_model", model["d_model"], int),
            depth=choices("model", "depth", model["depth"], int),
            attention=attention,
            heads=choices("layer", "heads", layer["heads"], int),
            ffn_mult=choices("layer", "ffn_mult", layer["ffn_mult"], int),
            knobs={k: choices("knobs", k, v, int) for k, v in knobs.items()},
        )
        for d in space.d_model:
            for h in space.heads:
                if d % h:
                    raise fail(f"heads={h} does not divide d_model={d}; every heads choice must divide every d_model choice")
        for kind in attention:
            for knob in REGISTRY[kind].knobs:
                if knob not in space.knobs:
                    raise fail(f"attention kind {kind!r} needs [knobs] {knob} = [choices]")
        return space

    @classmethod
    def from_file(cls, path: str | Path) -> "SearchSpace":
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise SpaceError(f"space file {path} cannot be read ({e.strerror}); give an existing .toml file or a built-in name: {builtin_spaces()}") from None
        except UnicodeDecodeError:
            raise SpaceError(f"space file {path} is not UTF-8 text (TOML must be); save it as UTF-8 or give another file") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise SpaceError(f"space file {path} is not valid TOML ({e}); fix the syntax") from None
        return cls.from_dict(data, source=str(path))

    # ---- use -----------------------------------------------------------------
    def for_task(self, shape: TaskShape) -> "SearchSpace":
        """This space with knob choices that cannot fit the task's sequence length
        dropped (a window of 512 means nothing at length 64), and attention kinds
        that the task's causality rules out removed."""
        # A knob left with no choice only served kinds dropped below: it goes too (a
        # space with an empty knob list cannot be written down, nor rebuilt from a study).
        knobs = {k: kept for k, vals in self.knobs.items() if (kept := tuple(v for v in vals if v <= shape.max_seq_len))}
        unfit = self.unfit_kinds(shape)
        attention = tuple(a for a in self.attention if a not in unfit)
        if not attention:
            raise SpaceError(
                f"space {self.name}: no attention kind in {list(self.attention)} can serve a "
                f"{'causal' if shape.causal else 'bidirectional'} task of length {shape.max_seq_len} "
                f"({'; '.join(unfit.values())}); add choices that fit, or another attention kind"
            )
        return SearchSpace(self.name, self.description, self.d_model, self.depth, attention,
                           self.heads, self.ffn_mult, knobs)

    def unfit_kinds(self, shape: TaskShape, causality: bool = True) -> dict[str, str]:
        """The attention kinds `for_task` drops for `shape`, each with the reason:
        the task's causality (left out with causality=False), or a knob all of whose
        choices exceed its length."""
        side = "causal" if shape.causal else "bidirectional"
        out = {}
        for a in self.attention:
            info = REGISTRY[a]
            if not (info.causal if shape.causal else info.bidirectional):
                if causality:
                    out[a] = f"{a} cannot be {side}"
                continue
            for k in info.knobs:
                vals = self.knobs.get(k, ())
                if not any(v <= shape.max_seq_len for v in vals):
                    out[a] = f"{a}'s {k} choices {list(vals)} all exceed the sequence length {shape.max_seq_len}"
                    break
        return out

    def sample(self, choose: Chooser, shape: TaskShape) -> ArchSpec:
        """Walk the choices (see module docstring) and build the ArchSpec.

        Call on `space.for_task(shape)`; raises `SpecError` if a combination is
        still impossible (the search records that trial as failed).
        """
        d_model = choose("d_model", self.d_model)
        depth = choose("depth", self.depth)
        layers = []
        for i in range(depth):
            kind = choose(f"layer{i}.attention", self.attention)
            heads = choose(f"layer{i}.heads", self.heads)
            ffn_mult = choose(f"layer{i}.ffn_mult", self.ffn_mult)
            knobs = {k: choose(f"layer{i}.{k}", self.knobs[k]) for k in REGISTRY[kind].knobs}
            layers.append(LayerSpec(attention=kind, heads=heads, ffn=ffn_mult * d_model, seed=i, **knobs))
        return ArchSpec(
            vocab_size=shape.vocab_size, max_seq_len=shape.max_seq_len, d_model=d_model,
            layers=tuple(layers), causal=shape.causal, head=shape.head, n_classes=shape.n_classes,
        )

    def cheapest_of_each_kind(self, shape: TaskShape) -> list[ArchSpec]:
        """The smallest architecture (width, depth, FFN, knobs) of each attention
        kind, lowest cost order first; used to tell a budget no candidate of the
        space can meet before searching. Cost order is only the ranking key, and it
        is asymptotic: at a short sequence full attention often costs less than the
        linear kinds, so a budget the first misses may still be met by another (the
        search measures them)."""
        order = {"n": 0, "n*k": 1, "n*w": 2, "n*b": 2, "n*sqrt(n)": 3, "n^2": 4}
        kinds = sorted(self.attention, key=lambda a: (order.get(REGISTRY[a].cost, 5), a))
        return [self.sample(lambda name, ch, kind=kind: kind if name.endswith(".attention") else min(ch), shape)
                for kind in kinds]


def builtin_spaces() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("search_spaces.spaces").iterdir() if p.name.endswith(".toml"))


def load_space(name_or_path: str) -> SearchSpace:
    """A built-in space by name (`default`, ...) or a TOML file by path."""
    if name_or_path in builtin_spaces():
        text = resources.files("search_spaces.spaces").joinpath(f"{name_or_path}.toml").read_text()
        try:
            return SearchSpace.from_dict(tomllib.loads(text), source=name_or_path)
        except tomllib.TOMLDecodeError as e:  # a broken built-in is our bug, but say so clearly
            raise SpaceError(f"built-in space {name_or_path} is not valid TOML: {e}") from None
    if name_or_path.endswith(".toml") or "/" in name_or_path:
        return SearchSpace.from_file(name_or_path)
    raise SpaceError(f"unknown space {name_or_path!r}; use a built-in one ({', '.join(builtin_spaces())}) or a path to a .toml file")
