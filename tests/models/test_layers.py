"""Shared layers: fast dropout, the cross-modal encoder's masks."""

from __future__ import annotations

import torch

from alignkit_models.layers import CrossModalEncoder
from alignkit_models.layers.dropout import FastDropout, random_bytes


def test_random_bytes_are_uniform() -> None:
    counts = torch.bincount(random_bytes(torch.Size([256_000]), torch.device("cpu")).long(), minlength=256).float()
    assert counts.min() > 800 and counts.max() < 1200  # 1000 expected per value


def test_fast_dropout_drops_the_quantised_share_and_keeps_the_mean() -> None:
    dropout = FastDropout(0.1).train()
    out = dropout(torch.ones(1_000_000))
    assert abs(float((out == 0).float().mean()) - 26 / 256) < 2e-3
    assert abs(float(out.mean()) - 1.0) < 5e-3


def test_fast_dropout_is_identity_in_eval_and_reproducible_with_a_seed() -> None:
    dropout = FastDropout(0.3)
    x = torch.randn(100)
    assert torch.equal(dropout.eval()(x), x)
    dropout.train()
    torch.manual_seed(5)
    first = dropout(x)
    torch.manual_seed(5)
    assert torch.equal(dropout(x), first)


def test_padded_source_steps_do_not_change_the_output() -> None:
    encoder = CrossModalEncoder(16, 4, 2).eval()
    target, source = torch.randn(3, 5, 16), torch.randn(3, 7, 16)
    mask = torch.arange(7)[None, :] < torch.tensor([7, 4, 1])[:, None]
    reference = encoder(target, source, source_mask=mask)
    noisy = torch.where(mask[..., None], source, torch.randn_like(source) * 50)
    assert torch.allclose(encoder(target, noisy, source_mask=mask), reference, atol=1e-5)


def test_future_mask_hides_later_source_steps() -> None:
    encoder = CrossModalEncoder(8, 2, 1, future_mask=True).eval()
    x = torch.randn(1, 6, 8)
    changed = x.clone()
    changed[:, -1] += 10.0
    assert torch.allclose(encoder(x)[:, :5], encoder(changed)[:, :5], atol=1e-5)
