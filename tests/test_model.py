"""build_model: parameter count from the spec, causality of every causal kind,
gradients to every parameter, padding, and lengths below max_seq_len."""

from __future__ import annotations

import pytest
import torch

from search_spaces import ArchSpec, LayerSpec, build_model, count_parameters
from search_spaces.attention.registry import REGISTRY

SEQ = 40  # not a multiple of the windows and blocks below

KNOBS = dict(window=8, stride=6, block=8, global_tokens=2, random_blocks=1, rank=8)


def layer(kind: str, heads: int = 2, ffn: int = 48, seed: int = 0) -> LayerSpec:
    return LayerSpec(kind, heads, ffn, seed=seed, **{k: KNOBS[k] for k in REGISTRY[kind].knobs})


def expected_parameters(spec: ArchSpec) -> int:
    """Counted from the spec with the papers' formulas, independently of the code."""
    d = spec.d_model
    n = spec.vocab_size * d + spec.max_seq_len * d  # token and position embeddings
    for ls in spec.layers:
        n += 2 * d  # ln1
        n += 3 * d * d + 3 * d  # q, k, v projections with bias
        n += d * d + d  # output projection
        if ls.attention == "linformer":
            n += 2 * ls.rank * spec.max_seq_len  # E and F (Wang et al. 2020), shared by heads
        n += 2 * d  # ln2
        n += d * ls.ffn + ls.ffn + ls.ffn * d + d  # two-layer MLP
    n += 2 * d  # final norm
    n += d * spec.n_classes + spec.n_classes  # head
    return n


def model_for(kinds, causal=True, head="token", d_model=32):
    layers = tuple(layer(k, seed=i) for i, k in enumerate(kinds))
    spec = ArchSpec(vocab_size=17, max_seq_len=SEQ, d_model=d_model, layers=layers, causal=causal,
                    head=head, n_classes=17 if head == "token" else 5)
    torch.manual_seed(0)
    return spec, build_model(spec)


@pytest.mark.parametrize("kind", sorted(REGISTRY))
def test_parameter_count_matches_independent_count(kind):
    causal = REGISTRY[kind].causal
    spec, model = model_for([kind, "full"], causal=causal)
    assert count_parameters(model) == expected_parameters(spec)


@pytest.mark.parametrize("kind", sorted(k for k, v in REGISTRY.items() if v.causal))
def test_causal_kinds_do_not_look_ahead(kind):
    _, model = model_for([kind, kind], causal=True)
    model.eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 17, (2, SEQ), generator=g)
    for t in (0, 9, 23, SEQ - 2):
        y = x.clone()
        y[:, t + 1:] = torch.randint(0, 17, (2, SEQ - t - 1), generator=g)
        with torch.no_grad():
            a, b = model(x), model(y)
        torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(a[:, t + 1:], b[:, t + 1:])


@pytest.mark.parametrize("kind", sorted(REGISTRY))
def test_gradients_reach_every_parameter(kind):
    causal = REGISTRY[kind].causal
    _, model = model_for([kind, kind], causal=causal)
    x = torch.randint(0, 17, (2, SEQ))
    mask = torch.ones(2, SEQ, dtype=torch.bool)
    mask[1, 30:] = False
    model(x, mask).float().pow(2).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    # Linformer's E/F columns beyond the used length get no gradient by design; here
    # the sequence uses every column, so nothing may be missing.
    assert missing == []


@pytest.mark.parametrize("kind", sorted(REGISTRY))
def test_pooled_head_with_padding_and_short_lengths(kind):
    _, model = model_for([kind], causal=False, head="pooled")
    model.eval()
    for n in (SEQ, 33, 17):
        x = torch.randint(0, 17, (3, n))
        mask = torch.ones(3, n, dtype=torch.bool)
        mask[0, n - 5:] = False
        with torch.no_grad():
            out = model(x, mask)
        assert out.shape == (3, 5)
        assert torch.isfinite(out).all()
        # padding tokens do not change the pooled output
        x2 = x.clone()
        x2[0, n - 5:] = (x2[0, n - 5:] + 3) % 17
        with torch.no_grad():
            out2 = model(x2, mask)
        torch.testing.assert_close(out[0], out2[0], atol=1e-5, rtol=1e-5)


def test_mixed_layers_and_too_long_input():
    spec, model = model_for(["full", "local", "linear"], causal=True)
    assert [b.attn.kind for b in model.blocks] == ["full", "local", "linear"]
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        model(torch.randint(0, 17, (1, SEQ + 1)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: the bf16 autocast path runs on GPU only")
@pytest.mark.parametrize("kind", sorted(REGISTRY))
def test_cuda_bf16_autocast(kind):
    _, model = model_for([kind, kind], causal=REGISTRY[kind].causal)
    model = model.cuda()
    x = torch.randint(0, 17, (2, SEQ), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(x)
    out.float().sum().backward()
    assert torch.isfinite(out.float()).all()


@pytest.mark.parametrize("kind", sorted(REGISTRY))
def test_shaped_on_meta_then_loaded_gives_the_same_model(kind):
    # The usual way to load big checkpoints: build on the meta device (no memory),
    # to_empty, load_state_dict. BigBird's random pattern (not in the state dict) was
    # a buffer that to_empty left as garbage ("index out of range"), and kernel kinds
    # failed even to run on meta (autocast has no meta device).
    causal = REGISTRY[kind].causal
    spec, model = model_for([kind, kind], causal=causal)
    model.eval()
    with torch.device("meta"):
        shaped = build_model(spec)
    tokens = torch.randint(0, 17, (2, SEQ), generator=torch.Generator().manual_seed(2))
    assert shaped(tokens.to("meta")).device.type == "meta"
    shaped = shaped.to_empty(device="cpu")
    shaped.load_state_dict(model.state_dict())
    shaped.eval()
    with torch.no_grad():
        torch.testing.assert_close(shaped(tokens), model(tokens), atol=0, rtol=0)
