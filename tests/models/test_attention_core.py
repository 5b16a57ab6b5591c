"""The attention core (``alignkit_models.layers.attention``): both CPU autograd functions (the
fused C kernel and the unfused torch one) against plain autograd, ``gradcheck``, SDPA and each
other; masks of every broadcast shape the encoders pass; how the kernel is built or refused."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
import torch.nn.functional as F

from alignkit_models.layers.attention import _CpuAttention, attention
from alignkit_models.layers.attention_kernel import MASKED, FusedCpuAttention, _load, fused_attention_unavailable

B, H, T_T, T_S, W = 3, 2, 5, 7, 4


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


def _use_core(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``attention`` use the named CPU core for this test."""
    monkeypatch.setenv("ALIGNKIT_CPU_ATTENTION", name)
    _load.cache_clear()
    if name == "fused":
        if shutil.which(os.environ.get("CC", "cc")) is None:  # the only reason to skip: no compiler to build it
            pytest.skip("no C compiler: the fused CPU attention kernel cannot be built here")
        assert fused_attention_unavailable() is None


@pytest.fixture(autouse=True)
def _forget_the_kernel_choice(monkeypatch: pytest.MonkeyPatch):
    """The choice is cached per process: after a test that changed it, the next test chooses anew."""
    yield
    monkeypatch.undo()
    _load.cache_clear()


@pytest.fixture(params=["fused", "unfused"])
def core(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    _use_core(request.param, monkeypatch)
    return request.param


def _inputs(dtype=torch.float64):
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(B, H, t, W, generator=generator, dtype=dtype, requires_grad=True) for t in (T_T, T_S, T_S)]


@pytest.mark.parametrize("shape", ["none", "padding", "future", "both"])
@pytest.mark.parametrize("dropped", [False, True])
def test_cpu_attention_and_its_gradients_equal_plain_autograd(core: str, shape: str, dropped: bool, monkeypatch: pytest.MonkeyPatch) -> None:
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
def test_cpu_attention_passes_gradcheck(core: str, shape: str) -> None:
    query, key, value = (x.detach().reshape(B * H, -1, W).requires_grad_() for x in _inputs())
    keep = _keep(shape)
    function, masked = (FusedCpuAttention, MASKED) if core == "fused" else (_CpuAttention, float("-inf"))
    bias = None if keep is None else torch.zeros(keep.shape, dtype=torch.float64).masked_fill(~keep, masked)
    mask = (torch.rand(B * H, T_T, T_S, generator=torch.Generator().manual_seed(3), dtype=torch.float64) > 0.5).double()
    # The unfused core overwrites the mask, so every evaluation gets a fresh copy; scale 2 = 1 / (1 - 0.5).
    assert torch.autograd.gradcheck(lambda q, k, v: function.apply(H, q, k, v, bias, mask.clone(), 2.0), (query, key, value))


def test_cpu_attention_equals_sdpa_in_float32(core: str) -> None:
    query, key, value = (x.detach().float() for x in _inputs())
    keep = _keep("both")
    torch.testing.assert_close(attention(query, key, value, keep), F.scaled_dot_product_attention(query, key, value, attn_mask=keep), rtol=1e-6, atol=1e-6)


def test_native_dropout_draws_are_those_of_f_dropout_on_the_weights(core: str) -> None:
    # fast_dropout=False reproduces nn.Dropout's draws (the reference comparisons rely on them).
    query, key, value = (x.detach() for x in _inputs(torch.float32))
    keep = _keep("padding")
    torch.manual_seed(7)
    ours = attention(query, key, value, keep, 0.4, fast_dropout=False)
    torch.manual_seed(7)
    scores = ((query * W**-0.5) @ key.transpose(-1, -2)).masked_fill(~keep, float("-inf"))
    torch.testing.assert_close(ours, F.dropout(scores.softmax(-1), 0.4) @ value, rtol=1e-6, atol=1e-6)


def test_cpu_attention_under_bf16_autocast_computes_in_float32(core: str) -> None:
    query, key, value = (x.detach().float().requires_grad_() for x in _inputs())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention(query.bfloat16(), key.bfloat16(), value.bfloat16(), _keep("padding"), 0.2)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    out.sum().backward()
    for x in (query, key, value):
        assert x.grad is not None and x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("t_target", [50, 1, 3])
def test_fused_and_unfused_cores_agree_at_mosi_shapes(t_target: int, dropout: float, monkeypatch: pytest.MonkeyPatch) -> None:
    # DecAlign's MOSI shapes (8 heads of width 8 over 100 source steps), a padding mask, and query
    # lengths that leave a partial group of four rows; both cores get the same dropout draws.
    generator = torch.Generator().manual_seed(4)
    inputs = [torch.randn(32, 8, t, 8, generator=generator) for t in (t_target, 100, 100)]
    keep = (torch.arange(100)[None, :] < torch.randint(1, 101, (32,), generator=generator)[:, None])[:, None, None, :]
    upstream = torch.randn(32, 8, t_target, 8, generator=generator)
    results = []
    for name in ("fused", "unfused"):
        _use_core(name, monkeypatch)
        leaves = [x.clone().requires_grad_() for x in inputs]
        torch.manual_seed(9)
        out = attention(*leaves, keep, dropout)
        results.append([out, *torch.autograd.grad(out, leaves, upstream)])
    for what, fused, unfused in zip(("output", "grad query", "grad key", "grad value"), *results):
        # float32 rounding of two summation orders: ~2e-6 here; a wrong term is 1e-2 or more
        torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-5, msg=lambda m, what=what: f"{what}: {m}")


def test_a_mask_broadcast_along_the_source_steps_uses_the_unfused_core(monkeypatch: pytest.MonkeyPatch) -> None:
    _use_core("fused", monkeypatch)
    inputs, reference_inputs = _inputs(), _inputs()
    keep = torch.ones(B, 1, T_T, 1, dtype=torch.bool)  # the kernel reads bias rows along T_s
    torch.testing.assert_close(attention(*inputs, keep), _reference(*reference_inputs, None, None), rtol=1e-12, atol=1e-12)


def test_fused_kernel_is_built_into_the_cache_folder(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIGNKIT_CACHE_DIR", str(tmp_path))
    _use_core("fused", monkeypatch)
    assert len(list(tmp_path.glob("attention_kernel-*.so"))) == 1


@pytest.mark.parametrize(("variable", "value", "reason"), [("CC", "/nonexistent/cc", "no C compiler"), ("ALIGNKIT_CPU_ATTENTION", "unfused", "ALIGNKIT_CPU_ATTENTION=unfused")])
def test_without_the_kernel_attention_says_why_and_still_computes(variable: str, value: str, reason: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(variable, value)
    _load.cache_clear()
    assert reason in fused_attention_unavailable()
    inputs, reference_inputs = _inputs(), _inputs()
    torch.testing.assert_close(attention(*inputs, _keep("both")), _reference(*reference_inputs, _keep("both"), None), rtol=1e-12, atol=1e-12)
