"""ArchSpec: JSON round trip, stable hash, and one clear error per impossible spec."""

from __future__ import annotations

import json

import pytest

from search_spaces import ArchSpec, LayerSpec, SpecError


def spec(**over):
    base = dict(vocab_size=32, max_seq_len=64, d_model=64, causal=True,
                layers=(LayerSpec("full", 4, 128), LayerSpec("local", 2, 256, window=8)))
    base.update(over)
    return ArchSpec(**base)


def test_json_round_trip_and_hash():
    s = spec()
    again = ArchSpec.from_json(s.to_json())
    assert again == s
    assert again.content_hash() == s.content_hash()
    # canonical JSON: key order of the input does not change the hash
    data = json.loads(s.to_json())
    shuffled = json.dumps(dict(reversed(list(data.items()))))
    assert ArchSpec.from_json(shuffled).content_hash() == s.content_hash()
    # a different architecture has a different hash
    assert spec(d_model=32, layers=(LayerSpec("full", 4, 128),)).content_hash() != s.content_hash()


def test_token_head_defaults_to_vocab_classes():
    assert spec().n_classes == 32
    assert spec(head="pooled", n_classes=10, causal=False).n_classes == 10


@pytest.mark.parametrize(
    "over, needle",
    [
        (dict(layers=(LayerSpec("full", 3, 128),)), "does not divide d_model"),
        (dict(layers=(LayerSpec("local", 4, 128, window=128),)), "larger than max_seq_len"),
        (dict(layers=(LayerSpec("linformer", 4, 128, rank=100),), causal=False), "larger than max_seq_len"),
        (dict(layers=(LayerSpec("flash_magic", 4, 128),)), "unknown attention kind"),
        (dict(layers=(LayerSpec("linformer", 4, 128, rank=16),), causal=True), "cannot be causal"),
        (dict(layers=(LayerSpec("nystrom", 4, 128, rank=16),), causal=True), "cannot be causal"),
        (dict(layers=(LayerSpec("local", 4, 128),)), "needs window"),
        (dict(layers=(LayerSpec("full", 4, 128, window=8),)), "not a knob of full"),
        (dict(layers=()), "at least one layer"),
        (dict(d_model=0), "d_model must be a positive integer"),
        (dict(vocab_size=-1), "vocab_size must be a positive integer"),
        (dict(head="sequence"), "head 'sequence' is unknown"),
        (dict(dropout=1.5), "dropout must be in [0, 1)"),
        (dict(layers=(LayerSpec("full", 4, 0),)), "ffn must be a positive integer"),
        (dict(layers=(LayerSpec("bigbird", 4, 128, window=8, global_tokens=-1, random_blocks=1, block=8),)), "global_tokens must be a non-negative"),
    ],
)
def test_invalid_specs_each_have_one_clear_error(over, needle):
    with pytest.raises(SpecError) as info:
        spec(**over)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


def test_from_json_rejects_unknown_fields_and_bad_json():
    with pytest.raises(SpecError, match="malformed"):
        ArchSpec.from_json("{not json")
    data = json.loads(spec().to_json())
    data["evil"] = 1
    with pytest.raises(SpecError, match="unknown ArchSpec field"):
        ArchSpec.from_dict(data)
    data = json.loads(spec().to_json())
    data["layers"][0]["attention"] = "__import__('os').system('echo pwned')"
    with pytest.raises(SpecError, match="unknown attention kind"):
        ArchSpec.from_dict(data)
    data = json.loads(spec().to_json())
    data["layers"][0]["code"] = "x"
    with pytest.raises(SpecError, match="unknown field"):
        ArchSpec.from_dict(data)


def test_spec_is_frozen():
    s = spec()
    with pytest.raises(Exception):
        s.d_model = 128  # type: ignore[misc]
