"""The attention core (``alignkit_models.layers.attention``): its CPU autograd function against
plain autograd, ``gradcheck`` and SDPA, in both orientations of its products; masks of every
broadcast shape the encoders pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from alignkit_models.layers.attention import _CpuAttention, attention

B, H, T_T, T_S, W = 3, 2, 5, 7, 4


@pytest.fixture(autouse=True, params=[False, True], ids=["transposed", "weights-first"])
def orientation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test with both orientations of ``P v`` and ``dS k`` (the CPU vendor picks one)."""
    import alignkit_models.layers.attention as module

    monkeypatch.setattr(module, "WEIGHTS_FIRST", request.param)


def _keep(shape: str) -> torch.Tensor | None:
    lengths = torch.tensor([7, 4, 1])
    padding = (torch.arange(T_S)[None, :] < lengths[:, None])[:, None, None, :]  # (B, 1, 1, T_s)
    future = torch.ones(T_T, T_S, dtype=torch.bool).triu(3).logical_not()  # (T_t, T_s)
    return {"none": None, "padding": padding, "future": future, "both": padding & future}[shape]


def _reference(query, key, value, keep, mask):
    """Plain autograd: ``softmax(q k^T / sqrt(h) + mask) * dropout mask @ v``."""
    scores = (query * query.shape[-1] ** -0.5) @ key.transpose(-1, -2)
    if keep is not None:
        scores = scores.masked_fill(~keep, float("-inf"))
    weights = scores.softmax(-1)
    if mask is not None:
        weights = weights * mask.view(weights.shape)
    return weights @ value


def _inputs(dtype=torch.float64):
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(B, H, t, W, generator=generator, dtype=dtype, requires_grad=True) for t in (T_T, T_S, T_S)]


@pytest.mark.parametrize("shape", ["none", "padding", "future", "both"])
@pytest.mark.parametrize("dropped", [False, True])
def test_cpu_attention_and_its_gradients_equal_plain_autograd(shape: str, dropped: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    import alignkit_models.layers.attention as module

    keep = _keep(shape)
    mask = (torch.rand(B * H, T_T, T_S, generator=torch.Generator().manual_seed(1), dtype=torch.float64) > 0.3).double() if dropped else None
    # The core receives a 0/1 mask and overwrites it (with the dropped weights): hand it a copy.
    monkeypatch.setattr(module, "keep_mask", lambda shape, p, device, dtype, scaled: mask.clone())
    ours_inputs, reference_inputs = _inputs(), _inputs()
    ours = attention(*ours_inputs, keep, 0.3 if dropped else 0.0)
    reference = _reference(*reference_inputs, keep, None if mask is None else mask / 0.7)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    upstream = torch.randn(ours.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ours.backward(upstream)
    reference.backward(upstream)
    for name, mine, theirs in zip(("query", "key", "value"), ours_inputs, reference_inputs):
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-12, atol=1e-12, msg=lambda m, name=name: f"grad of {name}: {m}")


@pytest.mark.parametrize("shape", ["none", "both"])
def test_cpu_attention_passes_gradcheck(shape: str) -> None:
    query, key, value = (x.detach().reshape(B * H, -1, W).requires_grad_() for x in _inputs())
    keep = _keep(shape)
    bias = None if keep is None else torch.zeros(keep.shape, dtype=torch.float64).masked_fill(~keep, float("-inf"))
    mask = (torch.rand(B * H, T_T, T_S, generator=torch.Generator().manual_seed(3), dtype=torch.float64) > 0.5).double()
    # The mask is overwritten by each call, so every evaluation gets a fresh copy; scale 2 = 1 / (1 - 0.5).
    assert torch.autograd.gradcheck(lambda q, k, v: _CpuAttention.apply(H, q, k, v, bias, mask.clone(), 2.0), (query, key, value))


def test_cpu_attention_equals_sdpa_in_float32() -> None:
    query, key, value = (x.detach().float() for x in _inputs())
    keep = _keep("both")
    torch.testing.assert_close(attention(query, key, value, keep), F.scaled_dot_product_attention(query, key, value, attn_mask=keep), rtol=1e-6, atol=1e-6)


def test_native_dropout_draws_are_those_of_f_dropout_on_the_weights() -> None:
    # fast_dropout=False reproduces nn.Dropout's draws (the reference comparisons rely on them).
    query, key, value = (x.detach() for x in _inputs(torch.float32))
    keep = _keep("padding")
    torch.manual_seed(7)
    ours = attention(query, key, value, keep, 0.4, fast_dropout=False)
    torch.manual_seed(7)
    scores = ((query * W**-0.5) @ key.transpose(-1, -2)).masked_fill(~keep, float("-inf"))
    torch.testing.assert_close(ours, F.dropout(scores.softmax(-1), 0.4) @ value, rtol=1e-6, atol=1e-6)


def test_cpu_attention_under_bf16_autocast_computes_in_float32() -> None:
    query, key, value = (x.detach().float().requires_grad_() for x in _inputs())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention(query.bfloat16(), key.bfloat16(), value.bfloat16(), _keep("padding"), 0.2)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    out.sum().backward()
    for x in (query, key, value):
        assert x.grad is not None and x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()
