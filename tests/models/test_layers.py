"""Shared layers: fast dropout, the cross-modal encoder's masks and layouts."""

from __future__ import annotations

import pytest
import torch

from alignkit_models.layers import CrossModalEncoder
from alignkit_models.layers.dropout import FastDropout, ReorderedDropout, bernoulli_positions, keep_mask, random_bytes


def test_random_bytes_are_uniform() -> None:
    counts = torch.bincount(random_bytes(torch.Size([256_000]), torch.device("cpu")).long(), minlength=256).float()
    assert counts.min() > 800 and counts.max() < 1200  # 1000 expected per value


@pytest.mark.parametrize("p", [0.05, 0.1, 0.125, 0.3, 0.4, 0.97])
def test_fast_dropout_drops_exactly_p_and_keeps_the_mean(p: float) -> None:
    # 4 million draws; tolerances of 4.5 standard deviations (2.5e-4 at most for the dropped
    # share). That catches the byte-quantised probability (0.1 -> 26/256 = 0.1016) and, at
    # p = 0.97, a leftover rate not divided by 1 - t/256 (0.9688 instead of 0.97).
    n = 4_000_000
    torch.manual_seed(0)
    out = FastDropout(p).train()(torch.ones(n))
    assert abs(float((out == 0).double().mean()) - p) < 4.5 * (p * (1 - p) / n) ** 0.5
    values = out.unique()
    assert len(values) == 2 and values[0] == 0.0 and float(values[1]) == pytest.approx(1 / (1 - p))
    assert abs(float(out.double().mean()) - 1.0) < 4.5 * (p / (1 - p) / n) ** 0.5


def test_unscaled_keep_mask_is_the_scaled_one_without_its_factor() -> None:
    # The attention core takes the 0/1 mask and applies 1 / (1 - p) to its small output.
    shape, p = torch.Size([1000, 300]), 0.1
    torch.manual_seed(3)
    unscaled = keep_mask(shape, p, torch.device("cpu"), torch.float32, scaled=False)
    torch.manual_seed(3)
    scaled = keep_mask(shape, p, torch.device("cpu"), torch.float32)
    assert set(unscaled.unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(unscaled / (1 - p), scaled, rtol=0, atol=0)


@pytest.mark.parametrize("batch", [None, 7])
def test_bernoulli_positions_are_ascending_in_range_and_as_frequent_as_the_rate(batch: int | None) -> None:
    # batch=7 makes the gaps run short many times: the rounds must continue where the last ended.
    count, rate = 2_000_000, 0.003
    torch.manual_seed(0)
    positions = bernoulli_positions(count, rate, torch.device("cpu"), batch=batch)
    assert positions.dtype == torch.int64 and bool((positions.diff() > 0).all())
    assert int(positions[0]) >= 0 and int(positions[-1]) < count
    assert abs(positions.numel() - count * rate) < 4.5 * (count * rate * (1 - rate)) ** 0.5
    assert int(positions[-1]) > count - 10 / rate  # the end of the range is reached too


def test_fast_dropout_masks_are_independent_of_position() -> None:
    # Neighbouring elements share a 64-bit draw; their drops must still be independent.
    torch.manual_seed(1)
    dropped = (FastDropout(0.3).train()(torch.ones(2_000_000)) == 0).view(-1, 8).double()
    joint = (dropped[:, 0] * dropped[:, 1]).mean()
    assert abs(float(joint) - 0.09) < 2e-3  # P(both dropped) = p^2


def test_fast_dropout_is_identity_in_eval_and_reproducible_with_a_seed() -> None:
    dropout = FastDropout(0.3)
    x = torch.randn(100)
    assert torch.equal(dropout.eval()(x), x)
    dropout.train()
    torch.manual_seed(5)
    first = dropout(x)
    torch.manual_seed(5)
    assert torch.equal(dropout(x), first)


@pytest.mark.parametrize("draw_order", [(1, 0, 2), (0, 2, 1), (2, 0, 1)])
def test_reordered_dropout_draws_the_mask_of_the_permuted_layout(draw_order: tuple[int, ...]) -> None:
    """A time-first reference's nn.Dropout, from the same generator state, drops the same
    elements as ReorderedDropout on the batch-first tensor (nn.Dropout itself drops others)."""
    x = torch.randn(4, 6, 5, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(1)
    reference = torch.nn.Dropout(0.3)(x.detach().permute(draw_order).contiguous())
    torch.manual_seed(1)
    out = ReorderedDropout(0.3, draw_order).train()(x)
    assert torch.equal(out.permute(draw_order), reference)
    torch.manual_seed(1)
    assert not torch.equal(torch.nn.Dropout(0.3)(x.detach()), out.detach())
    out.sum().backward()
    assert torch.equal(x.grad, (out.detach() != 0).double() / 0.7)


def test_reordered_dropout_passes_through_in_eval_and_refuses_bad_orders() -> None:
    x = torch.randn(2, 3, 4)
    assert ReorderedDropout(0.5, (1, 0, 2)).eval()(x) is x
    with pytest.raises(ValueError, match="draw_order"):
        ReorderedDropout(0.5, (0, 0, 2))
    with pytest.raises(ValueError, match="x: expected 3 dimensions"):
        ReorderedDropout(0.5, (1, 0, 2)).train()(torch.randn(2, 3))


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


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_attention_dropout_that_keeps_everything_equals_evaluation(norm: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Attention dropout in training forms the weights explicitly; with the mask forced to keep
    # everything, the values must be those of evaluation (masks of padded steps included).
    import alignkit_models.layers.attention as attention

    # A mask of 1 - p everywhere: the core's 1 / (1 - p) for kept weights cancels it.
    monkeypatch.setattr(attention, "keep_mask", lambda shape, p, device, dtype, scaled: torch.full(shape, 1 - p, device=device, dtype=dtype))
    torch.manual_seed(0)
    encoder = CrossModalEncoder(16, 4, 2, attn_dropout=0.3, relu_dropout=0.0, res_dropout=0.0, embed_dropout=0.0, norm=norm)
    target, source = torch.randn(3, 5, 16), torch.randn(3, 7, 16)
    mask = torch.arange(7)[None, :] < torch.tensor([7, 4, 1])[:, None]
    explicit = encoder.train()(target, source, source_mask=mask)
    with torch.no_grad():
        fused = encoder.eval()(target, source, source_mask=mask)
    torch.testing.assert_close(explicit, fused, rtol=1e-5, atol=1e-5)


def test_attention_dropout_drops_attention_weights() -> None:
    torch.manual_seed(0)
    encoder = CrossModalEncoder(16, 4, 1, attn_dropout=0.5, relu_dropout=0.0, res_dropout=0.0, embed_dropout=0.0, norm="post").train()
    target, source = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    assert not torch.allclose(encoder(target, source), encoder(target, source))


def test_post_norm_layers_have_no_final_norm_and_no_positions() -> None:
    encoder = CrossModalEncoder(8, 2, 1, norm="post", positions=False).eval()
    assert encoder.norm is None
    x = torch.randn(1, 4, 8)
    # Without positions, attention over a permuted source gives the same output.
    source = torch.randn(1, 6, 8)
    torch.testing.assert_close(encoder(x, source), encoder(x, source[:, torch.randperm(6)]), rtol=1e-5, atol=1e-6)


def _supcon_by_loops(z: torch.Tensor, classes: list[int], temperature: float) -> float:
    """SupCon written anchor by anchor in float64 Python arithmetic (the oracle)."""
    import math

    z = torch.nn.functional.normalize(z.double(), dim=-1).tolist()
    dot = [[sum(a * b for a, b in zip(u, v)) / temperature for v in z] for u in z]
    losses = []
    for i in range(len(z)):
        positives = [p for p in range(len(z)) if p != i and classes[p] == classes[i]]
        if not positives:
            continue
        log_denominator = math.log(sum(math.exp(dot[i][a]) for a in range(len(z)) if a != i))
        losses.append(-sum(dot[i][p] - log_denominator for p in positives) / len(positives))
    return sum(losses) / len(losses) if losses else 0.0


def test_supervised_contrastive_loss_equals_a_loop_over_anchors_in_float64() -> None:
    from alignkit_models.layers import supervised_contrastive_loss

    z = torch.randn(9, 5, dtype=torch.float64)
    classes = [0, 1, 0, 2, 1, 1, 3, 0, 4]  # 3 and 4 have no positive
    value = supervised_contrastive_loss(z, torch.tensor(classes), 0.1)
    assert value.dtype == torch.float64
    torch.testing.assert_close(value, torch.tensor(_supcon_by_loops(z, classes, 0.1), dtype=torch.float64), rtol=1e-12, atol=0)
    assert float(supervised_contrastive_loss(z, torch.arange(9), 0.1)) == 0.0  # no anchor has a positive


def test_supervised_contrastive_loss_stays_float32_under_bf16_autocast() -> None:
    from alignkit_models.layers import supervised_contrastive_loss

    z = torch.randn(32, 64)
    classes = torch.randint(0, 7, (32,))
    expected = supervised_contrastive_loss(z, classes, 0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = supervised_contrastive_loss(z, classes, 0.1)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, expected, rtol=1e-6, atol=0)
