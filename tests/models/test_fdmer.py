"""FDMER: shapes for any M, each auxiliary term against an independent computation, gradient reversal, options."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from alignkit_models.models.fdmer import (
    FDMER,
    consistency_loss,
    disparity_loss,
    modality_cross_entropy,
    reverse_gradient,
    soft_orthogonality,
)
from alignkit_models.models.misa import difference_loss

DIMS = {"text": 12, "audio": 5, "vision": 7}
TWO = {"text": 12, "audio": 5}
SIX = {f"view{i}": 3 + i for i in range(6)}
SMALL = {"hidden_dim": 8, "rnn_dim": 4, "n_heads": 2}


def _batch(dims: dict[str, int], batch: int = 6, steps: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    features = {m: torch.randn(batch, steps, d, generator=g) for m, d in dims.items()}
    lengths = {m: torch.randint(1, steps + 1, (batch,), generator=g) for m in dims}
    masks = {m: torch.arange(steps)[None, :] < lengths[m][:, None] for m in dims}
    labels = torch.linspace(-2.0, 2.0, batch)
    return features, masks, labels


# --- shapes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dims", [TWO, DIMS, SIX], ids=["M2", "M3", "M6"])
def test_shapes_for_two_three_and_six_modalities(dims: dict[str, int]) -> None:
    features, masks, labels = _batch(dims)
    model = FDMER(dims, **SMALL).train()
    output = model(features, masks, labels)
    assert output.prediction.shape == (6,)
    assert output.representation.shape == (6, 8)
    commons, privates = model.subspaces(model.encode(features, masks))
    assert len(commons) == len(privates) == len(dims) and all(c.shape == (6, 8) for c in commons + privates)
    _, weights = model.fuse(commons, privates)
    assert weights.shape == (6, 2 * len(dims)) and torch.allclose(weights.sum(-1), torch.ones(6))
    assert model.discriminator[-1].out_features == len(dims)
    assert set(output.aux_losses) == set(output.components) == {"consistency", "disparity", "adv_common", "adv_private"}
    assert all(bool(torch.isfinite(v)) for v in output.components.values())
    classifier = FDMER(dims, task="classification", n_classes=4, **SMALL).eval()
    assert classifier(features, masks).prediction.shape == (6, 4)


# --- the loss terms against independent computations --------------------------------------------


def test_consistency_is_the_mean_over_modality_pairs_of_the_per_sample_squared_distance() -> None:
    c1 = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    c2 = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    c3 = torch.tensor([[0.0, 2.0], [1.0, 4.0]])
    # pair (1,2): (1 + 0 + 0 + 0) / 4; (1,3): (0 + 4 + 0 + 9) / 4; (2,3): (1 + 4 + 0 + 9) / 4
    expected = (1.0 / 4 + 13.0 / 4 + 14.0 / 4) / 3
    assert float(consistency_loss([c1, c2, c3])) == pytest.approx(expected)
    assert float(consistency_loss([c1, c1.clone()])) == 0.0


def _gram_form(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``||A^T B||_F^2 / d^2 = sum_ij (a_i . a_j)(b_i . b_j) / d^2`` for centred unit rows, written with Gram matrices."""
    def unit(x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(0)
        norms = torch.sqrt((centred**2).sum(1, keepdim=True))
        return centred / (norms + 1e-6)

    ua, ub = unit(a), unit(b)
    return ((ua @ ua.T) * (ub @ ub.T)).sum() / (a.shape[1] * b.shape[1])


def test_soft_orthogonality_on_a_hand_case_and_a_constant_batch() -> None:
    a = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    b = torch.tensor([[0.0, 3.0], [0.0, -3.0]])
    # centred unit rows +-e1, +-e2: A^T B = [[0, 2], [0, 0]] -> 4 / 4
    assert float(soft_orthogonality(a, b)) == pytest.approx(1.0, rel=1e-5)
    assert float(soft_orthogonality(a, torch.ones(2, 2))) == 0.0  # nothing varies across the batch


def test_soft_orthogonality_is_scale_invariant_so_shrinking_a_batch_spread_does_not_lower_it() -> None:
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(7, 4, generator=g, dtype=torch.float64), torch.rand(7, 4, generator=g, dtype=torch.float64)
    assert torch.allclose(soft_orthogonality(a, b), _gram_form(a, b), rtol=1e-6)
    squeezed = a.mean(0) + 1e-2 * (a - a.mean(0))  # same directions, spread 100 times smaller
    assert torch.allclose(soft_orthogonality(squeezed, b), soft_orthogonality(a, b), rtol=1e-3)
    # the gradient has (up to the 1e-6 guard) no component along the batch spread, unlike that of
    # MISA's form with a detached row norm, whose gradient shrinks the spread
    centred = a - a.mean(0)

    def along_spread(loss_fn) -> float:
        x = a.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(x, b), x)
        return float((grad * centred).sum() / (grad.norm() * centred.norm()))

    assert abs(along_spread(soft_orthogonality)) < 1e-4
    assert along_spread(difference_loss) > 0.1


def test_disparity_pairs_each_common_with_its_own_private_and_all_private_pairs() -> None:
    g = torch.Generator().manual_seed(2)
    commons = [torch.rand(5, 3, generator=g, dtype=torch.float64) for _ in range(3)]
    privates = [torch.rand(5, 3, generator=g, dtype=torch.float64) for _ in range(3)]
    expected = sum(_gram_form(commons[m], privates[m]) for m in range(3)) + sum(
        _gram_form(privates[m], privates[n]) for m, n in [(0, 1), (0, 2), (1, 2)]
    )
    assert torch.allclose(disparity_loss(commons, privates), expected, rtol=1e-6)


def test_modality_cross_entropy_scores_each_modality_against_its_own_index() -> None:
    # every row has logits (10, 0, 0): modality 0 is easy, 1 and 2 cost log(e^10 + 2)
    logits = [torch.tensor([[10.0, 0.0, 0.0]]).repeat(4, 1) for _ in range(3)]
    lse = math.log(math.exp(10.0) + 2.0)
    expected = ((lse - 10.0) + lse + lse) / 3
    assert float(modality_cross_entropy(logits)) == pytest.approx(expected, rel=1e-6)


def test_adversarial_terms_read_commons_and_privates_through_one_discriminator() -> None:
    model = FDMER(DIMS, **SMALL, dropout=0.0)
    last: nn.Linear = model.discriminator[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.0, 10.0, 0.0]))
    g = torch.Generator().manual_seed(3)
    commons = [torch.rand(4, 8, generator=g) for _ in range(3)]
    privates = [torch.rand(4, 8, generator=g) for _ in range(3)]
    terms = model.adversarial_terms(commons, privates)
    lse = math.log(math.exp(10.0) + 2.0)
    expected = (lse + (lse - 10.0) + lse) / 3  # modality 1 is the one the logits favour
    assert float(terms["adv_common"].detach()) == pytest.approx(expected, rel=1e-6)
    assert float(terms["adv_private"].detach()) == pytest.approx(expected, rel=1e-6)


def test_model_terms_equal_the_functions_on_its_own_subspaces_and_are_weighted() -> None:
    features, masks, labels = _batch(DIMS)
    weights = {"consistency_weight": 0.7, "disparity_weight": 0.2, "adversarial_weight": 0.05}
    model = FDMER(DIMS, **SMALL, dropout=0.0, **weights).train()
    torch.manual_seed(0)
    output = model(features, masks, labels)
    commons, privates = model.subspaces(model.encode(features, masks))
    assert torch.allclose(output.components["consistency"], consistency_loss(commons))
    assert torch.allclose(output.components["disparity"], disparity_loss(commons, privates))
    manual_common = torch.stack(
        [-torch.log_softmax(model.discriminator(c), -1)[:, m].mean() for m, c in enumerate(commons)]
    ).mean()
    manual_private = torch.stack(
        [-torch.log_softmax(model.discriminator(p), -1)[:, m].mean() for m, p in enumerate(privates)]
    ).mean()
    assert torch.allclose(output.components["adv_common"], manual_common)
    assert torch.allclose(output.components["adv_private"], manual_private)
    expected_weights = {"consistency": 0.7, "disparity": 0.2, "adv_common": 0.05, "adv_private": 0.05}
    for name, weight in expected_weights.items():
        assert torch.allclose(output.aux_losses[name], weight * output.components[name])
    total = model.loss(output, labels).total
    task = model.task_loss(output.prediction, labels)
    assert torch.allclose(total, task + sum(w * output.components[n] for n, w in expected_weights.items()))


def test_eval_mode_and_missing_labels_give_no_auxiliary_terms() -> None:
    features, masks, labels = _batch(DIMS)
    model = FDMER(DIMS, **SMALL)
    evaluation = model.eval()(features, masks, labels)
    assert evaluation.aux_losses == {} and evaluation.components == {}
    unlabelled = model.train()(features, masks)
    assert unlabelled.aux_losses == {} and unlabelled.components == {}


# --- gradient reversal -----------------------------------------------------------------------


def test_reverse_gradient_is_the_identity_forward_and_negates_and_scales_backward() -> None:
    x = torch.randn(3, 4, requires_grad=True)
    upstream = torch.randn(3, 4)
    y = reverse_gradient(x, 0.5)
    assert torch.equal(y, x)
    (y * upstream).sum().backward()
    assert torch.allclose(x.grad, -0.5 * upstream)


def _grads(loss: torch.Tensor, params: list[nn.Parameter]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, params, retain_graph=True))


@pytest.mark.parametrize("scale", [1.0, 0.3])
def test_the_discriminator_descends_its_loss_on_commons_while_the_common_encoder_ascends_it(scale: float) -> None:
    features, masks, _ = _batch(DIMS)
    model = FDMER(DIMS, **SMALL, dropout=0.0, reversal_scale=scale).train()
    utterances = {m: u.detach() for m, u in model.encode(features, masks).items()}
    commons, privates = model.subspaces(utterances)
    adv_common = model.adversarial_terms(commons, privates)["adv_common"]
    plain = modality_cross_entropy([model.discriminator(c) for c in commons])  # the same value, no reversal
    assert torch.allclose(adv_common, plain)
    encoder = list(model.common.parameters())
    discriminator = list(model.discriminator.parameters())
    for reversed_grad, plain_grad in zip(_grads(adv_common, encoder), _grads(plain, encoder)):
        assert plain_grad.abs().max() > 0
        assert torch.allclose(reversed_grad, -scale * plain_grad, atol=1e-7)
    for reversed_grad, plain_grad in zip(_grads(adv_common, discriminator), _grads(plain, discriminator)):
        assert torch.allclose(reversed_grad, plain_grad, atol=1e-7)
    # the private encoders are not reversed: they help the discriminator
    adv_private = model.adversarial_terms(commons, privates)["adv_private"]
    text_private = list(model.private["text"].parameters())
    plain_private = modality_cross_entropy([model.discriminator(p) for p in privates])
    for got, want in zip(_grads(adv_private, text_private), _grads(plain_private, text_private)):
        assert torch.allclose(got, want, atol=1e-7)


def test_one_step_on_the_reversed_gradient_helps_the_discriminator_and_fools_it_through_the_encoder() -> None:
    features, masks, _ = _batch(DIMS)
    model = FDMER(DIMS, **SMALL, dropout=0.0).train()
    utterances = {m: u.detach() for m, u in model.encode(features, masks).items()}

    def adv_common() -> torch.Tensor:
        commons, privates = model.subspaces(utterances)
        return model.adversarial_terms(commons, privates)["adv_common"]

    start = adv_common()
    model.zero_grad()
    start.backward()
    with torch.no_grad():
        for p in model.discriminator.parameters():
            p -= 0.05 * p.grad  # the step an optimizer takes on the discriminator
    after_discriminator = adv_common()
    assert float(after_discriminator.detach()) < float(start.detach())
    model.zero_grad()
    after_discriminator.backward()
    with torch.no_grad():
        for p in model.common.parameters():
            p -= 0.05 * p.grad  # the same step on the common encoder, whose gradient is reversed
    assert float(adv_common().detach()) > float(after_discriminator.detach())


# --- options ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"input_dims": {"text": 4}}, "input_dims"),
        ({"hidden_dim": 0}, "hidden_dim"),
        ({"hidden_dim": 8, "n_heads": 3}, "n_heads"),
        ({"n_heads": 0}, "n_heads"),
        ({"dropout": 1.0}, "dropout"),
        ({"consistency_weight": -1.0}, "consistency_weight"),
        ({"disparity_weight": float("nan")}, "disparity_weight"),
        ({"adversarial_weight": -0.1}, "adversarial_weight"),
        ({"reversal_scale": -1.0}, "reversal_scale"),
        ({"rnn_dim": {"text": 4}}, "rnn_dim"),
        ({"rnn_dim": {"text": 4, "audio": 4, "vision": 4, "depth": 4}}, "rnn_dim"),
        ({"rnn_dim": 0}, "rnn_dim"),
    ],
)
def test_bad_options_raise_a_value_error_naming_the_argument(options: dict, name: str) -> None:
    kwargs = {"input_dims": DIMS, **options}
    with pytest.raises(ValueError, match=rf"^{name}:"):
        FDMER(**kwargs)
