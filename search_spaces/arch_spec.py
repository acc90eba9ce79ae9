"""What one candidate architecture is: `ArchSpec` and its per-layer `LayerSpec`.

Both are frozen dataclasses. They validate themselves on construction (one clear
`SpecError` per impossible choice), round-trip through JSON, and have a stable
content hash that keys measurement caches and checkpoints.

Only plain data lives here; which attention kinds exist and what each supports is
the registry's business (`search_spaces.attention.registry`), consulted during
validation so that a new kind needs no change to this file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

HeadKind = Literal["token", "pooled"]
HEAD_KINDS: tuple[str, ...] = ("token", "pooled")

# The knobs an attention kind may take. Each kind declares in the registry which
# of these it needs; every other knob must stay None, so two specs that build the
# same model have the same JSON and the same hash.
KNOBS: tuple[str, ...] = ("window", "stride", "block", "global_tokens", "random_blocks", "rank")


class SpecError(ValueError):
    """An impossible architecture. The message names the field and the fix."""


@dataclass(frozen=True)
class LayerSpec:
    """One pre-norm transformer block: its attention kind with that kind's knobs,
    its head count and its feed-forward width.

    Knobs (None where the kind does not use them):
      window         tokens each query sees behind it, itself included (and as many
                     ahead, minus one, when bidirectional): local, longformer, bigbird
      stride         the Sparse Transformer stride (Child et al. 2019): strided
      block          block size: block (BlockBERT), bigbird's random-block size
      global_tokens  leading tokens that see and are seen by all: longformer, bigbird
      random_blocks  random key blocks per query block: bigbird
      rank           Linformer's k, Performer's random features, Nystrom's landmarks
      seed           fixes random patterns and random features, so a spec builds
                     the same model every time
    """

    attention: str
    heads: int
    ffn: int
    window: int | None = None
    stride: int | None = None
    block: int | None = None
    global_tokens: int | None = None
    random_blocks: int | None = None
    rank: int | None = None
    seed: int = 0

    def knobs(self) -> dict[str, int]:
        """The knobs this layer sets (name -> value), in a fixed order."""
        return {k: getattr(self, k) for k in KNOBS if getattr(self, k) is not None}


@dataclass(frozen=True)
class ArchSpec:
    """A whole model: token embeddings and learned positions, one `LayerSpec` per
    block, a final norm, and a head.

    head = "token": logits of `n_classes` at every position (language modelling,
    MQAR); head = "pooled": mean-pool the non-padding tokens, then `n_classes`
    logits (ListOps-style classification).
    """

    vocab_size: int
    max_seq_len: int
    d_model: int
    layers: tuple[LayerSpec, ...]
    causal: bool = True
    head: str = "token"
    n_classes: int = 0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        # Accept lists/dicts (from JSON or from a search space) and freeze them.
        layers = tuple(
            layer if isinstance(layer, LayerSpec) else LayerSpec(**layer) for layer in self.layers
        )
        object.__setattr__(self, "layers", layers)
        if self.head == "token" and self.n_classes == 0:
            object.__setattr__(self, "n_classes", self.vocab_size)
        validate(self)

    @property
    def depth(self) -> int:
        return len(self.layers)

    # ---- serialisation -------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layers"] = [
            {k: v for k, v in layer.items() if v is not None} for layer in d["layers"]
        ]
        return d

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no whitespace, unset knobs omitted."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ArchSpec":
        if not isinstance(data, dict):
            raise SpecError(f"an ArchSpec must be a JSON object, got {type(data).__name__}")
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - allowed
        if unknown:
            raise SpecError(f"unknown ArchSpec field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        layers = data.get("layers")
        if not isinstance(layers, (list, tuple)):
            raise SpecError("ArchSpec.layers must be a list of layer objects")
        layer_fields = {f.name for f in dataclasses.fields(LayerSpec)}
        parsed = []
        for i, layer in enumerate(layers):
            if not isinstance(layer, dict):
                raise SpecError(f"layer {i} must be a JSON object, got {type(layer).__name__}")
            bad = set(layer) - layer_fields
            if bad:
                raise SpecError(f"layer {i}: unknown field(s) {sorted(bad)}; allowed: {sorted(layer_fields)}")
            parsed.append(LayerSpec(**layer))
        return cls(**{**data, "layers": tuple(parsed)})

    @classmethod
    def from_json(cls, text: str) -> "ArchSpec":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"ArchSpec JSON is malformed: {e}") from None
        return cls.from_dict(data)

    def content_hash(self) -> str:
        """A stable 16-hex-digit hash of the canonical JSON (same model, same hash)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


def _positive_int(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SpecError(f"{what} must be a positive integer, got {value!r}")


def validate(spec: ArchSpec) -> None:
    """Raise `SpecError` naming the first impossible choice in `spec`."""
    from search_spaces.attention.registry import REGISTRY  # late: registry imports this module

    _positive_int(spec.vocab_size, "vocab_size")
    _positive_int(spec.max_seq_len, "max_seq_len")
    _positive_int(spec.d_model, "d_model")
    if not isinstance(spec.causal, bool):
        raise SpecError(f"causal must be true or false, got {spec.causal!r}")
    if spec.head not in HEAD_KINDS:
        raise SpecError(f"head {spec.head!r} is unknown; choose one of {list(HEAD_KINDS)}")
    _positive_int(spec.n_classes, "n_classes")
    if not isinstance(spec.dropout, (int, float)) or not 0.0 <= spec.dropout < 1.0:
        raise SpecError(f"dropout must be in [0, 1), got {spec.dropout!r}")
    if len(spec.layers) == 0:
        raise SpecError("an architecture needs at least one layer (depth >= 1)")
    for i, layer in enumerate(spec.layers):
        where = f"layer {i} ({layer.attention})"
        info = REGISTRY.get(layer.attention) if isinstance(layer.attention, str) else None
        if info is None:
            raise SpecError(
                f"layer {i}: unknown attention kind {layer.attention!r}; "
                f"choose one of {sorted(REGISTRY)}"
            )
        _positive_int(layer.heads, f"{where}: heads")
        _positive_int(layer.ffn, f"{where}: ffn")
        if spec.d_model % layer.heads:
            raise SpecError(
                f"{where}: heads={layer.heads} does not divide d_model={spec.d_model}; "
                f"pick heads among the divisors of d_model"
            )
        if isinstance(layer.seed, bool) or not isinstance(layer.seed, int) or layer.seed < 0:
            raise SpecError(f"{where}: seed must be a non-negative integer, got {layer.seed!r}")
        if spec.causal and not info.causal:
            raise SpecError(
                f"{where}: {layer.attention} cannot be causal; use a bidirectional model "
                f"(causal=false) or a causal kind: {sorted(k for k, v in REGISTRY.items() if v.causal)}"
            )
        if not spec.causal and not info.bidirectional:
            raise SpecError(f"{where}: {layer.attention} supports causal models only")
        for knob in KNOBS:
            value = getattr(layer, knob)
            if knob in info.knobs:
                if value is None:
                    raise SpecError(f"{where}: needs {knob}; set it to a positive integer")
                if knob == "random_blocks" or knob == "global_tokens":
                    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                        raise SpecError(f"{where}: {knob} must be a non-negative integer, got {value!r}")
                else:
                    _positive_int(value, f"{where}: {knob}")
            elif value is not None:
                raise SpecError(
                    f"{where}: {knob} is not a knob of {layer.attention} "
                    f"(its knobs: {list(info.knobs) or 'none'}); leave it unset"
                )
        for knob in ("window", "stride", "block", "rank", "global_tokens"):
            value = getattr(layer, knob)
            if value is not None and value > spec.max_seq_len:
                raise SpecError(
                    f"{where}: {knob}={value} is larger than max_seq_len={spec.max_seq_len}; "
                    f"use at most {spec.max_seq_len}"
                )
        info.check(layer, spec)
