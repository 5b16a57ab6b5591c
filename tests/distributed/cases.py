"""Loss cases shared by the 2-process worker and the single-process reference.

Each case maps per-modality inputs to a loss; a linear layer in front of the loss stands for a
model, so that parameter gradients (what DDP averages) can be compared, not only input gradients.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

import alignkit
from alignkit.config import DecAlignLossConfig

SHARDS = (5, 8)  # rows per process: shards of unequal size on purpose
WIDTH, STEPS, MODALITIES = 4, 3, 3


def global_batch() -> dict[str, Tensor]:
    """The concatenated batch, float64: sequences, masks with padding, labels."""
    generator = torch.Generator().manual_seed(0)
    n = sum(SHARDS)
    x = torch.randn(MODALITIES, n, STEPS, WIDTH, generator=generator, dtype=torch.float64)
    x[1] = 0.5 * x[1] + 1.0  # modalities differ in distribution
    masks = torch.rand(MODALITIES, n, STEPS, generator=generator) > 0.3
    masks[..., 0] = True
    return {"x": x, "masks": masks}


def shard(batch: dict[str, Tensor], rank: int) -> dict[str, Tensor]:
    start = sum(SHARDS[:rank])
    return {k: v[:, start : start + SHARDS[rank]] for k, v in batch.items()}


def model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Linear(WIDTH, WIDTH, dtype=torch.float64)


def _pooled(z: Tensor, masks: Tensor) -> list[Tensor]:
    return [alignkit.losses.masked_mean(z[m], masks[m]) for m in range(MODALITIES)]


def _decalign(official: bool) -> alignkit.DecAlignLoss:
    if not official:
        return alignkit.DecAlignLoss(MODALITIES, heterogeneity=alignkit.HeterogeneityLoss(MODALITIES, prototypes=alignkit.GMMPrototypes(3)))
    return DecAlignLossConfig(
        n_modalities=MODALITIES,
        decoupling={"reduction": "mean"},
        heterogeneity={
            "prototypes": {"n_components": 3, "n_iter": 5, "init": "spaced", "reg_covar": 1e-4, "regularization": "clamp"},
            "transport": {"relative_epsilon": False, "max_iter": 50, "tol": 0.0, "grad": "unrolled", "matching": "index",
                          "objective": "regularized", "marginals": "responsibilities", "cost_reduction": "mean",
                          "bures_eps": 1e-8, "kernel_floor": 1e-30, "scaling_guard": 1e-8},
        },
        homogeneity={"moments": {"reduction": "mean", "skewness_variance_floor": 1e-6}},
    ).build()


def _gmm_loss(x: list[Tensor]) -> Tensor:
    mixture = alignkit.GMMPrototypes(3, n_iter=4)(x[0])
    return mixture.means.square().sum() + mixture.covariances.sum() + mixture.log_likelihood


def _prototype_ot(x: list[Tensor]) -> Tensor:
    gmm = alignkit.GMMPrototypes(3, n_iter=4)
    return alignkit.PrototypeOTLoss(matching="index")(x, [gmm(f) for f in x]).total


# name -> (features (M, B, T, d), masks (M, B, T)) -> loss
CASES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "moments": lambda z, masks: alignkit.MomentMatchingLoss()(_pooled(z, masks)),
    "mmd": lambda z, masks: alignkit.MMDLoss(sigma=1.5)(_pooled(z, masks)),
    "mmd-median": lambda z, masks: alignkit.MMDLoss(sigma="median", estimator="unbiased")(_pooled(z, masks)),
    "homogeneity": lambda z, masks: alignkit.HomogeneityLoss()(_pooled(z, masks)).total,
    "decoupling": lambda z, masks: alignkit.DecouplingLoss()(list(z), list(z.flip(-1)), list(masks)),
    "gmm": lambda z, masks: _gmm_loss(_pooled(z, masks)),
    "prototype-ot": lambda z, masks: _prototype_ot(_pooled(z, masks)),
    "heterogeneity": lambda z, masks: alignkit.HeterogeneityLoss(MODALITIES, prototypes=alignkit.GMMPrototypes(3))(_pooled(z, masks)).total,
    "decalign": lambda z, masks: _decalign(False)(list(z), list(z.flip(-1)), masks=list(masks)).total,
    "decalign-official-forms": lambda z, masks: _decalign(True)(list(z), list(z.flip(-1)), masks=list(masks), homogeneity_features=_pooled(z, masks)).total,
}


def run_case(name: str, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """Loss value, gradient w.r.t. the inputs, and gradients w.r.t. the layer's parameters."""
    layer = model()
    x = batch["x"].clone().requires_grad_(True)
    loss = CASES[name](layer(x), batch["masks"])
    loss.backward()
    return {"loss": loss.detach(), "input_grad": x.grad, "weight_grad": layer.weight.grad, "bias_grad": layer.bias.grad}
